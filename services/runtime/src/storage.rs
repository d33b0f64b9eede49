//! One sqlx code path for Postgres and SQLite.
//!
//! Services talk to an `AnyPool` and write portable SQL (`$1` parameters,
//! `TEXT`/`BIGINT` columns, timestamps as Unix milliseconds), so the same
//! queries and migrations run on a shared Postgres, where each service keeps
//! its tables in its own schema, and on an embedded SQLite file for a
//! laptop. Migrations are embedded in each service's binary and run at
//! start; an unreachable database is retried in the background while the
//! service reports NOT_SERVING.

use std::{future::Future, path::Path, time::Duration};

use anyhow::Context as _;
use sqlx::{
    AnyPool, Executor as _,
    any::AnyPoolOptions,
    error::{DatabaseError, ErrorKind},
    migrate::Migrator,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{DatabaseKind, DatabaseUrl},
    health::{Condition, Readiness},
};

/// How often the database is pinged for readiness and pool metrics sampled.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// A service's database: a pool plus what the service needs to know about
/// it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    kind: DatabaseKind,
}

impl Database {
    /// Opens the pool for `url`, creating the schema (Postgres) or the file
    /// and its folders (SQLite), and runs `migrator`.
    ///
    /// The service is not ready until this has succeeded; when the database
    /// is unreachable, connecting is retried with backoff in the background
    /// and `open` returns at once, so the service can report NOT_SERVING
    /// meanwhile. A pool metric sampler and a readiness ping run until
    /// `shutdown`.
    ///
    /// # Errors
    /// Fails when the URL is unusable or a migration fails; both need an
    /// operator, not a retry.
    pub async fn open(
        url: &DatabaseUrl,
        schema: &'static str,
        migrator: &'static Migrator,
        readiness: &Readiness,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let kind = url.kind();
        let connect_url = match kind {
            DatabaseKind::Postgres => url.expose().to_owned(),
            DatabaseKind::Sqlite => sqlite_url(url)?,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(match kind {
                DatabaseKind::Postgres => 10,
                // One writer at a time in SQLite anyway; a few readers.
                DatabaseKind::Sqlite => 4,
            })
            .acquire_timeout(Duration::from_secs(3))
            .after_connect(move |connection, _meta| {
                Box::pin(async move {
                    match kind {
                        DatabaseKind::Postgres => {
                            connection
                                .execute(format!("SET search_path TO \"{schema}\"").as_str())
                                .await?;
                        }
                        DatabaseKind::Sqlite => {
                            connection.execute("PRAGMA journal_mode = WAL").await?;
                            connection.execute("PRAGMA foreign_keys = ON").await?;
                            connection.execute("PRAGMA busy_timeout = 5000").await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_lazy(&connect_url)
            .with_context(|| format!("cannot use database {url}"))?;
        let database = Self { pool, kind };

        let ready = readiness.condition("database");
        match database.prepare(schema, migrator).await {
            Ok(()) => {
                ready.set(true);
                tokio::spawn(database.clone().monitor(schema, ready, shutdown));
            }
            Err(Prepare::Unreachable(err)) => {
                tracing::warn!(database = %url, error = %err, "database unreachable; retrying in the background");
                let database = database.clone();
                tokio::spawn(async move {
                    let mut delay = Duration::from_millis(200);
                    loop {
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            () = shutdown.cancelled() => return,
                        }
                        match database.prepare(schema, migrator).await {
                            Ok(()) => break,
                            Err(Prepare::Unreachable(_)) => {
                                delay = (delay * 2).min(Duration::from_secs(10))
                            }
                            Err(Prepare::Migration(err)) => {
                                tracing::error!(error = ?err, "database migration failed; staying not ready");
                                return;
                            }
                        }
                    }
                    tracing::info!("database reachable and migrated");
                    ready.set(true);
                    database.monitor(schema, ready, shutdown).await;
                });
            }
            Err(Prepare::Migration(err)) => return Err(err),
        }
        Ok(database)
    }

    /// The pool, for queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Begins a transaction that writes. On SQLite it takes the write lock
    /// first (`BEGIN IMMEDIATE`), waiting for it under the busy timeout: a
    /// plain deferred transaction that reads before it writes fails at once
    /// with `SQLITE_BUSY` when another connection committed in between,
    /// since SQLite cannot wait its way out of a stale snapshot. Postgres
    /// begins as usual.
    ///
    /// # Errors
    /// No connection, or the lock not taken within the busy timeout.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.kind {
            DatabaseKind::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            DatabaseKind::Postgres => self.pool.begin().await,
        }
    }

    /// Which engine this is.
    pub fn kind(&self) -> DatabaseKind {
        self.kind
    }

    async fn prepare(&self, schema: &str, migrator: &Migrator) -> Result<(), Prepare> {
        if self.kind == DatabaseKind::Postgres {
            // Before the pool's search_path matters: the schema must exist
            // for the migrations table to live in it.
            self.pool
                .execute(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"").as_str())
                .await
                .map_err(|err| classify(err, schema))?;
        } else {
            self.pool
                .execute("SELECT 1")
                .await
                .map_err(|err| classify(err, schema))?;
        }
        migrator
            .run(&self.pool)
            .await
            .with_context(|| format!("running the {schema} migrations"))
            .map_err(Prepare::Migration)
    }

    /// Pings the database for readiness and samples the pool, until
    /// shutdown.
    async fn monitor(self, schema: &'static str, ready: Condition, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(CHECK_EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let reachable = self.pool.execute("SELECT 1").await.is_ok();
            ready.set(reachable);
            let size = f64::from(self.pool.size());
            let idle = self.pool.num_idle() as f64;
            metrics::gauge!("parley_db_pool_connections", "pool" => schema, "state" => "idle")
                .set(idle);
            metrics::gauge!("parley_db_pool_connections", "pool" => schema, "state" => "used")
                .set(size - idle);
        }
    }
}

enum Prepare {
    /// Worth retrying: the server is down, starting, or unreachable.
    Unreachable(sqlx::Error),
    /// Needs an operator.
    Migration(anyhow::Error),
}

fn classify(err: sqlx::Error, schema: &str) -> Prepare {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Tls(_)
        | sqlx::Error::Database(_) => Prepare::Unreachable(err),
        other => Prepare::Migration(
            anyhow::Error::new(other).context(format!("preparing the {schema} database")),
        ),
    }
}

/// The SQLite URL to connect with: folders created, file created if
/// missing (`mode=rwc`).
fn sqlite_url(url: &DatabaseUrl) -> anyhow::Result<String> {
    let raw = url.expose();
    if let Some(path) = url.sqlite_path()
        && let Some(parent) = Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {} for {url}", parent.display()))?;
    }
    if let Some(path) = url.sqlite_path() {
        owner_only(Path::new(path)).with_context(|| format!("securing {url}"))?;
    }
    Ok(if raw.contains("mode=") {
        raw.to_owned()
    } else if raw.contains('?') {
        format!("{raw}&mode=rwc")
    } else {
        format!("{raw}?mode=rwc")
    })
}

/// Creates the SQLite file readable and writable by its owner only (or
/// narrows an existing one to that): it holds password and token hashes.
/// SQLite gives its `-wal` and `-shm` files the database file's mode.
fn owner_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Runs a query future, recording its latency as
/// `parley_db_query_seconds{operation}`. `operation` is a fixed name such as
/// `insert_user`, never built from data.
pub async fn timed<T>(operation: &'static str, query: impl Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let result = query.await;
    metrics::histogram!("parley_db_query_seconds", "operation" => operation)
        .record(started.elapsed().as_secs_f64());
    result
}

/// The constraint (Postgres) or `table.column` list (SQLite) a unique
/// violation names, if `err` is one.
pub fn unique_violation(err: &sqlx::Error) -> Option<String> {
    let db_err: &dyn DatabaseError = err.as_database_error()?;
    if db_err.kind() != ErrorKind::UniqueViolation {
        return None;
    }
    Some(
        db_err
            .constraint()
            .map_or_else(|| db_err.message().to_owned(), str::to_owned),
    )
}

/// Whether `err` means the database could not be reached, as opposed to a
/// bad query: such errors map to UNAVAILABLE.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
    )
}

/// Milliseconds since the Unix epoch: how every timestamp is stored.
pub fn now_millis() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// A stored timestamp as a protobuf `Timestamp`.
pub fn timestamp(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: i32::try_from(millis.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}
