//! Helpers for tests against real databases: a fresh Postgres database or
//! SQLite file per test, and quiet logs unless `TEST_LOG` is set.

use sqlx::Connection as _;

use crate::config::DatabaseUrl;

/// Where the test Postgres server is; `PARLEY_TEST_POSTGRES_URL` overrides.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Which engine a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The Postgres server, in a fresh database.
    Postgres,
    /// A fresh SQLite file.
    Sqlite,
}

/// A database that exists for one test. SQLite files are deleted when this
/// is dropped; Postgres test databases are named `parley_test_*` and
/// removed by `make test` before each run.
#[derive(Debug)]
pub struct TestDatabase {
    url: DatabaseUrl,
    dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// Creates a fresh, empty database on `backend`.
    ///
    /// # Panics
    /// When the database cannot be created: the test cannot run.
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Postgres => {
                let admin_url =
                    std::env::var("PARLEY_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
                let name = format!("parley_test_{}", uuid::Uuid::new_v4().simple());
                let mut connection = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .unwrap_or_else(|err| panic!("cannot reach the test Postgres at {admin_url}: {err}"));
                sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&mut connection)
                    .await
                    .unwrap_or_else(|err| panic!("cannot create test database {name}: {err}"));
                let (base, _) = admin_url
                    .rsplit_once('/')
                    .unwrap_or_else(|| panic!("PARLEY_TEST_POSTGRES_URL needs a /database: {admin_url}"));
                Self {
                    url: format!("{base}/{name}").parse().unwrap_or_else(|err| panic!("{err}")),
                    dir: None,
                }
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("cannot create a temp dir: {err}"));
                let url = format!("sqlite://{}/test.db", dir.path().display());
                Self {
                    url: url.parse().unwrap_or_else(|err| panic!("{err}")),
                    dir: Some(dir),
                }
            }
        }
    }

    /// The URL `service` should use: on Postgres the one database (each
    /// service keeps its own schema), on SQLite a file of its own.
    ///
    /// # Panics
    /// Never for the URLs this type makes.
    pub fn url_for(&self, service: &str) -> DatabaseUrl {
        match &self.dir {
            None => self.url.clone(),
            Some(dir) => format!("sqlite://{}/{service}.db", dir.path().display())
                .parse()
                .unwrap_or_else(|err| panic!("{err}")),
        }
    }
}

/// Installs a log subscriber for tests once: silent unless `TEST_LOG` is
/// set, then writing to the test's captured output.
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}
