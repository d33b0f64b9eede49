//! `parley.user.v1.UserService`: glue between the wire and the store.
//! Handlers parse, authorize, call the store and convert back; every error
//! becomes a status in `error.rs`.

use futures_util::{StreamExt as _, stream::BoxStream};
use parley_proto::auth::v1::{
    DeleteCredentialsRequest, RevokeUserTokensRequest, auth_service_client::AuthServiceClient,
};
use parley_proto::user::v1::{
    self as pb, BatchCreateUserResult, BatchCreateUsersResponse, CreateBotRequest,
    CreateBotResponse, CreateUserRequest, CreateUserResponse, DeleteUserRequest,
    DeleteUserResponse, GetUserRequest, GetUserResponse, ItemError, ListUsersRequest,
    ListUsersResponse, StreamUsersRequest, StreamUsersResponse, UpdateUserRequest,
    UpdateUserResponse, batch_create_user_result::Outcome, stream_users_response,
};
use parley_runtime::{
    client::{ClientChannel, retry_idempotent},
    grpc::status::{code_name, invalid_field},
    token::{Caller, Scope, caller},
};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    domain::{
        NewUser, User, UserStatus, parse_display_name, parse_email, parse_metadata, parse_roles,
    },
    error::Error,
    store::{Start, UserStore},
};

/// Users per `ListUsers` page when the request says 0.
pub const DEFAULT_PAGE_SIZE: i32 = 50;
/// Most users `ListUsers`' `page` may skip: OFFSET reads every row it
/// skips, so deeper listings continue with `after`.
const MAX_SKIPPED: i64 = 10_000;
/// Most users per `ListUsers` page.
pub const MAX_PAGE_SIZE: i32 = 500;
/// Most items one `BatchCreateUsers` call creates; later items fail
/// in-band with RESOURCE_EXHAUSTED.
pub const MAX_BATCH_ITEMS: usize = 10_000;
/// Most bots one user owns (admins: no limit).
pub const MAX_BOTS_PER_OWNER: i64 = 20;

/// The user service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UserService {
    store: UserStore,
    /// Where a deleted user's credentials go too.
    auth: AuthServiceClient<ClientChannel>,
}

impl UserService {
    /// A service over `store`, deleting credentials through `auth`.
    pub fn new(store: UserStore, auth: AuthServiceClient<ClientChannel>) -> Self {
        Self { store, auth }
    }

    /// Deletes the user's credentials in auth, as the caller whose token
    /// `authorization` is, so their username is free and their refresh
    /// tokens dead before the profile goes (a failure leaves both, and the
    /// deletion can be retried).
    async fn delete_credentials(
        &self,
        user_id: &str,
        authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    ) -> Result<(), Error> {
        retry_idempotent(|| async {
            let request = as_caller(
                DeleteCredentialsRequest {
                    user_id: user_id.to_owned(),
                },
                authorization.as_ref(),
            );
            self.auth.clone().delete_credentials(request).await
        })
        .await
        .map_err(Error::AuthService)?;
        Ok(())
    }

    /// Revokes every access token of a suspended user in auth, as the
    /// caller (an admin), so their connections and calls stop at once.
    async fn revoke_tokens(
        &self,
        user_id: &str,
        authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    ) -> Result<(), Error> {
        retry_idempotent(|| async {
            let request = as_caller(
                RevokeUserTokensRequest {
                    user_id: user_id.to_owned(),
                },
                authorization.as_ref(),
            );
            self.auth.clone().revoke_user_tokens(request).await
        })
        .await
        .map_err(Error::AuthService)?;
        Ok(())
    }
}

/// `message` for auth, carrying the caller's own `authorization`, so auth
/// decides what the caller may do there.
fn as_caller<T>(
    message: T,
    authorization: Option<&tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
    request
}

fn require_admin_or_service(caller: &Caller) -> Result<(), Error> {
    if caller.is_admin() || caller.is_service() {
        Ok(())
    } else {
        Err(Error::PermissionDenied(
            "only admins and services may create users",
        ))
    }
}

fn require_id(id: &str, field: &'static str) -> Result<(), Error> {
    if id.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    Ok(())
}

/// The profile as `caller` may see it: the email is private to the user,
/// admins and services.
fn view(user: User, caller: &Caller) -> pb::User {
    let private = caller.user_id == user.id || caller.is_admin() || caller.is_service();
    let mut user = pb::User::from(user);
    if !private {
        user.email.clear();
    }
    user
}

fn item_error(status: &Status) -> ItemError {
    ItemError {
        code: code_name(status.code()).to_owned(),
        message: status.message().to_owned(),
        field: invalid_field(status).unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl pb::user_service_server::UserService for UserService {
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserResponse>, Status> {
        let caller = caller(&request)?;
        require_admin_or_service(&caller)?;
        let new = NewUser::parse(request.into_inner())?;
        let user = self.store.insert(new).await?;
        tracing::info!(user_id = %user.id, by = %caller.user_id, "user created");
        Ok(Response::new(CreateUserResponse {
            user: Some(view(user, &caller)),
        }))
    }

    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(Scope::UsersRead)?;
        let id = request.into_inner().id;
        require_id(&id, "id")?;
        let user = self.store.get(&id).await?;
        Ok(Response::new(GetUserResponse {
            user: Some(view(user, &caller)),
        }))
    }

    async fn update_user(
        &self,
        request: Request<UpdateUserRequest>,
    ) -> Result<Response<UpdateUserResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_account()?;
        let authorization = request.metadata().get("authorization").cloned();
        let UpdateUserRequest { user, update_mask } = request.into_inner();
        let changes = user.ok_or_else(|| Error::invalid("user", "is required"))?;
        require_id(&changes.id, "user.id")?;
        let paths = update_mask.map(|mask| mask.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(Error::invalid("update_mask", "name at least one field to change").into());
        }
        if caller.user_id != changes.id && !caller.is_admin() {
            return Err(Error::PermissionDenied("users may change only themselves").into());
        }

        let mut user = self.store.get(&changes.id).await?;
        for path in &paths {
            match path.as_str() {
                "display_name" => {
                    user.display_name = parse_display_name(&changes.display_name, &user.username)?
                }
                "email" => user.email = parse_email(&changes.email)?,
                "metadata" => user.metadata = parse_metadata(changes.metadata.clone())?,
                "status" | "roles" if !caller.is_admin() => {
                    return Err(
                        Error::PermissionDenied("only admins may change status and roles").into(),
                    );
                }
                "status" => {
                    user.status = UserStatus::from_proto(changes.status, "user.status")?
                        .ok_or_else(|| Error::invalid("user.status", "must not be UNSPECIFIED"))?;
                }
                "roles" => user.roles = parse_roles(changes.roles.clone())?,
                other => {
                    return Err(Error::invalid(
                        "update_mask",
                        format!("`{other}` cannot be changed; use display_name, email, metadata, status or roles"),
                    )
                    .into());
                }
            }
        }
        let suspended = user.status == UserStatus::Suspended;
        let user = self.store.update(user).await?;
        if suspended && paths.iter().any(|path| path == "status") {
            // Their tokens stop now, not when they expire.
            self.revoke_tokens(&user.id, authorization).await?;
        }
        Ok(Response::new(UpdateUserResponse {
            user: Some(view(user, &caller)),
        }))
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<DeleteUserResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_account()?;
        let authorization = request.metadata().get("authorization").cloned();
        let id = request.into_inner().id;
        require_id(&id, "id")?;
        // Services may delete: auth undoes a half-finished registration
        // (and keeps its own side itself). Owners may delete their bots.
        if caller.user_id != id && !caller.is_admin() && !caller.is_service() {
            let target = self.store.get(&id).await?;
            if target.owner_id.as_deref() != Some(caller.user_id.as_str()) {
                return Err(Error::PermissionDenied(
                    "users may delete only themselves and their bots",
                )
                .into());
            }
        }
        if !caller.is_service() {
            // NOT_FOUND before anything is touched.
            self.store.get(&id).await?;
            self.delete_credentials(&id, authorization).await?;
        }
        self.store.delete(&id).await?;
        tracing::info!(user_id = %id, by = %caller.user_id, "user deleted");
        Ok(Response::new(DeleteUserResponse {}))
    }

    type ListUsersStream = BoxStream<'static, Result<ListUsersResponse, Status>>;

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<Self::ListUsersStream>, Status> {
        let caller = caller(&request)?;
        caller.require(Scope::UsersRead)?;
        let ListUsersRequest {
            page,
            limit,
            filter,
            owner_id,
            after,
        } = request.into_inner();
        if !owner_id.is_empty() {
            if owner_id != caller.user_id && !caller.is_admin() {
                return Err(Error::PermissionDenied("only admins list other users' bots").into());
            }
            let bots = self.store.bots_of(&owner_id).await?;
            let page = ListUsersResponse {
                total: bots.len() as i64,
                users: bots.into_iter().map(|bot| view(bot, &caller)).collect(),
                page: 1,
                has_more: false,
            };
            return Ok(Response::new(
                futures_util::stream::iter([Ok(page)]).boxed(),
            ));
        }
        if page < 0 {
            return Err(Error::invalid("page", "must not be negative").into());
        }
        if limit < 0 {
            return Err(Error::invalid("limit", "must not be negative").into());
        }
        let limit = if limit == 0 {
            DEFAULT_PAGE_SIZE
        } else {
            limit.min(MAX_PAGE_SIZE)
        };
        let first_page = page.max(1);
        let skipped = i64::from(first_page - 1) * i64::from(limit);
        let start = if !after.is_empty() {
            if page > 1 {
                return Err(Error::invalid("page", "cannot be combined with after").into());
            }
            Start::After(after)
        } else if skipped > MAX_SKIPPED {
            return Err(Error::invalid(
                "page",
                format!("reaches past {MAX_SKIPPED} users; continue with after"),
            )
            .into());
        } else {
            Start::Skip(skipped)
        };
        let filter = filter.trim().to_owned();
        // Emails are searched only by those who may read them.
        let emails = caller.is_admin() || caller.is_service();
        let total = self.store.count(&filter, emails).await?;

        struct Cursor {
            store: UserStore,
            caller: Caller,
            filter: String,
            page: i32,
            start: Option<Start>,
        }
        let cursor = Cursor {
            store: self.store.clone(),
            caller,
            filter,
            page: first_page,
            start: Some(start),
        };
        // Pages are read as the client pulls them, each after the last
        // username of the one before (keyset: no page rereads what earlier
        // ones read, and users added meanwhile never repeat one).
        let pages = futures_util::stream::unfold(cursor, move |mut cursor| async move {
            let start = cursor.start.take()?;
            let item = match cursor
                .store
                .list(&cursor.filter, emails, &start, i64::from(limit) + 1)
                .await
            {
                Ok(mut users) => {
                    let has_more = users.len() > limit as usize;
                    users.truncate(limit as usize);
                    if has_more {
                        cursor.start = users.last().map(|user| Start::After(user.username.clone()));
                    }
                    Ok(ListUsersResponse {
                        users: users
                            .into_iter()
                            .map(|user| view(user, &cursor.caller))
                            .collect(),
                        page: cursor.page,
                        has_more,
                        total,
                    })
                }
                Err(err) => Err(Status::from(err)),
            };
            cursor.page += 1;
            Some((item, cursor))
        });
        Ok(Response::new(pages.boxed()))
    }

    async fn batch_create_users(
        &self,
        request: Request<Streaming<CreateUserRequest>>,
    ) -> Result<Response<BatchCreateUsersResponse>, Status> {
        let caller = caller(&request)?;
        require_admin_or_service(&caller)?;
        let mut items = request.into_inner();
        let mut response = BatchCreateUsersResponse::default();
        let mut index = 0usize;
        while let Some(item) = items.message().await? {
            if index >= MAX_BATCH_ITEMS {
                // The batch ends here: one result says why, and nothing more
                // is read, so a client that goes on streaming costs nothing.
                response.failed_count += 1;
                response.results.push(BatchCreateUserResult {
                    index: i32::try_from(index).unwrap_or(i32::MAX),
                    outcome: Some(Outcome::Error(item_error(&Status::resource_exhausted(
                        format!(
                            "a batch creates at most {MAX_BATCH_ITEMS} users; the rest was not read"
                        ),
                    )))),
                });
                break;
            }
            let outcome = match NewUser::parse(item) {
                Ok(new) => self.store.insert(new).await.map_err(Status::from),
                Err(err) => Err(Status::from(err)),
            };
            let outcome = match outcome {
                Ok(user) => {
                    response.created_count += 1;
                    Outcome::User(view(user, &caller))
                }
                Err(status) => {
                    response.failed_count += 1;
                    Outcome::Error(item_error(&status))
                }
            };
            response.results.push(BatchCreateUserResult {
                index: i32::try_from(index).unwrap_or(i32::MAX),
                outcome: Some(outcome),
            });
            index += 1;
        }
        tracing::info!(
            created = response.created_count,
            failed = response.failed_count,
            by = %caller.user_id,
            "batch of users created"
        );
        Ok(Response::new(response))
    }

    async fn create_bot(
        &self,
        request: Request<CreateBotRequest>,
    ) -> Result<Response<CreateBotResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_account()?;
        if caller.is_service() {
            return Err(Error::PermissionDenied("bots are owned by people").into());
        }
        let owner = self.store.get(&caller.user_id).await?;
        if owner.owner_id.is_some() {
            return Err(Error::PermissionDenied("bots cannot own bots").into());
        }
        let new = NewUser::bot(request.get_ref(), &caller.user_id)?;
        let bot = self.store.insert(new).await?;
        // Counted after the insert, so two at once cannot both slip under
        // the limit: the one past it is taken back.
        if !caller.is_admin() && self.store.count_bots(&caller.user_id).await? > MAX_BOTS_PER_OWNER
        {
            self.store.delete(&bot.id).await?;
            return Err(Status::resource_exhausted(format!(
                "a user may own at most {MAX_BOTS_PER_OWNER} bots"
            )));
        }
        tracing::info!(bot_id = %bot.id, owner = %caller.user_id, "bot created");
        Ok(Response::new(CreateBotResponse {
            bot: Some(view(bot, &caller)),
        }))
    }

    type StreamUsersStream = BoxStream<'static, Result<StreamUsersResponse, Status>>;

    async fn stream_users(
        &self,
        request: Request<Streaming<StreamUsersRequest>>,
    ) -> Result<Response<Self::StreamUsersStream>, Status> {
        let caller = caller(&request)?;
        caller.require(Scope::UsersRead)?;
        let store = self.store.clone();
        // `then` handles one request at a time, so answers keep request order.
        let answers = request.into_inner().then(move |item| {
            let store = store.clone();
            let caller = caller.clone();
            async move {
                let StreamUsersRequest { id } = item?;
                let lookup = match require_id(&id, "id") {
                    Ok(()) => store.get(&id).await,
                    Err(err) => Err(err),
                };
                let result = match lookup {
                    Ok(user) => stream_users_response::Result::User(view(user, &caller)),
                    Err(err) => {
                        stream_users_response::Result::Error(item_error(&Status::from(err)))
                    }
                };
                Ok(StreamUsersResponse {
                    id,
                    result: Some(result),
                })
            }
        });
        Ok(Response::new(answers.boxed()))
    }
}
