//! The REST routes of bots and API keys (README, "Bots and API keys"):
//! each a thin translation to one call of user or auth, made with the
//! caller's own token, so those services decide who may do what.

use std::time::{Duration, SystemTime};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get},
};
use parley_proto::{
    auth::v1::{ApiKey, CreateApiKeyRequest, ListApiKeysRequest, RevokeApiKeyRequest},
    user::v1::{CreateBotRequest, ListUsersRequest},
};
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::Code;

use crate::{
    AppState,
    error::ApiError,
    frames::rfc3339_millis,
    rest::{Bearer, JsonBody, user_json},
};

/// The routes.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/bots", get(my_bots).post(create_bot))
        .route("/api/v1/api-keys", get(list_keys).post(create_key))
        .route("/api/v1/api-keys/{id}", delete(revoke_key))
}

#[derive(Debug, Deserialize)]
struct BotBody {
    username: String,
    #[serde(default)]
    display_name: Option<String>,
}

/// `POST /api/v1/bots`: a bot owned by the caller; 201 with it.
async fn create_bot(
    State(state): State<AppState>,
    caller: Bearer,
    JsonBody(body): JsonBody<BotBody>,
) -> Result<Response, ApiError> {
    let bot = state
        .shared
        .user
        .clone()
        .create_bot(caller.request(CreateBotRequest {
            username: body.username,
            display_name: body.display_name.unwrap_or_default(),
        }))
        .await?
        .into_inner()
        .bot
        .ok_or_else(|| ApiError::new(Code::Internal, "user returned no bot"))?;
    Ok((StatusCode::CREATED, Json(user_json(&bot))).into_response())
}

/// `GET /api/v1/bots`: the caller's bots.
async fn my_bots(State(state): State<AppState>, caller: Bearer) -> Result<Json<Value>, ApiError> {
    let mut pages = state
        .shared
        .user
        .clone()
        .list_users(caller.request(ListUsersRequest {
            owner_id: caller.user_id().to_owned(),
            ..Default::default()
        }))
        .await?
        .into_inner();
    let mut bots = Vec::new();
    while let Some(page) = pages.message().await? {
        bots.extend(page.users.iter().map(user_json));
    }
    Ok(Json(json!({ "bots": bots })))
}

#[derive(Debug, Deserialize)]
struct KeyBody {
    name: String,
    scopes: Vec<String>,
    /// A bot of the caller's; the caller when absent.
    #[serde(default)]
    user_id: Option<String>,
    /// RFC 3339; never when absent.
    #[serde(default)]
    expires_at: Option<String>,
}

/// `POST /api/v1/api-keys`: 201 with the key and its secret, shown once.
async fn create_key(
    State(state): State<AppState>,
    caller: Bearer,
    JsonBody(body): JsonBody<KeyBody>,
) -> Result<Response, ApiError> {
    let expires_at = match body.expires_at.as_deref() {
        None | Some("") => None,
        Some(text) => {
            let at = humantime::parse_rfc3339_weak(text).map_err(|_| {
                ApiError::invalid(
                    "expires_at: expected an RFC 3339 time such as 2027-01-31T00:00:00Z",
                )
            })?;
            let since = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or(Duration::ZERO);
            Some(prost_types::Timestamp {
                seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
                nanos: 0,
            })
        }
    };
    let created = state
        .shared
        .auth
        .clone()
        .create_api_key(caller.request(CreateApiKeyRequest {
            user_id: body.user_id.unwrap_or_default(),
            name: body.name,
            scopes: body.scopes,
            expires_at,
        }))
        .await?
        .into_inner();
    let key = created
        .key
        .ok_or_else(|| ApiError::new(Code::Internal, "auth returned no key"))?;
    let body = json!({ "key": key_json(&key), "secret": created.secret });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct KeysQuery {
    user_id: String,
}

/// `GET /api/v1/api-keys`: the caller's keys, or a bot's with `?user_id=`.
async fn list_keys(
    State(state): State<AppState>,
    caller: Bearer,
    query: Result<Query<KeysQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    let keys = state
        .shared
        .auth
        .clone()
        .list_api_keys(caller.request(ListApiKeysRequest {
            user_id: query.user_id,
        }))
        .await?
        .into_inner()
        .keys;
    Ok(Json(
        json!({ "keys": keys.iter().map(key_json).collect::<Vec<_>>() }),
    ))
}

/// `DELETE /api/v1/api-keys/{id}`: 204; refused everywhere from now on.
async fn revoke_key(
    State(state): State<AppState>,
    caller: Bearer,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .shared
        .auth
        .clone()
        .revoke_api_key(caller.request(RevokeApiKeyRequest { id }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A key as REST shows it; times in RFC 3339, `null` when unset.
fn key_json(key: &ApiKey) -> Value {
    let time = |at: Option<&prost_types::Timestamp>| {
        at.map_or(Value::Null, |at| Value::String(rfc3339_millis(Some(at))))
    };
    json!({
        "id": key.id,
        "user_id": key.user_id,
        "name": key.name,
        "scopes": key.scopes,
        "created_at": time(key.created_at.as_ref()),
        "expires_at": time(key.expires_at.as_ref()),
        "last_used_at": time(key.last_used_at.as_ref()),
    })
}
