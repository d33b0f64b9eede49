//! Access tokens revoked before their expiry (README, "Bots and API keys"):
//! a user suspended or deleted, a login logged out, an API key revoked.
//!
//! Auth publishes revocations (`WatchRevocations`); every verifier keeps
//! the ones still in force here and refuses the tokens they name, and the
//! gateway also hears of each one as it arrives, to close the WebSockets
//! it concerns. An entry is forgotten once every token it concerns has
//! expired anyway (`until`).

use std::{collections::HashMap, sync::RwLock};

use parley_proto::auth::v1::{Revocation, revocation::Kind};
use tokio::sync::broadcast;

use crate::token::AccessClaims;

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevokedKind {
    /// Every token of a user issued until the revocation.
    User,
    /// Every token of a login's refresh-token family.
    Family,
    /// Every token made from an API key.
    ApiKey,
}

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// What it names.
    pub kind: RevokedKind,
    /// The user, family or key id.
    pub id: String,
    /// When it was revoked, Unix milliseconds.
    pub revoked_at: i64,
    /// When the last token it concerns expires, Unix milliseconds.
    pub until: i64,
}

impl Revoked {
    /// From the wire; `None` for a kind this version does not know.
    pub fn from_proto(revocation: &Revocation) -> Option<Self> {
        let kind = match revocation.kind() {
            Kind::User => RevokedKind::User,
            Kind::TokenFamily => RevokedKind::Family,
            Kind::ApiKey => RevokedKind::ApiKey,
            Kind::Unspecified => return None,
        };
        let millis = |t: Option<&prost_types::Timestamp>| {
            t.map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
        };
        Some(Self {
            kind,
            id: revocation.id.clone(),
            revoked_at: millis(revocation.revoked_at.as_ref()),
            until: millis(revocation.until.as_ref()),
        })
    }

    /// To the wire.
    pub fn to_proto(&self) -> Revocation {
        let kind = match self.kind {
            RevokedKind::User => Kind::User,
            RevokedKind::Family => Kind::TokenFamily,
            RevokedKind::ApiKey => Kind::ApiKey,
        };
        Revocation {
            kind: kind.into(),
            id: self.id.clone(),
            revoked_at: Some(crate::storage::timestamp(self.revoked_at)),
            until: Some(crate::storage::timestamp(self.until)),
        }
    }

    /// Whether a token with these claims is one this revocation names.
    pub fn covers(&self, claims: &TokenFacts<'_>) -> bool {
        match self.kind {
            RevokedKind::User => {
                claims.user_id == self.id && claims.issued_at * 1000 <= self.revoked_at
            }
            RevokedKind::Family => claims.family == Some(self.id.as_str()),
            RevokedKind::ApiKey => claims.key_id == Some(self.id.as_str()),
        }
    }
}

/// What a revocation is matched against: a token's user, issue time,
/// family and key.
#[derive(Debug, Clone, Copy)]
pub struct TokenFacts<'a> {
    /// `sub`.
    pub user_id: &'a str,
    /// `iat`, seconds.
    pub issued_at: i64,
    /// `fam`.
    pub family: Option<&'a str>,
    /// `key`.
    pub key_id: Option<&'a str>,
}

impl<'a> From<&'a AccessClaims> for TokenFacts<'a> {
    fn from(claims: &'a AccessClaims) -> Self {
        Self {
            user_id: &claims.sub,
            issued_at: claims.iat,
            family: claims.fam.as_deref(),
            key_id: claims.key.as_deref(),
        }
    }
}

/// The revocations in force, and a feed of new ones.
#[derive(Debug)]
pub struct Revocations {
    entries: RwLock<HashMap<(RevokedKind, String), Revoked>>,
    events: broadcast::Sender<Revoked>,
}

impl Default for Revocations {
    fn default() -> Self {
        Self {
            entries: RwLock::default(),
            events: broadcast::channel(1024).0,
        }
    }
}

impl Revocations {
    /// Records `revoked` (unless it has run out by `now`, Unix
    /// milliseconds) and tells subscribers; forgets entries that ran out.
    /// Returns whether it was new.
    pub fn add(&self, revoked: Revoked, now: i64) -> bool {
        let key = (revoked.kind, revoked.id.clone());
        let new = {
            let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
            entries.retain(|_, entry| entry.until >= now);
            if revoked.until < now {
                return false;
            }
            match entries.get(&key) {
                // A user revoked again later covers more tokens.
                Some(old) if old.revoked_at >= revoked.revoked_at => false,
                _ => {
                    entries.insert(key, revoked.clone());
                    true
                }
            }
        };
        if new {
            // Nobody listening is fine.
            let _ = self.events.send(revoked);
        }
        new
    }

    /// Whether a token with `facts` is revoked.
    pub fn is_revoked(&self, facts: &TokenFacts<'_>) -> bool {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        if entries.is_empty() {
            return false;
        }
        let named = |kind, id: Option<&str>| {
            id.and_then(|id| entries.get(&(kind, id.to_owned())))
                .is_some_and(|entry| entry.covers(facts))
        };
        named(RevokedKind::User, Some(facts.user_id))
            || named(RevokedKind::Family, facts.family)
            || named(RevokedKind::ApiKey, facts.key_id)
    }

    /// Every revocation in force at `now`.
    pub fn snapshot(&self, now: i64) -> Vec<Revoked> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .values()
            .filter(|entry| entry.until >= now)
            .cloned()
            .collect()
    }

    /// New revocations from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Revoked> {
        self.events.subscribe()
    }

    /// How many are in force.
    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revoked(kind: RevokedKind, id: &str, at: i64, until: i64) -> Revoked {
        Revoked {
            kind,
            id: id.into(),
            revoked_at: at,
            until,
        }
    }

    fn facts<'a>(
        user: &'a str,
        iat: i64,
        family: Option<&'a str>,
        key: Option<&'a str>,
    ) -> TokenFacts<'a> {
        TokenFacts {
            user_id: user,
            issued_at: iat,
            family,
            key_id: key,
        }
    }

    #[test]
    fn a_user_revocation_covers_tokens_issued_until_then() {
        let set = Revocations::default();
        let mut feed = set.subscribe();
        assert!(set.add(revoked(RevokedKind::User, "u1", 10_000, 100_000), 10_000));
        assert_eq!(feed.try_recv().unwrap().id, "u1");
        assert!(set.is_revoked(&facts("u1", 9, None, None)));
        assert!(set.is_revoked(&facts("u1", 10, None, None)));
        assert!(
            !set.is_revoked(&facts("u1", 11, None, None)),
            "a later sign-in"
        );
        assert!(!set.is_revoked(&facts("u2", 9, None, None)));
        // The same again is not news; a later one is.
        assert!(!set.add(revoked(RevokedKind::User, "u1", 10_000, 100_000), 10_000));
        assert!(set.add(revoked(RevokedKind::User, "u1", 20_000, 100_000), 20_000));
        assert!(set.is_revoked(&facts("u1", 11, None, None)));
    }

    #[test]
    fn families_and_keys_cover_all_their_tokens_until_they_run_out() {
        let set = Revocations::default();
        set.add(revoked(RevokedKind::Family, "f1", 1_000, 50_000), 1_000);
        set.add(revoked(RevokedKind::ApiKey, "k1", 1_000, 60_000), 1_000);
        assert!(set.is_revoked(&facts("u", 99, Some("f1"), None)));
        assert!(set.is_revoked(&facts("u", 99, None, Some("k1"))));
        assert!(!set.is_revoked(&facts("u", 99, Some("f2"), Some("k2"))));
        assert!(
            !set.is_revoked(&facts("f1", 0, None, None)),
            "ids of kinds do not mix"
        );
        assert_eq!(set.len(), 2);
        // Past `until` they are forgotten, and stale ones are not taken.
        assert!(!set.add(revoked(RevokedKind::ApiKey, "k0", 1_000, 2_000), 55_000));
        assert_eq!(set.len(), 1);
        assert!(!set.is_revoked(&facts("u", 99, Some("f1"), None)));
    }

    #[test]
    fn the_wire_form_round_trips() {
        let one = revoked(RevokedKind::ApiKey, "k", 1_234, 5_678);
        assert_eq!(Revoked::from_proto(&one.to_proto()), Some(one));
        assert_eq!(Revoked::from_proto(&Revocation::default()), None);
    }
}
