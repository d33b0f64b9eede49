//! Publishing revocations (README, "Bots and API keys"): each is stored,
//! applied to auth's own verifier at once, and streamed to every watcher.
//! Auth replicas learn of each other's from the table, which every replica
//! reads every [`POLL_EVERY`], so a revocation reaches every verifier
//! within about a second wherever it was made.

use std::{sync::Arc, time::Duration};

use parley_runtime::{
    revocations::{Revocations, Revoked, RevokedKind},
    storage::now_millis,
};
use tokio_util::sync::CancellationToken;

use crate::{
    error::Error,
    store::{AuthStore, RevocationRow},
};

/// How often the table is read for other replicas' revocations.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How far back each read looks again, for rows whose clock or commit was
/// late; seen ones change nothing.
const OVERLAP_MILLIS: i64 = 5_000;
/// How often rows that ran out are deleted.
const FORGET_EVERY: Duration = Duration::from_secs(600);

/// Where revocations go. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Feed {
    store: AuthStore,
    revocations: Arc<Revocations>,
}

fn kind_name(kind: RevokedKind) -> &'static str {
    match kind {
        RevokedKind::User => "user",
        RevokedKind::Family => "family",
        RevokedKind::ApiKey => "api_key",
    }
}

fn from_row(row: &RevocationRow) -> Option<Revoked> {
    let kind = match row.kind.as_str() {
        "user" => RevokedKind::User,
        "family" => RevokedKind::Family,
        "api_key" => RevokedKind::ApiKey,
        _ => return None,
    };
    Some(Revoked {
        kind,
        id: row.subject.clone(),
        revoked_at: row.revoked_at,
        until: row.until_at,
    })
}

impl Feed {
    /// A feed storing in `store` and applying to `revocations` (auth's own
    /// verifier's).
    pub fn new(store: AuthStore, revocations: Arc<Revocations>) -> Self {
        Self { store, revocations }
    }

    /// The row for revoking `id` of `kind` now, until `lifetime` from now.
    pub fn row(kind: RevokedKind, id: &str, lifetime: Duration) -> RevocationRow {
        let now = now_millis();
        RevocationRow {
            revocation_id: uuid::Uuid::now_v7().to_string(),
            kind: kind_name(kind).to_owned(),
            subject: id.to_owned(),
            revoked_at: now,
            until_at: now.saturating_add(i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX)),
        }
    }

    /// Stores and applies a revocation.
    ///
    /// # Errors
    /// Database failures: then nothing was revoked.
    pub async fn publish(&self, row: RevocationRow) -> Result<(), Error> {
        self.store.insert_revocation(&row).await?;
        self.applied(&row);
        Ok(())
    }

    /// Applies a revocation already stored (with its key, for instance).
    pub fn applied(&self, row: &RevocationRow) {
        if let Some(revoked) = from_row(row) {
            self.revocations.add(revoked, now_millis());
        }
    }

    /// The revocations in force and the ones to come.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// Reads the table until `shutdown`: first everything in force, then
    /// what other replicas add.
    pub fn spawn_reader(&self, shutdown: CancellationToken) {
        let feed = self.clone();
        tokio::spawn(async move {
            let mut since = 0;
            let mut every = tokio::time::interval(POLL_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut forget = tokio::time::interval(FORGET_EVERY);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = forget.tick() => {
                        if let Err(err) = feed.store.forget_revocations(now_millis()).await {
                            tracing::warn!(error = %err, "cannot delete old revocations");
                        }
                        continue;
                    }
                    () = shutdown.cancelled() => return,
                }
                let now = now_millis();
                match feed.store.revocations_since(since, now).await {
                    Ok(rows) => {
                        for row in &rows {
                            feed.applied(row);
                        }
                        let newest = rows.iter().map(|row| row.revoked_at).max().unwrap_or(since);
                        since = since.max(newest.saturating_sub(OVERLAP_MILLIS));
                    }
                    Err(err) => tracing::warn!(error = %err, "cannot read revocations; retrying"),
                }
            }
        });
    }
}
