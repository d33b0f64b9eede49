//! `parley.auth.v1.AuthService`: registration, logins, token rotation.

use std::{sync::Arc, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use parley_proto::{
    auth::v1::{
        self as pb, Claims, DeleteCredentialsRequest, DeleteCredentialsResponse,
        GetPublicKeysRequest, GetPublicKeysResponse, LoginRequest, LoginResponse, LogoutRequest,
        LogoutResponse, RefreshRequest, RefreshResponse, RegisterRequest, RegisterResponse,
        TokenPair, ValidateTokenRequest, ValidateTokenResponse,
    },
    user::v1::{
        CreateUserRequest, DeleteUserRequest, GetUserRequest, User, UserStatus,
        user_service_client::UserServiceClient,
    },
};
use parley_runtime::{
    client::{ClientChannel, retry_idempotent},
    password::Passwords,
    storage::{now_millis, timestamp},
    token::{AccessClaims, SERVICE_ROLE, TokenVerifier},
};
use sha2::{Digest as _, Sha256};
use tonic::{Code, Request, Response, Status};

use crate::{
    error::Error,
    keys::SigningKeys,
    store::{AuthStore, Revocation},
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
}

impl AuthService {
    /// Assembles the service. `verifier` must hold the public keys of `keys`.
    pub fn new(
        store: AuthStore,
        users: UserServiceClient<ClientChannel>,
        keys: Arc<SigningKeys>,
        verifier: TokenVerifier,
        lifetimes: TokenLifetimes,
    ) -> Self {
        Self {
            store,
            users,
            keys,
            verifier,
            passwords: Passwords::new("parley_auth_password_hash_seconds"),
            lifetimes,
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
            exp: now + SERVICE_TOKEN_TTL.as_secs() as i64,
            jti: uuid::Uuid::new_v4().to_string(),
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

    /// Signs an access token for `user` and pairs it with `refresh_token`.
    fn token_pair(&self, user: &User, refresh_token: String) -> Result<TokenPair, Error> {
        let now = now_millis() / 1000;
        let ttl = self.lifetimes.access.as_secs() as i64;
        let claims = AccessClaims {
            sub: user.id.clone(),
            name: user.username.clone(),
            roles: user.roles.clone(),
            iat: now,
            exp: now + ttl,
            jti: uuid::Uuid::new_v4().to_string(),
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
        // Hash first: once the profile exists, the fewer steps that can fail
        // before the credential is stored, the better.
        let password_hash = self.passwords.hash(request.password).await?;
        let create = self.as_service(CreateUserRequest {
            username: request.username,
            display_name: request.display_name,
            email: request.email,
            ..Default::default()
        })?;
        // Not retried: creating is not idempotent.
        let user = self
            .users
            .clone()
            .create_user(create)
            .await
            .map_err(Error::UserService)?
            .into_inner()
            .user
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("user service created no user")))?;
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
        self.store
            .start_family(&user.id, &hash_token(&refresh_token), self.refresh_expiry())
            .await?;
        self.token_pair(&user, refresh_token)
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
        self.token_pair(&user, refresh_token)
    }

    /// A spent token came back: whoever holds the family may be an attacker,
    /// so every token of the family dies.
    async fn reused(&self, family_id: &str, user_id: &str) -> Error {
        tracing::warn!(%user_id, %family_id, "spent refresh token reused; revoking its family");
        metrics::counter!("parley_auth_refreshes_total", "result" => "reuse").increment(1);
        match self.store.revoke_family(family_id, Revocation::Reuse).await {
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
            self.store
                .revoke_family(&state.family_id, Revocation::Logout)
                .await?;
            tracing::info!(user_id = %state.user_id, "logged out");
        }
        Ok(())
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
        let caller = self
            .verifier
            .verify_metadata(request.metadata())
            .map_err(|err| Error::Unauthenticated(err.to_string()))?;
        let user_id = request.into_inner().user_id;
        if user_id.is_empty() {
            return Err(Error::invalid("user_id", "is required").into());
        }
        if caller.user_id != user_id && !caller.is_admin() && !caller.is_service() {
            return Err(
                Error::PermissionDenied("users may delete only their own credentials").into(),
            );
        }
        self.store.delete_credentials(&user_id).await?;
        tracing::info!(%user_id, by = %caller.user_id, "credentials deleted");
        Ok(Response::new(DeleteCredentialsResponse {}))
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
