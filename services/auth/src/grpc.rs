//! `parley.auth.v1.AuthService`: registration, logins, token rotation.

use std::{sync::Arc, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use futures_util::{StreamExt as _, stream::BoxStream};
use parley_proto::{
    auth::v1::{
        self as pb, ApiKey, Claims, CreateApiKeyRequest, CreateApiKeyResponse,
        DeleteCredentialsRequest, DeleteCredentialsResponse, ExchangeApiKeyRequest,
        ExchangeApiKeyResponse, GetPublicKeysRequest, GetPublicKeysResponse, ListApiKeysRequest,
        ListApiKeysResponse, LoginRequest, LoginResponse, LogoutRequest, LogoutResponse,
        RefreshRequest, RefreshResponse, RegisterRequest, RegisterResponse, RevokeApiKeyRequest,
        RevokeApiKeyResponse, RevokeUserTokensRequest, RevokeUserTokensResponse, TokenPair,
        ValidateTokenRequest, ValidateTokenResponse, WatchRevocationsRequest,
    },
    user::v1::{
        CreateUserRequest, DeleteUserRequest, GetUserRequest, User, UserKind, UserStatus,
        user_service_client::UserServiceClient,
    },
};
use parley_runtime::{
    client::{ClientChannel, retry_idempotent},
    limits::{KeyedLimit, retry_in},
    password::Passwords,
    revocations::RevokedKind,
    storage::{now_millis, timestamp},
    token::{
        ADMIN_ROLE, AccessClaims, Caller, ISSUER, SERVICE_AUDIENCE, SERVICE_ROLE, Scope,
        TokenVerifier, USER_AUDIENCE,
    },
};
use sha2::{Digest as _, Sha256};
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Code, Request, Response, Status};

use crate::{
    api_keys,
    error::Error,
    keys::SigningKeys,
    revocations::Feed,
    store::{ApiKeyRow, AuthStore, Revocation},
};

/// Shortest password accepted, in bytes.
pub const MIN_PASSWORD_BYTES: usize = 8;
/// Longest password accepted, in bytes: Argon2 would take any length, but
/// megabyte passwords are a cheap way to burn CPU.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// How long other services may cache the public keys.
pub const PUBLIC_KEYS_MAX_AGE: Duration = Duration::from_secs(300);
/// Lifetime of the tokens auth signs for its own calls to the user service.
const SERVICE_TOKEN_TTL: Duration = Duration::from_secs(60);
/// The user id in auth's own service tokens: no user has the nil UUID.
const SERVICE_SUBJECT: &str = "00000000-0000-0000-0000-000000000000";

/// Token lifetimes.
#[derive(Debug, Clone, Copy)]
pub struct TokenLifetimes {
    /// Access tokens.
    pub access: Duration,
    /// Refresh tokens.
    pub refresh: Duration,
    /// Access tokens made from API keys.
    pub api_key: Duration,
}

impl TokenLifetimes {
    /// The longest an access token lives: how long a revocation of a user
    /// must be kept.
    fn longest_access(&self) -> Duration {
        self.access.max(self.api_key)
    }
}

/// The auth service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuthService {
    store: AuthStore,
    users: UserServiceClient<ClientChannel>,
    keys: Arc<SigningKeys>,
    verifier: TokenVerifier,
    passwords: Passwords,
    lifetimes: TokenLifetimes,
    /// Sign-in attempts per username (lower-cased).
    logins: Arc<KeyedLimit<String>>,
    /// Where revocations go.
    feed: Feed,
}

impl AuthService {
    /// Assembles the service. `verifier` must hold the public keys of `keys`.
    pub fn new(
        store: AuthStore,
        users: UserServiceClient<ClientChannel>,
        keys: Arc<SigningKeys>,
        verifier: TokenVerifier,
        lifetimes: TokenLifetimes,
        logins: KeyedLimit<String>,
        feed: Feed,
    ) -> Self {
        Self {
            feed,
            store,
            users,
            keys,
            verifier,
            passwords: Passwords::new("parley_auth_password_hash_seconds"),
            lifetimes,
            logins: Arc::new(logins),
        }
    }

    /// A request to the user service, carrying a fresh service token.
    fn as_service<T>(&self, message: T) -> Result<Request<T>, Error> {
        let now = now_millis() / 1000;
        let claims = AccessClaims {
            sub: SERVICE_SUBJECT.into(),
            name: "auth".into(),
            roles: vec![SERVICE_ROLE.into()],
            iat: now,
            nbf: now,
            exp: now + SERVICE_TOKEN_TTL.as_secs() as i64,
            jti: uuid::Uuid::new_v4().to_string(),
            iss: ISSUER.into(),
            aud: SERVICE_AUDIENCE.into(),
            scope: None,
            fam: None,
            key: None,
        };
        let token = self.keys.sign(&claims)?;
        let mut request = Request::new(message);
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::Internal(anyhow::anyhow!("signed token is not valid metadata")))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }

    async fn fetch_user(&self, user_id: &str) -> Result<Option<User>, Error> {
        let response = retry_idempotent(|| async {
            let request = self
                .as_service(GetUserRequest {
                    id: user_id.to_owned(),
                })
                .map_err(Status::from)?;
            self.users.clone().get_user(request).await
        })
        .await;
        match response {
            Ok(response) => Ok(response.into_inner().user),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(Error::UserService(status)),
        }
    }

    /// Signs an access token for `user` in the login `family` and pairs it
    /// with `refresh_token`.
    fn token_pair(
        &self,
        user: &User,
        family: &str,
        refresh_token: String,
    ) -> Result<TokenPair, Error> {
        let now = now_millis() / 1000;
        let ttl = self.lifetimes.access.as_secs() as i64;
        let claims = AccessClaims {
            sub: user.id.clone(),
            name: user.username.clone(),
            roles: user.roles.clone(),
            iat: now,
            nbf: now,
            exp: now + ttl,
            jti: uuid::Uuid::new_v4().to_string(),
            iss: ISSUER.into(),
            aud: USER_AUDIENCE.into(),
            scope: None,
            fam: Some(family.to_owned()),
            key: None,
        };
        Ok(TokenPair {
            access_token: self.keys.sign(&claims)?,
            refresh_token,
            token_type: "Bearer".into(),
            expires_in: ttl,
            expires_at: Some(timestamp(claims.exp * 1000)),
        })
    }

    fn refresh_expiry(&self) -> i64 {
        now_millis()
            .saturating_add(i64::try_from(self.lifetimes.refresh.as_millis()).unwrap_or(i64::MAX))
    }

    async fn register(&self, request: RegisterRequest) -> Result<User, Error> {
        check_password(&request.password)?;
        // A taken name is refused before the costly hash, so registering
        // taken names cannot be used to keep the hashing slots busy.
        if self
            .store
            .credential_by_username(&request.username)
            .await?
            .is_some()
        {
            return Err(Error::UsernameTaken);
        }
        // Hash before the profile exists: once it does, the fewer steps
        // that can fail before the credential is stored, the better.
        let password_hash = self.passwords.hash(request.password).await?;
        let create = |email: String| {
            self.as_service(CreateUserRequest {
                username: request.username.clone(),
                display_name: request.display_name.clone(),
                email,
                ..Default::default()
            })
        };
        // Not retried: creating is not idempotent. An email another account
        // has is left out rather than refused, so registering never tells
        // whether an address is known (README, "Behaviour").
        let created = match self
            .users
            .clone()
            .create_user(create(request.email.clone())?)
            .await
        {
            Err(status)
                if status.code() == Code::AlreadyExists
                    && status.message().starts_with("email ") =>
            {
                self.users.clone().create_user(create(String::new())?).await
            }
            other => other,
        };
        let mut user = created
            .map_err(Error::UserService)?
            .into_inner()
            .user
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("user service created no user")))?;
        // The answer is the same whether the email was kept or not.
        user.email.clear();
        if let Err(err) = self
            .store
            .insert_credential(&user.id, &user.username, &password_hash)
            .await
        {
            self.undo_profile(&user.id).await;
            return Err(err);
        }
        Ok(user)
    }

    /// Deletes a profile whose credential could not be stored, so a failed
    /// registration leaves no orphan behind.
    async fn undo_profile(&self, user_id: &str) {
        let deleted = retry_idempotent(|| async {
            let request = self
                .as_service(DeleteUserRequest {
                    id: user_id.to_owned(),
                })
                .map_err(Status::from)?;
            self.users.clone().delete_user(request).await
        })
        .await;
        match deleted {
            Ok(_) => tracing::info!(%user_id, "removed the profile of a failed registration"),
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => tracing::error!(
                %user_id,
                error = %status.message(),
                "could not remove the profile of a failed registration; delete it by hand"
            ),
        }
    }

    async fn login(&self, request: LoginRequest) -> Result<TokenPair, Error> {
        if request.username.is_empty() {
            return Err(Error::invalid("username", "is required"));
        }
        if request.password.is_empty() {
            return Err(Error::invalid("password", "is required"));
        }
        // Counted per username before the hash, known name or not, so
        // guessing one account's password is slow from any number of
        // addresses.
        if let Err(wait) = self.logins.check(&request.username.to_lowercase()) {
            return Err(Error::TooManyAttempts(retry_in(wait)));
        }
        let credential = self.store.credential_by_username(&request.username).await?;
        let (user_id, hash) = match credential {
            Some(c) => (Some(c.user_id), Some(c.password_hash)),
            None => (None, None),
        };
        if !self.passwords.verify(request.password, hash).await? {
            return Err(Error::InvalidCredentials);
        }
        let user_id = user_id.ok_or(Error::InvalidCredentials)?;
        let user = self
            .fetch_user(&user_id)
            .await?
            .ok_or(Error::InvalidCredentials)?;
        if user.status == UserStatus::Suspended as i32 {
            return Err(Error::Suspended);
        }
        let refresh_token = new_refresh_token()?;
        let family = self
            .store
            .start_family(&user.id, &hash_token(&refresh_token), self.refresh_expiry())
            .await?;
        self.token_pair(&user, &family, refresh_token)
    }

    async fn refresh(&self, request: RefreshRequest) -> Result<TokenPair, Error> {
        if request.refresh_token.is_empty() {
            return Err(Error::invalid("refresh_token", "is required"));
        }
        let old_hash = hash_token(&request.refresh_token);
        let state = self
            .store
            .refresh_token(&old_hash)
            .await?
            .ok_or(Error::InvalidRefreshToken)?;
        if state.revoked_at.is_some() {
            return Err(Error::InvalidRefreshToken);
        }
        if state.spent_at.is_some() {
            return Err(self.reused(&state.family_id, &state.user_id).await);
        }
        if state.expires_at <= now_millis() {
            return Err(Error::InvalidRefreshToken);
        }
        // Checked before the old token is spent, so an unreachable user
        // service does not cost the client its session.
        let user = self
            .fetch_user(&state.user_id)
            .await?
            .ok_or(Error::InvalidRefreshToken)?;
        if user.status == UserStatus::Suspended as i32 {
            return Err(Error::Suspended);
        }
        let refresh_token = new_refresh_token()?;
        let rotated = self
            .store
            .rotate(
                &old_hash,
                &state.family_id,
                &hash_token(&refresh_token),
                self.refresh_expiry(),
            )
            .await?;
        if !rotated {
            return Err(self.reused(&state.family_id, &state.user_id).await);
        }
        self.token_pair(&user, &state.family_id, refresh_token)
    }

    /// A spent token came back: whoever holds the family may be an attacker,
    /// so every token of the family dies.
    async fn reused(&self, family_id: &str, user_id: &str) -> Error {
        tracing::warn!(%user_id, %family_id, "spent refresh token reused; revoking its family");
        metrics::counter!("parley_auth_refreshes_total", "result" => "reuse").increment(1);
        match self.revoke_family(family_id, Revocation::Reuse).await {
            Ok(()) => Error::InvalidRefreshToken,
            Err(err) => err,
        }
    }

    async fn logout(&self, request: LogoutRequest) -> Result<(), Error> {
        if request.refresh_token.is_empty() {
            return Ok(());
        }
        if let Some(state) = self
            .store
            .refresh_token(&hash_token(&request.refresh_token))
            .await?
        {
            self.revoke_family(&state.family_id, Revocation::Logout)
                .await?;
            tracing::info!(user_id = %state.user_id, "logged out");
        }
        Ok(())
    }

    /// Revokes a login's family: its refresh tokens, and its access tokens
    /// everywhere.
    async fn revoke_family(&self, family_id: &str, why: Revocation) -> Result<(), Error> {
        self.store.revoke_family(family_id, why).await?;
        self.feed
            .publish(Feed::row(
                RevokedKind::Family,
                family_id,
                self.lifetimes.access,
            ))
            .await
    }

    /// Revokes every access token of `user_id` issued until now.
    async fn revoke_user(&self, user_id: &str) -> Result<(), Error> {
        self.feed
            .publish(Feed::row(
                RevokedKind::User,
                user_id,
                self.lifetimes.longest_access(),
            ))
            .await
    }

    /// The caller's token from request metadata.
    fn caller(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Caller, Error> {
        self.verifier
            .verify_metadata(metadata)
            .map_err(|err| Error::Unauthenticated(err.to_string()))
    }

    /// The user whose keys `caller` manages with `user_id`: the caller
    /// when empty, or a bot of theirs (admins: anyone).
    async fn key_owner(&self, caller: &Caller, user_id: &str) -> Result<User, Error> {
        caller.require_account().map_err(Error::Status)?;
        let wanted = if user_id.is_empty() {
            caller.user_id.as_str()
        } else {
            user_id
        };
        let user = self
            .fetch_user(wanted)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no user {wanted}")))?;
        let own = user.id == caller.user_id;
        let owned_bot = user.kind() == UserKind::Bot && user.owner_id == caller.user_id;
        if own || owned_bot || caller.is_admin() {
            Ok(user)
        } else {
            Err(Error::PermissionDenied(
                "API keys are for yourself or for bots you own",
            ))
        }
    }

    async fn create_api_key(
        &self,
        caller: &Caller,
        request: CreateApiKeyRequest,
    ) -> Result<CreateApiKeyResponse, Error> {
        let user = self.key_owner(caller, &request.user_id).await?;
        let name = api_keys::parse_name(&request.name)?;
        let scopes = api_keys::parse_scopes(&request.scopes)?;
        // `admin` only on an admin's own key: a key never carries more than
        // the person who made it could do themselves.
        let admin_user = user.roles.iter().any(|role| role == ADMIN_ROLE);
        if scopes.contains(&Scope::Admin)
            && !(user.id == caller.user_id && caller.is_admin() && admin_user)
        {
            return Err(Error::PermissionDenied(
                "the admin scope is only for an admin's own keys",
            ));
        }
        let now = now_millis();
        let expires_at = match request.expires_at {
            Some(at) => {
                let millis = at.seconds.saturating_mul(1000) + i64::from(at.nanos) / 1_000_000;
                if millis <= now {
                    return Err(Error::invalid("expires_at", "must be in the future"));
                }
                Some(millis)
            }
            None => None,
        };
        if self.store.count_api_keys(&user.id).await? >= api_keys::MAX_KEYS_PER_USER {
            return Err(Error::LimitReached(format!(
                "a user may hold at most {} API keys; revoke one first",
                api_keys::MAX_KEYS_PER_USER
            )));
        }
        let key = api_keys::generate()?;
        let row = ApiKeyRow {
            key_id: key.key_id,
            user_id: user.id,
            name,
            scopes: api_keys::join_scopes(&scopes),
            secret_hash: key.secret_hash,
            created_at: now,
            expires_at,
            last_used_at: None,
            revoked_at: None,
        };
        self.store.insert_api_key(&row).await?;
        tracing::info!(key_id = %row.key_id, user_id = %row.user_id, by = %caller.user_id, "API key created");
        Ok(CreateApiKeyResponse {
            key: Some(api_key_view(&row)),
            secret: key.full,
        })
    }

    async fn revoke_api_key(&self, caller: &Caller, id: &str) -> Result<(), Error> {
        caller.require_account().map_err(Error::Status)?;
        let not_found = || Error::NotFound(format!("no API key {id}"));
        let row = self.store.api_key(id).await?.ok_or_else(not_found)?;
        if row.revoked_at.is_some() {
            return Err(not_found());
        }
        // Whoever cannot manage the key's user must not learn it exists.
        if row.user_id != caller.user_id && !caller.is_admin() {
            let owner = self.fetch_user(&row.user_id).await?;
            if owner.is_none_or(|user| user.owner_id != caller.user_id) {
                return Err(not_found());
            }
        }
        let revocation = Feed::row(RevokedKind::ApiKey, id, self.lifetimes.api_key);
        if self.store.revoke_api_key(id, &revocation).await? {
            self.feed.applied(&revocation);
            tracing::info!(key_id = %id, by = %caller.user_id, "API key revoked");
        }
        Ok(())
    }

    async fn exchange_api_key(&self, presented: &str) -> Result<ExchangeApiKeyResponse, Error> {
        let (key_id, secret) = api_keys::split(presented.trim()).ok_or(Error::InvalidApiKey)?;
        let row = self
            .store
            .api_key(key_id)
            .await?
            .ok_or(Error::InvalidApiKey)?;
        let now = now_millis();
        let usable = row.revoked_at.is_none()
            && row.expires_at.is_none_or(|at| at > now)
            && api_keys::matches(&row.secret_hash, secret);
        if !usable {
            return Err(Error::InvalidApiKey);
        }
        let user = self
            .fetch_user(&row.user_id)
            .await?
            .ok_or(Error::InvalidApiKey)?;
        if user.status == UserStatus::Suspended as i32 {
            return Err(Error::Suspended);
        }
        let ttl = self.lifetimes.api_key.as_secs() as i64;
        let mut exp = now / 1000 + ttl;
        // A key that expires sooner ends its token with it.
        if let Some(at) = row.expires_at {
            exp = exp.min(at / 1000);
        }
        let claims = AccessClaims {
            sub: user.id.clone(),
            name: user.username.clone(),
            roles: user.roles.clone(),
            iat: now / 1000,
            nbf: now / 1000,
            exp,
            jti: uuid::Uuid::new_v4().to_string(),
            iss: ISSUER.into(),
            aud: USER_AUDIENCE.into(),
            scope: Some(row.scopes.clone()),
            fam: None,
            key: Some(row.key_id.clone()),
        };
        let access_token = self.keys.sign(&claims)?;
        if let Err(err) = self.store.touch_api_key(&row.key_id, now).await {
            tracing::debug!(error = %err, "cannot note an API key's use");
        }
        Ok(ExchangeApiKeyResponse {
            access_token,
            token_type: "Bearer".into(),
            expires_in: exp - now / 1000,
            expires_at: Some(timestamp(exp * 1000)),
            scopes: row.scopes.split_whitespace().map(str::to_owned).collect(),
        })
    }
}

fn api_key_view(row: &ApiKeyRow) -> ApiKey {
    ApiKey {
        id: row.key_id.clone(),
        user_id: row.user_id.clone(),
        name: row.name.clone(),
        scopes: row.scopes.split_whitespace().map(str::to_owned).collect(),
        created_at: Some(timestamp(row.created_at)),
        expires_at: row.expires_at.map(timestamp),
        last_used_at: row.last_used_at.map(timestamp),
    }
}

fn check_password(password: &str) -> Result<(), Error> {
    if password.len() < MIN_PASSWORD_BYTES {
        return Err(Error::invalid(
            "password",
            format!("must be at least {MIN_PASSWORD_BYTES} bytes"),
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::invalid(
            "password",
            format!("must be at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// 256 random bits, base64url.
fn new_refresh_token() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|err| Error::Internal(anyhow::anyhow!("no OS randomness: {err}")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Refresh tokens are stored as their SHA-256: high-entropy secrets need no
/// slow hash, and a database leak reveals no usable token.
fn hash_token(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// Counts an outcome under `metric` with a `result` label.
fn count<T>(metric: &'static str, result: &Result<T, Error>) {
    let label = match result {
        Ok(_) => "success",
        Err(Error::InvalidArgument { .. }) => "invalid_argument",
        Err(Error::InvalidCredentials) => "invalid_credentials",
        Err(Error::InvalidRefreshToken) => "invalid_token",
        Err(Error::Suspended) => "suspended",
        Err(Error::UsernameTaken) => "already_exists",
        Err(Error::InvalidApiKey) => "invalid_key",
        Err(Error::TooManyAttempts(_) | Error::Busy(_)) => "rate_limited",
        Err(Error::UserService(status)) if status.code() == Code::AlreadyExists => "already_exists",
        Err(Error::UserService(status)) if status.code() == Code::InvalidArgument => {
            "invalid_argument"
        }
        Err(_) => "error",
    };
    metrics::counter!(metric, "result" => label).increment(1);
}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for AuthService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let result = AuthService::register(self, request.into_inner()).await;
        count("parley_auth_registrations_total", &result);
        let user = result?;
        tracing::info!(user_id = %user.id, "registered");
        Ok(Response::new(RegisterResponse { user: Some(user) }))
    }

    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let result = AuthService::login(self, request.into_inner()).await;
        count("parley_auth_logins_total", &result);
        Ok(Response::new(LoginResponse {
            tokens: Some(result?),
        }))
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        let result = AuthService::refresh(self, request.into_inner()).await;
        count("parley_auth_refreshes_total", &result);
        Ok(Response::new(RefreshResponse {
            tokens: Some(result?),
        }))
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        AuthService::logout(self, request.into_inner()).await?;
        Ok(Response::new(LogoutResponse {}))
    }

    async fn validate_token(
        &self,
        request: Request<ValidateTokenRequest>,
    ) -> Result<Response<ValidateTokenResponse>, Status> {
        let token = request.into_inner().access_token;
        let token = token.strip_prefix("Bearer ").unwrap_or(&token);
        let response = match self.verifier.verify(token) {
            Ok(claims) => ValidateTokenResponse {
                valid: true,
                claims: Some(Claims {
                    user_id: claims.sub,
                    name: claims.name,
                    roles: claims.roles,
                    issued_at: Some(timestamp(claims.iat * 1000)),
                    expires_at: Some(timestamp(claims.exp * 1000)),
                    token_id: claims.jti,
                }),
                reason: String::new(),
            },
            Err(err) => ValidateTokenResponse {
                valid: false,
                claims: None,
                reason: err.reason().to_owned(),
            },
        };
        Ok(Response::new(response))
    }

    async fn get_public_keys(
        &self,
        _request: Request<GetPublicKeysRequest>,
    ) -> Result<Response<GetPublicKeysResponse>, Status> {
        Ok(Response::new(GetPublicKeysResponse {
            keys: self.keys.public_keys(),
            max_age_seconds: PUBLIC_KEYS_MAX_AGE.as_secs() as i64,
        }))
    }

    async fn delete_credentials(
        &self,
        request: Request<DeleteCredentialsRequest>,
    ) -> Result<Response<DeleteCredentialsResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let user_id = request.into_inner().user_id;
        if user_id.is_empty() {
            return Err(Error::invalid("user_id", "is required").into());
        }
        if caller.user_id != user_id && !caller.is_admin() && !caller.is_service() {
            let owned_bot = self
                .fetch_user(&user_id)
                .await?
                .is_some_and(|user| user.owner_id == caller.user_id);
            if !owned_bot {
                return Err(Error::PermissionDenied(
                    "users may delete only their own credentials and their bots'",
                )
                .into());
            }
        }
        self.store.delete_credentials(&user_id).await?;
        // The user's access tokens, API keys' included, die with them.
        self.revoke_user(&user_id).await?;
        tracing::info!(%user_id, by = %caller.user_id, "credentials deleted");
        Ok(Response::new(DeleteCredentialsResponse {}))
    }

    async fn create_api_key(
        &self,
        request: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let created = AuthService::create_api_key(self, &caller, request.into_inner()).await?;
        Ok(Response::new(created))
    }

    async fn list_api_keys(
        &self,
        request: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let user = self
            .key_owner(&caller, &request.into_inner().user_id)
            .await?;
        let rows = self.store.api_keys_of(&user.id).await?;
        Ok(Response::new(ListApiKeysResponse {
            keys: rows.iter().map(api_key_view).collect(),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<RevokeApiKeyRequest>,
    ) -> Result<Response<RevokeApiKeyResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let id = request.into_inner().id;
        if id.is_empty() {
            return Err(Error::invalid("id", "is required").into());
        }
        AuthService::revoke_api_key(self, &caller, &id).await?;
        Ok(Response::new(RevokeApiKeyResponse {}))
    }

    async fn exchange_api_key(
        &self,
        request: Request<ExchangeApiKeyRequest>,
    ) -> Result<Response<ExchangeApiKeyResponse>, Status> {
        let result = AuthService::exchange_api_key(self, &request.into_inner().api_key).await;
        count("parley_auth_api_key_exchanges_total", &result);
        Ok(Response::new(result?))
    }

    type WatchRevocationsStream = BoxStream<'static, Result<pb::Revocation, Status>>;

    async fn watch_revocations(
        &self,
        _request: Request<WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        let revocations = self.feed.revocations();
        // Subscribed before the snapshot, so nothing falls between them.
        let live = BroadcastStream::new(revocations.subscribe());
        let now = now_millis();
        let snapshot: Vec<_> = revocations
            .snapshot(now)
            .iter()
            .map(|revoked| Ok(revoked.to_proto()))
            .collect();
        let live = live.map(|item| match item {
            Ok(revoked) => Ok(revoked.to_proto()),
            // A watcher that fell behind starts again from a snapshot.
            Err(_) => Err(Status::unavailable(
                "the revocation feed fell behind; watch again",
            )),
        });
        Ok(Response::new(Box::pin(
            futures_util::stream::iter(snapshot).chain(live),
        )))
    }

    async fn revoke_user_tokens(
        &self,
        request: Request<RevokeUserTokensRequest>,
    ) -> Result<Response<RevokeUserTokensResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        if !caller.is_admin() && !caller.is_service() {
            return Err(Error::PermissionDenied(
                "only admins and services may revoke a user's tokens",
            )
            .into());
        }
        let user_id = request.into_inner().user_id;
        if user_id.is_empty() {
            return Err(Error::invalid("user_id", "is required").into());
        }
        self.revoke_user(&user_id).await?;
        tracing::info!(%user_id, by = %caller.user_id, "user's tokens revoked");
        Ok(Response::new(RevokeUserTokensResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let a = new_refresh_token().unwrap();
        let b = new_refresh_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_ne!(hash_token(&a), a);
        assert_eq!(hash_token(&a), hash_token(&a));
    }

    #[test]
    fn passwords_have_bounds() {
        assert!(check_password("short").is_err());
        assert!(check_password("long enough").is_ok());
        assert!(check_password(&"x".repeat(1025)).is_err());
    }
}
