//! API keys wherever a token goes (README, "Bots and API keys"): a bearer
//! that looks like a key (`pk_...`) is exchanged with auth for a short-lived
//! token, which is cached until shortly before it expires, so a bot's every
//! request does not cost a call to auth. A revoked key (or its user's
//! revocation) drops its cached token at once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use parley_proto::auth::v1::{ExchangeApiKeyRequest, auth_service_client::AuthServiceClient};
use parley_runtime::{
    client::ClientChannel,
    revocations::RevokedKind,
    storage::now_millis,
    token::{AccessClaims, TokenVerifier},
};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// Keys cached at once; past it, expired entries go, then the soonest to
/// expire.
const MAX_CACHED: usize = 10_000;

/// Whether a bearer is an API key rather than a JWT.
pub(crate) fn is_api_key(bearer: &str) -> bool {
    bearer.starts_with("pk_")
}

/// A key's id, the `<id>` of `pk_<id>_<secret>`.
fn key_id(key: &str) -> Option<&str> {
    key.strip_prefix("pk_")?.split_once('_').map(|(id, _)| id)
}

#[derive(Debug)]
struct Cached {
    /// SHA-256 of the whole key: a cached token is handed only to the
    /// holder of the same key, never to someone who guessed its id.
    digest: [u8; 32],
    token: Arc<str>,
    /// Unix milliseconds.
    issued_at: i64,
    /// Unix milliseconds.
    expires_at: i64,
    user_id: Arc<str>,
}

impl Cached {
    /// Whether the token still has more than half its life at `now`: a
    /// request is never sent on with a token about to run out, and a
    /// connection renewing its token (with a third left, see
    /// `SessionHandle`) always gets a newer one than it has.
    fn fresh_at(&self, now: i64) -> bool {
        self.expires_at - now > (self.expires_at - self.issued_at) / 2
    }
}

/// Tokens of API keys, cached by key id. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct KeyTokens {
    auth: AuthServiceClient<ClientChannel>,
    verifier: TokenVerifier,
    cache: Arc<Mutex<HashMap<String, Cached>>>,
}

impl KeyTokens {
    /// Exchanges keys with `auth`, checks the tokens with `verifier`, and
    /// forgets what its revocations revoke until `stop`.
    pub(crate) fn new(
        auth: AuthServiceClient<ClientChannel>,
        verifier: TokenVerifier,
        stop: CancellationToken,
    ) -> Self {
        let mut feed = verifier.revocations().subscribe();
        let tokens = Self {
            auth,
            verifier,
            cache: Arc::default(),
        };
        let cache = tokens.cache.clone();
        tokio::spawn(async move {
            loop {
                let revoked = tokio::select! {
                    revoked = feed.recv() => revoked,
                    () = stop.cancelled() => return,
                };
                let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
                match revoked {
                    Ok(revoked) => match revoked.kind {
                        RevokedKind::ApiKey => {
                            cache.remove(&revoked.id);
                        }
                        RevokedKind::User => cache.retain(|_, c| *c.user_id != *revoked.id),
                        RevokedKind::Family => {}
                    },
                    // Missed some: forget everything rather than guess.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => cache.clear(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        tokens
    }

    /// A token for `key`, verified: cached, or exchanged with auth now.
    ///
    /// # Errors
    /// UNAUTHENTICATED for a key auth refuses; auth's other failures.
    pub(crate) async fn token_for(&self, key: &str) -> Result<(Arc<str>, AccessClaims), ApiError> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let id = key_id(key).unwrap_or_default().to_owned();
        let now = now_millis();
        let cached = self
            .lock()
            .get(&id)
            .filter(|c| c.digest == digest && c.fresh_at(now))
            .map(|c| c.token.clone());
        // Verified again: a revocation that raced the cache still counts.
        if let Some(token) = cached {
            let claims = self.verifier.verify(&token)?;
            return Ok((token, claims));
        }
        let response = self
            .auth
            .clone()
            .exchange_api_key(ExchangeApiKeyRequest {
                api_key: key.to_owned(),
            })
            .await?
            .into_inner();
        let token: Arc<str> = Arc::from(response.access_token);
        let claims = self.verifier.verify(&token)?;
        let expires_at = claims.exp.saturating_mul(1000);
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, c| c.expires_at > now);
            if cache.len() >= MAX_CACHED
                && let Some(soonest) = cache
                    .iter()
                    .min_by_key(|(_, c)| c.expires_at)
                    .map(|(id, _)| id.clone())
            {
                cache.remove(&soonest);
            }
        }
        cache.insert(
            id,
            Cached {
                digest,
                token: token.clone(),
                issued_at: claims.iat.saturating_mul(1000),
                expires_at,
                user_id: Arc::from(claims.sub.as_str()),
            },
        );
        Ok((token, claims))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_told_from_tokens() {
        assert!(is_api_key("pk_0123_secret"));
        assert!(!is_api_key("eyJhbGciOiJFZERTQSJ9.e30.sig"));
        assert_eq!(key_id("pk_abc_def_ghi"), Some("abc"));
        assert_eq!(key_id("pk_nounderscore"), None);
    }
}
