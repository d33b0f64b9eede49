//! Access-token verification, done locally in every service with auth's
//! public keys, so a chat message never costs a call to auth.
//!
//! Keys are fetched over gRPC (`GetPublicKeys`) and refreshed in the
//! background; a token signed with a key not seen yet triggers an early
//! refresh, which is how a signing-key rotation reaches every service. The
//! [`Authenticate`] interceptor puts the verified [`Caller`] into each
//! request.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use parley_proto::auth::v1::{
    GetPublicKeysRequest, PublicKey, WatchRevocationsRequest,
    auth_service_client::AuthServiceClient,
};
use parley_proto::chat::v1::chat_request::Frame as ChatFrame;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status, metadata::MetadataMap};

use crate::{
    client::ClientChannel,
    health::Condition,
    revocations::{Revocations, Revoked, TokenFacts},
};

/// Role of users who may do anything.
pub const ADMIN_ROLE: &str = "admin";
/// Role of Parley's own services calling each other.
pub const SERVICE_ROLE: &str = "service";
/// Role every self-registered user has.
pub const USER_ROLE: &str = "user";
/// The metadata a gateway proves itself with when it opens a
/// `GatewayStream` (`GATEWAY_STREAM_SECRET`).
pub const GATEWAY_SECRET_HEADER: &str = "x-parley-gateway-secret";
/// Clock skew tolerated between the signer and a verifier.
pub const LEEWAY_SECONDS: u64 = 5;
/// `iss` of every Parley access token: auth signs them all.
pub const ISSUER: &str = "parley-auth";
/// `aud` of a user's (or a bot's) access token.
pub const USER_AUDIENCE: &str = "parley";
/// `aud` of the tokens auth mints for its own calls to other services; only
/// these make a caller a service, whatever roles a user token carries.
pub const SERVICE_AUDIENCE: &str = "parley-service";

/// The claims of a Parley access token (README: "Behaviour", access tokens).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The user's id.
    pub sub: String,
    /// The username.
    pub name: String,
    /// The user's roles.
    pub roles: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Issue time, seconds since the Unix epoch.
    pub iat: i64,
    /// Not valid before, seconds since the Unix epoch (the issue time).
    pub nbf: i64,
    /// Unique token id.
    pub jti: String,
    /// Who signed it: [`ISSUER`].
    pub iss: String,
    /// Whom it is for: [`USER_AUDIENCE`] or [`SERVICE_AUDIENCE`].
    pub aud: String,
    /// What the token may do, space-separated [`Scope`]s: set on tokens made
    /// from API keys; absent, the token may do everything its user may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The refresh-token family of a login's tokens, so logging out (or a
    /// reused refresh token) revokes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fam: Option<String>,
    /// The API key a token was made from, so revoking the key revokes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// What an API key's token may do (README, "Bots and API keys").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Join rooms, read history and members, download attachments.
    ChatRead,
    /// Send, type, edit, delete, react, mark read, moderate, manage rooms.
    ChatWrite,
    /// Read profiles.
    UsersRead,
    /// Upload and delete attachments.
    MediaWrite,
    /// Everything its user may do, key and bot management included; only on
    /// an admin's own keys.
    Admin,
}

impl Scope {
    /// Every scope, in the order they are listed.
    pub const ALL: [Self; 5] = [
        Self::ChatRead,
        Self::ChatWrite,
        Self::UsersRead,
        Self::MediaWrite,
        Self::Admin,
    ];

    /// The name in tokens and requests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChatRead => "chat:read",
            Self::ChatWrite => "chat:write",
            Self::UsersRead => "users:read",
            Self::MediaWrite => "media:write",
            Self::Admin => "admin",
        }
    }

    /// The scope named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == name)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is calling, as proven by their access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user's id.
    pub user_id: String,
    /// The username.
    pub name: String,
    /// The user's roles.
    pub roles: Vec<String>,
    /// When the token expires, seconds since the Unix epoch.
    pub expires_at: i64,
    /// Whether the token is a service token ([`SERVICE_AUDIENCE`]).
    pub service_token: bool,
    /// The token's scopes; `None` for all (a token without a `scope`
    /// claim). Names this version does not know are dropped.
    pub scopes: Option<Vec<Scope>>,
    /// Issue time, seconds since the Unix epoch.
    pub issued_at: i64,
    /// The login's refresh-token family, when the token has one.
    pub family: Option<String>,
    /// The API key the token was made from, when it was.
    pub key_id: Option<String>,
}

impl Caller {
    /// Whether the caller has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether the caller may do anything: an admin whose token is not
    /// narrowed to scopes without `admin`.
    pub fn is_admin(&self) -> bool {
        self.has_role(ADMIN_ROLE) && self.has_scope(Scope::Admin)
    }

    /// Whether the token allows `scope`.
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes
            .as_ref()
            .is_none_or(|scopes| scopes.contains(&scope))
    }

    /// Refuses a token whose scopes do not include `scope`.
    ///
    /// # Errors
    /// PERMISSION_DENIED naming the scope.
    pub fn require(&self, scope: Scope) -> Result<(), Status> {
        if self.has_scope(scope) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "this token's scopes do not include {scope}"
            )))
        }
    }

    /// Refuses account management (API keys, bots, profile changes) to a
    /// token narrowed to scopes: that needs a password sign-in's token or
    /// the `admin` scope.
    ///
    /// # Errors
    /// PERMISSION_DENIED.
    pub fn require_account(&self) -> Result<(), Status> {
        if self.has_scope(Scope::Admin) {
            Ok(())
        } else {
            Err(Status::permission_denied(
                "managing an account needs a signed-in user's token or the admin scope",
            ))
        }
    }

    /// Whether the caller is another Parley service: a service token with
    /// the `service` role. A user token never is, whatever its roles.
    pub fn is_service(&self) -> bool {
        self.service_token && self.has_role(SERVICE_ROLE)
    }
}

impl From<AccessClaims> for Caller {
    fn from(claims: AccessClaims) -> Self {
        Self {
            user_id: claims.sub,
            name: claims.name,
            roles: claims.roles,
            expires_at: claims.exp,
            service_token: claims.aud == SERVICE_AUDIENCE,
            scopes: claims.scope.as_deref().map(|names| {
                let mut scopes: Vec<Scope> =
                    names.split_whitespace().filter_map(Scope::parse).collect();
                scopes.sort_unstable();
                scopes.dedup();
                scopes
            }),
            issued_at: claims.iat,
            family: claims.fam,
            key_id: claims.key,
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No `authorization: Bearer` metadata.
    #[error("missing access token: send `authorization: Bearer <token>`")]
    Missing,
    /// Not a JWT, or claims of the wrong shape.
    #[error("malformed access token")]
    Malformed,
    /// Past its `exp`.
    #[error("access token expired")]
    Expired,
    /// Signed with a key this service does not know.
    #[error("access token signed with an unknown key")]
    UnknownKey,
    /// The signature does not match.
    #[error("access token signature is invalid")]
    BadSignature,
    /// Before its `nbf`.
    #[error("access token is not valid yet")]
    NotYetValid,
    /// Revoked before its expiry: its user was suspended or deleted, its
    /// login logged out, or its API key revoked.
    #[error("access token revoked")]
    Revoked,
}

impl TokenError {
    /// A short machine-readable reason, as `ValidateToken` reports it.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Expired => "expired",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::NotYetValid => "not_yet_valid",
            Self::Revoked => "revoked",
        }
    }
}

impl From<TokenError> for Status {
    fn from(err: TokenError) -> Self {
        Status::unauthenticated(err.to_string())
    }
}

/// Verifies access tokens against a set of public keys by `kid`. Cheap to
/// clone; clones share the keys.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: Arc<RwLock<HashMap<String, DecodingKey>>>,
    /// Woken when a token names an unknown key, to refresh early.
    unknown_key_seen: Arc<Notify>,
    validation: Arc<Validation>,
    /// Tokens refused before their expiry.
    revocations: Arc<Revocations>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("kids", &self.read_keys().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Default for TokenVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenVerifier {
    /// A verifier with no keys yet: it refuses every token.
    pub fn new() -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[USER_AUDIENCE, SERVICE_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iat", "nbf", "sub", "iss", "aud"]);
        Self {
            keys: Arc::default(),
            unknown_key_seen: Arc::new(Notify::new()),
            validation: Arc::new(validation),
            revocations: Arc::default(),
        }
    }

    /// The revocations this verifier applies (fed by
    /// [`spawn_key_refresh`], or by auth itself).
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// Replaces the key set with `keys` as `GetPublicKeys` returns them.
    /// Keys that do not decode are skipped with a warning.
    pub fn set_public_keys(&self, keys: &[PublicKey]) -> usize {
        let mut decoded = HashMap::new();
        for key in keys {
            match DecodingKey::from_ed_components(&key.x) {
                Ok(decoding) => {
                    decoded.insert(key.kid.clone(), decoding);
                }
                Err(err) => {
                    tracing::warn!(kid = %key.kid, error = %err, "skipping an unusable public key")
                }
            }
        }
        let count = decoded.len();
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = decoded;
        count
    }

    /// Whether any key is known, i.e. whether tokens can be verified yet.
    pub fn has_keys(&self) -> bool {
        !self.read_keys().is_empty()
    }

    /// Checks the token's signature, key and lifetime.
    ///
    /// # Errors
    /// Says why the token is refused.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let kid = header.kid.ok_or(TokenError::Malformed)?;
        let keys = self.read_keys();
        let Some(key) = keys.get(&kid) else {
            drop(keys);
            self.unknown_key_seen.notify_one();
            return Err(TokenError::UnknownKey);
        };
        let claims = jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                _ => TokenError::Malformed,
            })?;
        if self.revocations.is_revoked(&TokenFacts::from(&claims)) {
            return Err(TokenError::Revoked);
        }
        Ok(claims)
    }

    /// Verifies the bearer token in request metadata.
    ///
    /// # Errors
    /// Says why the caller is refused.
    pub fn verify_metadata(&self, metadata: &MetadataMap) -> Result<Caller, TokenError> {
        let token = bearer_token(metadata).ok_or(TokenError::Missing)?;
        self.verify(token).map(Caller::from)
    }

    /// An interceptor that refuses calls without a valid token and hands
    /// the [`Caller`] to the handler.
    pub fn interceptor(&self) -> Authenticate {
        Authenticate {
            verifier: self.clone(),
        }
    }

    fn read_keys(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, DecodingKey>> {
        // Poisoning cannot leave the map half-written: writers replace it whole.
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The token of an `authorization: Bearer <token>` entry.
pub fn bearer_token(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The interceptor of [`TokenVerifier::interceptor`].
#[derive(Debug, Clone)]
pub struct Authenticate {
    verifier: TokenVerifier,
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.verifier.verify_metadata(request.metadata())?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller the [`Authenticate`] interceptor verified.
///
/// # Errors
/// UNAUTHENTICATED when the request did not pass through the interceptor.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("missing access token"))
}

/// A verifier kept supplied with the public keys of the auth service at
/// `auth_url`, gating `readiness` on having them: what every service that
/// checks access tokens starts with.
pub fn verifier_for(
    auth_url: &crate::config::ServiceUrl,
    tls: &crate::tls::ClientTls,
    readiness: &crate::health::Readiness,
    shutdown: CancellationToken,
) -> TokenVerifier {
    let verifier = TokenVerifier::new();
    let auth = AuthServiceClient::new(crate::client::connect(
        "auth",
        auth_url,
        &crate::client::ClientOptions {
            tls: tls.clone(),
            ..crate::client::ClientOptions::default()
        },
    ));
    spawn_key_refresh(
        verifier.clone(),
        auth,
        readiness.condition("public_keys"),
        shutdown,
    );
    verifier
}

/// Keeps `verifier` supplied with auth's public keys until `shutdown`:
/// fetches them, marks `keys_ready` once it has some, and fetches again
/// when they are due or a token names an unknown key. Old keys are kept
/// while auth cannot be reached.
pub fn spawn_key_refresh(
    verifier: TokenVerifier,
    mut auth: AuthServiceClient<ClientChannel>,
    keys_ready: Condition,
    shutdown: CancellationToken,
) {
    /// Least time between two fetches, so a flood of tokens with a bogus
    /// `kid` cannot turn into a flood of calls to auth.
    const MIN_INTERVAL: Duration = Duration::from_secs(5);
    tokio::spawn(watch_revocations(
        verifier.revocations.clone(),
        auth.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(async move {
        let mut failures: u32 = 0;
        loop {
            let wait = match auth.get_public_keys(GetPublicKeysRequest {}).await {
                Ok(response) => {
                    let response = response.into_inner();
                    let count = verifier.set_public_keys(&response.keys);
                    keys_ready.set(count > 0);
                    if failures > 0 || count == 0 {
                        tracing::info!(keys = count, "fetched auth's public keys");
                    }
                    failures = 0;
                    Duration::from_secs(response.max_age_seconds.clamp(30, 600).unsigned_abs())
                }
                Err(status) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_multiple_of(30) {
                        tracing::warn!(error = %status.message(), code = ?status.code(), "cannot fetch auth's public keys; retrying");
                    }
                    keys_ready.set(verifier.has_keys());
                    Duration::from_millis(250 * u64::from(failures.min(20)))
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = async {
                    verifier.unknown_key_seen.notified().await;
                    tokio::time::sleep(MIN_INTERVAL).await;
                } => {}
                () = shutdown.cancelled() => return,
            }
        }
    });
}

/// The scope a chat frame needs (README, "Bots and API keys"); `None` for
/// frames any token may send. Chat and the gateway both check it.
pub fn chat_frame_scope(frame: &ChatFrame) -> Option<Scope> {
    match frame {
        ChatFrame::Ping(_) | ChatFrame::Refresh(_) => None,
        ChatFrame::Join(_) | ChatFrame::Leave(_) | ChatFrame::GetChatHistory(_) => {
            Some(Scope::ChatRead)
        }
        ChatFrame::Send(_)
        | ChatFrame::Typing(_)
        | ChatFrame::Edit(_)
        | ChatFrame::Delete(_)
        | ChatFrame::React(_)
        | ChatFrame::Read(_)
        | ChatFrame::Moderate(_) => Some(Scope::ChatWrite),
    }
}

/// Follows auth's revocations into `revocations` until `shutdown`,
/// reopening the stream with backoff when it ends: each time auth first
/// sends every revocation still in force, so nothing is missed while the
/// stream was down.
async fn watch_revocations(
    revocations: Arc<Revocations>,
    mut auth: AuthServiceClient<ClientChannel>,
    shutdown: CancellationToken,
) {
    let mut failures: u32 = 0;
    loop {
        let ended = async {
            let mut stream = auth
                .watch_revocations(WatchRevocationsRequest {})
                .await?
                .into_inner();
            while let Some(revocation) = stream.message().await? {
                failures = 0;
                if let Some(revoked) = Revoked::from_proto(&revocation) {
                    revocations.add(revoked, crate::storage::now_millis());
                }
            }
            Ok::<_, Status>(())
        };
        let outcome = tokio::select! {
            outcome = ended => outcome,
            () = shutdown.cancelled() => return,
        };
        failures = failures.saturating_add(1);
        if let Err(status) = outcome
            && (failures == 1 || failures.is_multiple_of(30))
        {
            tracing::warn!(error = %status.message(), code = ?status.code(), "auth's revocation feed broke; reopening");
        }
        let wait = Duration::from_millis(200 * u64::from(failures.min(25)));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_metadata() {
        let mut metadata = MetadataMap::new();
        assert_eq!(bearer_token(&metadata), None);
        metadata.insert("authorization", "Bearer abc.def".parse().unwrap());
        assert_eq!(bearer_token(&metadata), Some("abc.def"));
        metadata.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&metadata), None);
    }

    #[test]
    fn a_verifier_without_keys_refuses_tokens() {
        let verifier = TokenVerifier::new();
        assert_eq!(verifier.verify("not a jwt"), Err(TokenError::Malformed));
        assert!(!verifier.has_keys());
    }
}
