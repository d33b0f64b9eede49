//! API keys as values (README, "Bots and API keys"): their format, how
//! they are made and checked, and the parsing of what a new key asks for.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use parley_runtime::token::Scope;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::error::Error;

/// What every key starts with, so a key is told from a JWT at a glance.
pub(crate) const PREFIX: &str = "pk_";
/// Keys one user (or bot) may hold at once.
pub(crate) const MAX_KEYS_PER_USER: i64 = 50;
/// Longest key name, in characters.
pub(crate) const MAX_NAME_CHARS: usize = 64;

/// A key just made: the whole key for its owner, and what is stored.
#[derive(Debug)]
pub(crate) struct NewKey {
    /// The key's id.
    pub(crate) key_id: String,
    /// `pk_<key_id>_<secret>`, shown once.
    pub(crate) full: String,
    /// The SHA-256 of the secret, base64url: what is stored.
    pub(crate) secret_hash: String,
}

/// Makes a key: a random id and 256 random bits of secret.
///
/// # Errors
/// The OS has no randomness.
pub(crate) fn generate() -> Result<NewKey, Error> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|err| Error::Internal(anyhow::anyhow!("no OS randomness: {err}")))?;
    let secret = URL_SAFE_NO_PAD.encode(secret);
    let key_id = uuid::Uuid::new_v4().simple().to_string();
    Ok(NewKey {
        full: format!("{PREFIX}{key_id}_{secret}"),
        secret_hash: hash(&secret),
        key_id,
    })
}

/// The id and secret of `pk_<id>_<secret>`; `None` when it is not shaped
/// like a key. The secret may itself hold `_` (base64url), the id never.
pub(crate) fn split(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let well_formed = id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && !secret.is_empty()
        && secret.len() <= 128;
    well_formed.then_some((id, secret))
}

/// The stored form of a secret: high-entropy, so a fast hash is enough, and
/// a database leak reveals no usable key.
pub(crate) fn hash(secret: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `secret` is the one whose hash is `stored`, in time that does
/// not depend on where they differ.
pub(crate) fn matches(stored: &str, secret: &str) -> bool {
    hash(secret).as_bytes().ct_eq(stored.as_bytes()).into()
}

/// The scopes a new key asks for: at least one, each known, no repeats
/// (kept in their canonical order).
///
/// # Errors
/// INVALID_ARGUMENT naming `scopes`.
pub(crate) fn parse_scopes(names: &[String]) -> Result<Vec<Scope>, Error> {
    if names.is_empty() {
        return Err(Error::invalid(
            "scopes",
            "name at least one of chat:read, chat:write, users:read, media:write, admin",
        ));
    }
    let mut scopes = Vec::with_capacity(names.len());
    for name in names {
        let scope = Scope::parse(name.trim())
            .ok_or_else(|| Error::invalid("scopes", format!("`{name}` is not a scope")))?;
        scopes.push(scope);
    }
    scopes.sort_unstable();
    scopes.dedup();
    Ok(scopes)
}

/// The names of `scopes`, space-separated, as stored and in the `scope`
/// claim.
pub(crate) fn join_scopes(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|scope| scope.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A key's name: 1 to [`MAX_NAME_CHARS`] characters, no control
/// characters.
///
/// # Errors
/// INVALID_ARGUMENT naming `name`.
pub(crate) fn parse_name(name: &str) -> Result<String, Error> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(Error::invalid(
            "name",
            format!("must be 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid("name", "must not hold control characters"));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_and_match_only_their_own_secret() {
        let key = generate().unwrap();
        let (id, secret) = split(&key.full).unwrap();
        assert_eq!(id, key.key_id);
        assert!(matches(&key.secret_hash, secret));
        assert!(!matches(&key.secret_hash, "another secret"));
        let other = generate().unwrap();
        assert_ne!(other.full, key.full);
        for bad in [
            "",
            "pk_",
            "pk_abc_def",
            "eyJhbGciOi.x.y",
            &format!("pk_{}", key.key_id),
        ] {
            assert_eq!(split(bad), None, "{bad}");
        }
        // Secrets may hold underscores; ids never do.
        let id = "0".repeat(32);
        assert_eq!(split(&format!("pk_{id}_a_b")), Some((id.as_str(), "a_b")));
    }

    #[test]
    fn scopes_and_names_are_checked() {
        let scopes =
            parse_scopes(&["chat:write".into(), "chat:read".into(), "chat:read".into()]).unwrap();
        assert_eq!(join_scopes(&scopes), "chat:read chat:write");
        assert!(parse_scopes(&[]).is_err());
        assert!(parse_scopes(&["chat:everything".into()]).is_err());
        assert_eq!(parse_name("  ci bot ").unwrap(), "ci bot");
        assert!(parse_name("").is_err());
        assert!(parse_name(&"x".repeat(65)).is_err());
        assert!(parse_name("a\nb").is_err());
    }
}
