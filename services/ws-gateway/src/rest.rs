//! The REST API (README: "REST API"): sign-up and sign-in over auth, the
//! caller's profile over user, rooms and history over chat. Each route is a thin
//! translation to one gRPC call; errors come back through [`ApiError`].

use axum::{
    Json, Router,
    extract::{
        FromRequest, FromRequestParts, Path, Query, Request, State, rejection::QueryRejection,
    },
    http::{StatusCode, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, patch, post},
};
use parley_proto::{
    auth::v1::{LoginRequest, LogoutRequest, RefreshRequest, RegisterRequest, TokenPair},
    chat::v1::{
        CreateRoomRequest, DeleteRoomRequest, GetChatHistoryRequest, ListMyRoomsRequest,
        OpenDirectRoomRequest, Room, UpdateRoomRequest,
    },
    user::v1::{GetUserRequest, User, UserKind},
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tonic::Code;

use crate::{
    AppState,
    error::ApiError,
    frames::{MessageOut, rfc3339_millis},
};

/// The `/api/v1` routes.
pub(crate) fn router(state: AppState) -> Router<AppState> {
    // Routes that cost a password hash, or hand out tokens, are limited
    // per client address (README, "REST API").
    let limited = Router::new()
        .route("/api/v1/auth/register", post(register))
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/refresh", post(refresh))
        .route_layer(axum::middleware::from_fn_with_state(state, per_address));
    Router::new()
        .merge(limited)
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/me", get(me))
        .route("/api/v1/rooms", post(create_room).get(my_rooms))
        .route(
            "/api/v1/rooms/{room_id}",
            patch(update_room).delete(delete_room),
        )
        .route("/api/v1/dms", post(open_direct_room))
        .route("/api/v1/rooms/{room_id}/messages", get(messages))
}

/// Refuses a client address past `GATEWAY_AUTH_ATTEMPTS` with 429.
async fn per_address(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let shared = &state.shared;
    let from_header = shared.client_address_header.as_ref().and_then(|name| {
        let value = request.headers().get(name)?.to_str().ok()?;
        // The last address is the one the nearest proxy saw; earlier ones
        // came from the client and may be made up.
        value
            .rsplit(',')
            .next()?
            .trim()
            .parse::<std::net::IpAddr>()
            .ok()
    });
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    if let Some(address) = from_header.or(peer)
        && let Err(wait) = shared.auth_attempts.check(&address)
    {
        return ApiError::new(
            Code::ResourceExhausted,
            format!(
                "too many sign-in requests from this address; {}",
                parley_runtime::limits::retry_in(wait)
            ),
        )
        .into_response();
    }
    next.run(request).await
}

/// A JSON body whose problems (wrong content type, bad JSON, a missing or
/// mistyped field) are answered 400 with the REST error body.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let value = match Json::<Value>::from_request(request, state).await {
            Ok(Json(value)) => value,
            Err(rejection) => return Err(ApiError::invalid(rejection.body_text())),
        };
        body_of(value).map(Self)
    }
}

/// A route's body from its JSON.
///
/// # Errors
/// INVALID_ARGUMENT for a non-object or a missing or mistyped field, named.
fn body_of<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    // serde reads a struct from an array too (its fields in order): a body
    // is an object or it is malformed (README: "REST API").
    if !value.is_object() {
        return Err(ApiError::invalid(
            "the body must be a JSON object, such as {\"name\": \"...\"}",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        ApiError::invalid(format!("{path}: {}", err.into_inner()))
    })
}

/// Reads `bytes` as every route's body, as the routes would (for the fuzz
/// targets of `fuzz/`).
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_bodies(bytes: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    let _ = body_of::<RegisterBody>(value.clone());
    let _ = body_of::<LoginBody>(value.clone());
    let _ = body_of::<RefreshBody>(value.clone());
    let _ = body_of::<CreateRoomBody>(value.clone());
    let _ = body_of::<UpdateRoomBody>(value.clone());
    let _ = body_of::<DirectRoomBody>(value);
}

/// Reads `query` as the history route's query string (for `fuzz/`).
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_query(query: &str) {
    if let Ok(uri) = format!("/api/v1/rooms/r/messages?{query}").parse::<http::Uri>() {
        let _ = Query::<HistoryQuery>::try_from_uri(&uri);
        let _ = Query::<crate::connection::UpgradeQuery>::try_from_uri(&uri);
    }
}

/// The caller of a route that needs `Authorization: Bearer <token>`,
/// verified locally before any call is made.
pub(crate) struct Bearer {
    user_id: String,
    token: String,
}

impl FromRequestParts<AppState> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(&parts.headers)
            .ok_or_else(|| ApiError::from(parley_runtime::token::TokenError::Missing))?;
        Self::verified(state, token).await
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer_token(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|token| !token.is_empty())
}

impl Bearer {
    /// The caller's user id.
    pub(crate) fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The caller of `token`, verified locally; an API key is exchanged
    /// for its token first (README, "Bots and API keys").
    ///
    /// # Errors
    /// UNAUTHENTICATED for a bad or expired token or key.
    pub(crate) async fn verified(state: &AppState, token: String) -> Result<Self, ApiError> {
        if crate::api_keys::is_api_key(&token) {
            let (token, claims) = state.shared.keys.token_for(&token).await?;
            return Ok(Self {
                user_id: claims.sub,
                token: token.to_string(),
            });
        }
        let claims = state.shared.verifier.verify(&token)?;
        Ok(Self {
            user_id: claims.sub,
            token,
        })
    }

    /// `message` as a gRPC request carrying the caller's token.
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = format!("Bearer {}", self.token).parse() {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }
}

#[derive(Debug, Deserialize)]
struct RegisterBody {
    username: String,
    password: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
}

async fn register(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RegisterBody>,
) -> Result<Response, ApiError> {
    let response = state
        .shared
        .auth
        .clone()
        .register(RegisterRequest {
            username: body.username,
            password: body.password,
            email: body.email.unwrap_or_default(),
            display_name: body.display_name.unwrap_or_default(),
        })
        .await?
        .into_inner();
    let user = response
        .user
        .ok_or_else(|| ApiError::new(Code::Internal, "auth returned no user"))?;
    Ok((StatusCode::CREATED, Json(user_json(&user))).into_response())
}

#[derive(Debug, Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

async fn login(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<LoginBody>,
) -> Result<Json<Value>, ApiError> {
    let response = state
        .shared
        .auth
        .clone()
        .login(LoginRequest {
            username: body.username,
            password: body.password,
        })
        .await?
        .into_inner();
    tokens_json(response.tokens)
}

#[derive(Debug, Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

async fn refresh(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RefreshBody>,
) -> Result<Json<Value>, ApiError> {
    let response = state
        .shared
        .auth
        .clone()
        .refresh(RefreshRequest {
            refresh_token: body.refresh_token,
        })
        .await?
        .into_inner();
    tokens_json(response.tokens)
}

async fn logout(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RefreshBody>,
) -> Result<StatusCode, ApiError> {
    state
        .shared
        .auth
        .clone()
        .logout(LogoutRequest {
            refresh_token: body.refresh_token,
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn me(State(state): State<AppState>, caller: Bearer) -> Result<Json<Value>, ApiError> {
    let response = state
        .shared
        .user
        .clone()
        .get_user(caller.request(GetUserRequest {
            id: caller.user_id.clone(),
        }))
        .await?
        .into_inner();
    let user = response
        .user
        .ok_or_else(|| ApiError::new(Code::NotFound, "no such user"))?;
    Ok(Json(user_json(&user)))
}

#[derive(Debug, Deserialize)]
struct CreateRoomBody {
    name: String,
    #[serde(default)]
    password: Option<String>,
}

async fn create_room(
    State(state): State<AppState>,
    caller: Bearer,
    JsonBody(body): JsonBody<CreateRoomBody>,
) -> Result<Response, ApiError> {
    let response = state
        .shared
        .chat
        .clone()
        .create_room(caller.request(CreateRoomRequest {
            name: body.name,
            password: body.password.unwrap_or_default(),
        }))
        .await?
        .into_inner();
    let room = response
        .room
        .ok_or_else(|| ApiError::new(Code::Internal, "chat returned no room"))?;
    Ok((StatusCode::CREATED, Json(room_json(&room))).into_response())
}

#[derive(Debug, Deserialize)]
struct UpdateRoomBody {
    #[serde(default)]
    name: Option<String>,
    /// `""` clears the password.
    #[serde(default)]
    password: Option<String>,
}

/// `PATCH /api/v1/rooms/{room_id}`: rename, or set or clear the password
/// (owners and admins).
async fn update_room(
    State(state): State<AppState>,
    caller: Bearer,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<UpdateRoomBody>,
) -> Result<Json<Value>, ApiError> {
    let response = state
        .shared
        .chat
        .clone()
        .update_room(caller.request(UpdateRoomRequest {
            room_id,
            name: body.name,
            password: body.password,
            client_id: String::new(),
        }))
        .await?
        .into_inner();
    let room = response
        .room
        .ok_or_else(|| ApiError::new(Code::Internal, "chat returned no room"))?;
    Ok(Json(room_json(&room)))
}

/// `DELETE /api/v1/rooms/{room_id}` (owners and admins).
async fn delete_room(
    State(state): State<AppState>,
    caller: Bearer,
    Path(room_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .shared
        .chat
        .clone()
        .delete_room(caller.request(DeleteRoomRequest { room_id }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct DirectRoomBody {
    user_id: String,
}

/// `POST /api/v1/dms`: the direct room with another user, 201 when this
/// call created it. The user is looked up first, so an unknown one is 404
/// and the room is named after their username.
async fn open_direct_room(
    State(state): State<AppState>,
    caller: Bearer,
    JsonBody(body): JsonBody<DirectRoomBody>,
) -> Result<Response, ApiError> {
    if body.user_id.is_empty() {
        return Err(ApiError::invalid("user_id: must not be empty"));
    }
    let user = state
        .shared
        .user
        .clone()
        .get_user(caller.request(GetUserRequest {
            id: body.user_id.clone(),
        }))
        .await?
        .into_inner()
        .user
        .ok_or_else(|| ApiError::new(Code::NotFound, "no such user"))?;
    let response = state
        .shared
        .chat
        .clone()
        .open_direct_room(caller.request(OpenDirectRoomRequest {
            user_id: user.id,
            user_name: user.username,
        }))
        .await?
        .into_inner();
    let room = response
        .room
        .ok_or_else(|| ApiError::new(Code::Internal, "chat returned no room"))?;
    let status = if response.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(room_json(&room))).into_response())
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    limit: Option<i64>,
    before_seq: Option<i64>,
}

async fn messages(
    State(state): State<AppState>,
    caller: Bearer,
    Path(room_id): Path<String>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    let limit = query.limit.unwrap_or(0);
    if limit < 0 {
        return Err(ApiError::invalid("limit: must not be negative"));
    }
    let mut stream = state
        .shared
        .chat
        .clone()
        .get_chat_history(caller.request(GetChatHistoryRequest {
            room_id,
            limit: i32::try_from(limit).unwrap_or(i32::MAX),
            before_seq: query.before_seq.unwrap_or(0),
        }))
        .await?
        .into_inner();
    let mut messages = Vec::new();
    let mut has_more = false;
    while let Some(page) = stream.message().await? {
        messages.extend(page.messages);
        has_more = page.has_more;
    }
    let messages: Vec<MessageOut<'_>> = messages.iter().map(MessageOut::from).collect();
    Ok(Json(json!({ "messages": messages, "has_more": has_more })))
}

/// `GET /api/v1/rooms`: the caller's rooms, latest activity first, with
/// their read markers, unread counts and newest messages.
async fn my_rooms(State(state): State<AppState>, caller: Bearer) -> Result<Json<Value>, ApiError> {
    let rooms = state
        .shared
        .chat
        .clone()
        .list_my_rooms(caller.request(ListMyRoomsRequest {}))
        .await?
        .into_inner()
        .rooms;
    let rooms: Vec<Value> = rooms
        .iter()
        .map(|room| {
            json!({
                "id": room.id,
                "name": room.name,
                "private": room.private,
                "direct": room.direct,
                "role": room.role,
                "last_seq": room.last_seq,
                "read_seq": room.read_seq,
                "unread": room.unread,
                "last_message": room.last_message.as_ref().map(MessageOut::from),
            })
        })
        .collect();
    Ok(Json(json!({ "rooms": rooms })))
}

/// `/api/...` paths that match no route.
pub(crate) async fn not_found() -> ApiError {
    ApiError::new(Code::NotFound, "no such route")
}

fn tokens_json(tokens: Option<TokenPair>) -> Result<Json<Value>, ApiError> {
    let tokens = tokens.ok_or_else(|| ApiError::new(Code::Internal, "auth returned no tokens"))?;
    Ok(Json(json!({
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token,
        "token_type": tokens.token_type,
        "expires_in": tokens.expires_in,
    })))
}

/// A user as REST shows it: `status` and `kind` without the protobuf
/// enum prefix, in lower case for `kind` (README, "Bots and API keys").
pub(crate) fn user_json(user: &User) -> Value {
    let status = user.status().as_str_name();
    let kind = match user.kind() {
        UserKind::Bot => "bot",
        UserKind::Human | UserKind::Unspecified => "human",
    };
    json!({
        "id": user.id,
        "username": user.username,
        "display_name": user.display_name,
        "email": user.email,
        "status": status.strip_prefix("USER_STATUS_").unwrap_or(status),
        "roles": user.roles,
        "metadata": user.metadata,
        "created_at": rfc3339_millis(user.created_at.as_ref()),
        "kind": kind,
        "owner_id": user.owner_id,
    })
}

fn room_json(room: &Room) -> Value {
    json!({
        "id": room.id,
        "name": room.name,
        "short_code": room.short_code,
        "private": room.private,
        "direct": room.direct,
        "created_at": rfc3339_millis(room.created_at.as_ref()),
    })
}
