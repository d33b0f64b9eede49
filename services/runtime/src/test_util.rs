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
                let admin_url = std::env::var("PARLEY_TEST_POSTGRES_URL")
                    .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
                let name = format!("parley_test_{}", uuid::Uuid::new_v4().simple());
                let mut connection = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .unwrap_or_else(|err| {
                        panic!("cannot reach the test Postgres at {admin_url}: {err}")
                    });
                sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&mut connection)
                    .await
                    .unwrap_or_else(|err| panic!("cannot create test database {name}: {err}"));
                let (base, _) = admin_url.rsplit_once('/').unwrap_or_else(|| {
                    panic!("PARLEY_TEST_POSTGRES_URL needs a /database: {admin_url}")
                });
                Self {
                    url: format!("{base}/{name}")
                        .parse()
                        .unwrap_or_else(|err| panic!("{err}")),
                    dir: None,
                }
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir()
                    .unwrap_or_else(|err| panic!("cannot create a temp dir: {err}"));
                let url = format!("sqlite://{}/test.db", dir.path().display());
                Self {
                    url: url.parse().unwrap_or_else(|err| panic!("{err}")),
                    dir: Some(dir),
                }
            }
        }
    }

    /// Ends every connection to this Postgres database (as
    /// `pg_terminate_backend` does when an operator or a failover cuts
    /// them), and answers how many there were; 0 on SQLite.
    ///
    /// # Panics
    /// When the test Postgres cannot be reached.
    pub async fn terminate_connections(&self) -> u64 {
        if self.dir.is_some() {
            return 0;
        }
        let admin_url = std::env::var("PARLEY_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let name = self
            .url
            .expose()
            .rsplit_once('/')
            .map(|(_, name)| name.to_owned())
            .unwrap_or_default();
        let mut connection = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|err| panic!("cannot reach the test Postgres at {admin_url}: {err}"));
        let ended: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&name)
        .fetch_all(&mut connection)
        .await
        .unwrap_or_else(|err| panic!("cannot end the connections to {name}: {err}"));
        ended.into_iter().filter(|ended| *ended).count() as u64
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

/// A service binary started as its own process, for tests of start-up and
/// signals.
#[derive(Debug)]
pub struct RunningBinary {
    /// The process.
    pub child: tokio::process::Child,
    /// The gRPC addresses it logged, in order.
    pub grpc_addrs: Vec<std::net::SocketAddr>,
    /// The HTTP (gateway) addresses it logged, in order.
    pub http_addrs: Vec<std::net::SocketAddr>,
    /// The admin addresses it logged, in order.
    pub admin_addrs: Vec<std::net::SocketAddr>,
    /// Its working directory (holding `data/`), removed on drop.
    pub dir: tempfile::TempDir,
}

impl RunningBinary {
    /// Starts `program` in a fresh directory with `env` (JSON logs are
    /// forced) and waits until it has logged `services` "listening" lines
    /// (gRPC services and gateways alike).
    ///
    /// # Panics
    /// When the process cannot start or exits before listening.
    pub async fn start(program: &str, env: &[(&str, &str)], services: usize) -> Self {
        use tokio::io::AsyncBufReadExt as _;

        let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("temp dir: {err}"));
        let mut child = tokio::process::Command::new(program)
            .current_dir(dir.path())
            .env("LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("starting {program}: {err}"));
        let stdout = child
            .stdout
            .take()
            .unwrap_or_else(|| panic!("stdout of {program}"));
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut grpc_addrs = Vec::new();
        let mut http_addrs = Vec::new();
        let mut admin_addrs = Vec::new();
        while grpc_addrs.len() + http_addrs.len() < services {
            let line = lines
                .next_line()
                .await
                .unwrap_or_else(|err| panic!("reading {program}'s log: {err}"))
                .unwrap_or_else(|| panic!("{program} exited before listening"));
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if entry["message"] != "listening" {
                continue;
            }
            if let Some(addr) = entry["admin"].as_str().and_then(|a| a.parse().ok()) {
                admin_addrs.push(addr);
            }
            if let Some(addr) = entry["grpc"].as_str().and_then(|a| a.parse().ok()) {
                grpc_addrs.push(addr);
            } else if let Some(addr) = entry["http"].as_str().and_then(|a| a.parse().ok()) {
                http_addrs.push(addr);
            }
        }
        // Keep draining the log so the process never blocks on a full pipe;
        // with `TEST_LOG` set, show it.
        let show = std::env::var_os("TEST_LOG").is_some();
        let program = program.to_owned();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if show {
                    eprintln!("{program}: {line}");
                }
            }
        });
        Self {
            child,
            grpc_addrs,
            http_addrs,
            admin_addrs,
            dir,
        }
    }

    /// Sends SIGTERM, as Kubernetes does.
    ///
    /// # Panics
    /// When the signal cannot be sent.
    pub async fn terminate(&self) {
        self.signal("TERM").await;
    }

    /// Sends SIGINT, as Ctrl-C in a terminal does.
    ///
    /// # Panics
    /// When the signal cannot be sent.
    pub async fn interrupt(&self) {
        self.signal("INT").await;
    }

    /// Sends the signal `name` (`STOP`, `CONT`, ...).
    ///
    /// # Panics
    /// When the signal cannot be sent.
    pub async fn signal(&self, name: &str) {
        let pid = self
            .child
            .id()
            .unwrap_or_else(|| panic!("process already reaped"));
        let status = tokio::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .await
            .unwrap_or_else(|err| panic!("running kill: {err}"));
        assert!(status.success(), "kill -{name} {pid} failed");
    }
}

/// A certificate authority made for one test, issuing certificates for
/// `localhost` and 127.0.0.1 that serve and call (server and client
/// authentication), as a service's certificate under mTLS does.
#[derive(Debug)]
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A new CA with its own key.
    ///
    /// # Panics
    /// When key generation fails: the test cannot run.
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Parley test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().expect("a CA key");
        let cert = params.self_signed(&key).expect("the CA certificate");
        Self {
            issuer: rcgen::Issuer::new(params, key),
            pem: cert.pem(),
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate named `name` (its common name) for `localhost` and
    /// 127.0.0.1, and its key: `(cert_pem, key_pem)`.
    ///
    /// # Panics
    /// When signing fails: the test cannot run.
    pub fn issue(&self, name: &str) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("certificate params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("signing");
        (cert.pem(), key.serialize_pem())
    }
}
