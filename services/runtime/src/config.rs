//! Configuration pieces every service reads from its environment.
//!
//! Each service declares its own `clap` struct with its own prefixed
//! variables (`AUTH_GRPC_ADDR`, ...), so the all-in-one binary can read all
//! four sets at once; this module holds the settings they share and the
//! value types they parse into. Parsing happens in `clap` value parsers, so a
//! bad value stops the process with exit code 2 and a message naming the
//! variable, before anything starts.

use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

/// A setting whose value is unusable, found after the command line was
/// parsed (a key that does not parse, a file that cannot be read): the
/// process exits 2 naming the variable, as for any bad value (README:
/// "Configuration").
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct BadValue {
    /// The variable, such as `AUTH_JWT_PRIVATE_KEY`.
    pub variable: &'static str,
    /// What is wrong with its value (never the value itself).
    pub message: String,
}

use clap::{Args, ValueEnum};

/// Settings shared by every binary: shutdown, logging, tracing and the
/// runtime's threads.
#[derive(Debug, Clone, Args)]
pub struct CommonConfig {
    /// How long to drain in-flight calls, streams and sockets on SIGTERM
    /// before cutting them.
    #[arg(id = "SHUTDOWN_GRACE", long = "shutdown-grace", env = "SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Log filter, in `tracing` EnvFilter syntax.
    #[arg(
        id = "RUST_LOG",
        long = "log",
        env = "RUST_LOG",
        default_value = "info"
    )]
    pub log_filter: String,

    /// Log format; `pretty` on a terminal, `json` otherwise, when unset.
    #[arg(id = "LOG_FORMAT", long = "log-format", env = "LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// OTLP/gRPC endpoint to export traces to, such as
    /// `http://otel-collector:4317`; unset exports nothing.
    #[arg(
        id = "OTEL_EXPORTER_OTLP_ENDPOINT",
        long = "otlp-endpoint",
        env = "OTEL_EXPORTER_OTLP_ENDPOINT"
    )]
    pub otlp_endpoint: Option<String>,

    /// Async runtime worker threads; one per core the process may use when
    /// unset. On a node of one or two cores shared with other processes,
    /// `1` spends less CPU per message on workers waking each other
    /// (BENCHMARKS.md, "Wake-ups"). Tokio reads the same variable; parsing
    /// it here turns a bad value into exit code 2 instead of a panic.
    #[arg(
        id = "TOKIO_WORKER_THREADS",
        long = "worker-threads",
        env = "TOKIO_WORKER_THREADS"
    )]
    pub worker_threads: Option<std::num::NonZeroUsize>,
}

impl Default for CommonConfig {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(20),
            log_filter: "info".into(),
            log_format: None,
            otlp_endpoint: None,
            worker_threads: None,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Coloured, human-readable lines.
    Pretty,
}

/// Parses a humantime duration (`500ms`, `8s`, `15m`, `30d`).
///
/// # Errors
/// Returns a message clap shows next to the variable's name.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim())
        .map_err(|err| format!("not a duration like `8s` or `15m`: {err}"))
}

/// Which database engine a `*_DATABASE_URL` points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    /// `postgres://...`: a shared server, each service in its own schema.
    Postgres,
    /// `sqlite://path`: an embedded file, created if missing.
    Sqlite,
}

/// A validated `*_DATABASE_URL`. Its `Debug` and `Display` hide any
/// password, so the configuration can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    url: String,
    kind: DatabaseKind,
}

impl DatabaseUrl {
    /// The engine this URL selects.
    pub fn kind(&self) -> DatabaseKind {
        self.kind
    }

    /// The full URL, password included, for connecting.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// For SQLite, the file path the URL names (relative to the working
    /// directory); `None` for Postgres and in-memory databases.
    pub fn sqlite_path(&self) -> Option<&str> {
        if self.kind != DatabaseKind::Sqlite {
            return None;
        }
        let rest = self
            .url
            .strip_prefix("sqlite://")
            .or_else(|| self.url.strip_prefix("sqlite:"))?;
        let path = rest.split('?').next().unwrap_or_default();
        (!path.is_empty() && path != ":memory:").then_some(path)
    }

    fn redacted(&self) -> String {
        // postgres://user:secret@host/db -> postgres://user:***@host/db
        if let Some((scheme, rest)) = self.url.split_once("://")
            && let Some((credentials, host)) = rest.split_once('@')
            && let Some((user, _password)) = credentials.split_once(':')
        {
            return format!("{scheme}://{user}:***@{host}");
        }
        self.url.clone()
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let url = value.trim().to_owned();
        let kind = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            DatabaseKind::Postgres
        } else if url.starts_with("sqlite:") {
            DatabaseKind::Sqlite
        } else {
            return Err("expected `postgres://...` or `sqlite://path`".into());
        };
        Ok(Self { url, kind })
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Where callers find a service (`AUTH_URL`, `USER_URL`, `CHAT_URL`,
/// `MEDIA_URL`): one or
/// more `http://host:port`, separated by commas. A host name may resolve to
/// several addresses (a headless Service); it is re-resolved periodically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUrl {
    targets: Vec<Target>,
    tls: bool,
}

/// One `host:port` of a [`ServiceUrl`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl ServiceUrl {
    /// The `host:port` pairs to resolve and balance over.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Whether the URL says `https://`: calls use TLS (README, "TLS").
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// A URL with one target, for tests and the all-in-one binary.
    pub fn from_addr(addr: std::net::SocketAddr) -> Self {
        Self {
            targets: vec![Target {
                host: addr.ip().to_string(),
                port: addr.port(),
            }],
            tls: false,
        }
    }
}

impl fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, target) in self.targets.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let scheme = if self.tls { "https" } else { "http" };
            write!(f, "{scheme}://{}:{}", target.host, target.port)?;
        }
        Ok(())
    }
}

impl FromStr for ServiceUrl {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let mut targets = Vec::new();
        let mut tls = None;
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (secure, rest) = if let Some(rest) = part.strip_prefix("https://") {
                (true, rest)
            } else if let Some(rest) = part.strip_prefix("http://") {
                (false, rest)
            } else {
                return Err(format!("`{part}` must start with http:// or https://"));
            };
            if tls.is_some_and(|tls| tls != secure) {
                return Err("mixes http:// and https://; use one for all".into());
            }
            tls = Some(secure);
            let authority = rest.trim_end_matches('/');
            let (host, port) = authority
                .rsplit_once(':')
                .ok_or_else(|| format!("`{part}` needs a port, as in http://host:50051"))?;
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("`{part}` has a bad port `{port}`"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() || host.contains('/') {
                return Err(format!("`{part}` has no host"));
            }
            targets.push(Target {
                host: host.to_owned(),
                port,
            });
        }
        if targets.is_empty() {
            return Err("expected at least one http://host:port".into());
        }
        Ok(Self {
            targets,
            tls: tls.unwrap_or(false),
        })
    }
}

/// `AUTH_URL`: where auth is, for its public keys (and the gateway's
/// logins).
#[derive(Debug, Clone, Args)]
pub struct AuthUrl {
    /// Where to find the auth service: http://host:port, several separated
    /// by commas, or a name resolving to several addresses.
    #[arg(
        id = "AUTH_URL",
        long = "auth-url",
        env = "AUTH_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub auth_url: ServiceUrl,
}

/// `USER_URL`: where the user service is.
#[derive(Debug, Clone, Args)]
pub struct UserUrl {
    /// Where to find the user service: http://host:port, several separated
    /// by commas, or a name resolving to several addresses.
    #[arg(
        id = "USER_URL",
        long = "user-url",
        env = "USER_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub user_url: ServiceUrl,
}

/// `CHAT_URL`: where the chat replicas are.
#[derive(Debug, Clone, Args)]
pub struct ChatUrl {
    /// Where to find the chat replicas: http://host:port, several
    /// separated by commas, or a name resolving to several addresses.
    #[arg(
        id = "CHAT_URL",
        long = "chat-url",
        env = "CHAT_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    pub chat_url: ServiceUrl,
}

/// Declares a service's `<SVC>_TLS_*` settings (README, "TLS").
macro_rules! tls_args {
    ($name:ident, $prefix:literal, $flag:literal, serves gRPC) => {
        tls_args!(@struct $name, $prefix, $flag, {
            /// CA whose certificates callers must present (mTLS); unset
            /// accepts any caller.
            #[arg(
                id = concat!($prefix, "_TLS_CLIENT_CA_FILE"),
                long = concat!($flag, "-tls-client-ca-file"),
                env = concat!($prefix, "_TLS_CLIENT_CA_FILE")
            )]
            pub client_ca_file: Option<PathBuf>,
        }, |args: &$name| crate::tls::TlsFile::new(concat!($prefix, "_TLS_CLIENT_CA_FILE"), args.client_ca_file.as_ref()));
    };
    ($name:ident, $prefix:literal, $flag:literal, serves HTTPS) => {
        tls_args!(@struct $name, $prefix, $flag, {}, |_: &$name| None);
    };
    (@struct $name:ident, $prefix:literal, $flag:literal, { $($extra:tt)* }, $client_ca:expr) => {
        #[doc = concat!("`", $prefix, "_TLS_*`: the certificate this service serves (and presents")]
        /// under mTLS when it calls others) and the CA it trusts when it
        /// calls `https://` services.
        #[derive(Debug, Clone, Default, Args)]
        pub struct $name {
            /// Certificate chain (PEM) to serve TLS with; unset serves
            /// plaintext. Re-read when the file changes.
            #[arg(
                id = concat!($prefix, "_TLS_CERT_FILE"),
                long = concat!($flag, "-tls-cert-file"),
                env = concat!($prefix, "_TLS_CERT_FILE")
            )]
            pub cert_file: Option<PathBuf>,

            /// Private key (PEM) of the certificate.
            #[arg(
                id = concat!($prefix, "_TLS_KEY_FILE"),
                long = concat!($flag, "-tls-key-file"),
                env = concat!($prefix, "_TLS_KEY_FILE")
            )]
            pub key_file: Option<PathBuf>,

            $($extra)*

            /// CA (PEM) trusted besides the system roots when calling
            /// `https://` services.
            #[arg(
                id = concat!($prefix, "_TLS_CA_FILE"),
                long = concat!($flag, "-tls-ca-file"),
                env = concat!($prefix, "_TLS_CA_FILE")
            )]
            pub ca_file: Option<PathBuf>,
        }

        impl $name {
            /// The files, named by their variables.
            pub fn files(&self) -> crate::tls::TlsFiles {
                let client_ca = $client_ca;
                crate::tls::TlsFiles {
                    cert: crate::tls::TlsFile::new(concat!($prefix, "_TLS_CERT_FILE"), self.cert_file.as_ref()),
                    key: crate::tls::TlsFile::new(concat!($prefix, "_TLS_KEY_FILE"), self.key_file.as_ref()),
                    client_ca: client_ca(self),
                    ca: crate::tls::TlsFile::new(concat!($prefix, "_TLS_CA_FILE"), self.ca_file.as_ref()),
                }
            }
        }
    };
}

tls_args!(AuthTls, "AUTH", "auth", serves gRPC);
tls_args!(UserTls, "USER", "user", serves gRPC);
tls_args!(ChatTls, "CHAT", "chat", serves gRPC);
tls_args!(MediaTls, "MEDIA", "media", serves gRPC);
tls_args!(GatewayTls, "GATEWAY", "gateway", serves HTTPS);

/// `<SVC>_CORS_ORIGINS`: which browser origins may call a gRPC port with
/// gRPC-Web (README, "gRPC-Web"): a comma-separated list of origins such as
/// `https://chat.example.com`, or `*` for any. Empty (the default) sends no
/// CORS headers, so only same-origin pages and non-browser clients call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// No CORS headers.
    #[default]
    None,
    /// Any origin.
    Any,
    /// These origins.
    List(Vec<String>),
}

impl FromStr for CorsOrigins {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let origins: Vec<&str> = value
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .collect();
        if origins.is_empty() {
            return Ok(Self::None);
        }
        if origins == ["*"] {
            return Ok(Self::Any);
        }
        let mut list = Vec::new();
        for origin in origins {
            let rest = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                .ok_or_else(|| {
                    format!("`{origin}` must be `*` or an origin such as https://chat.example.com")
                })?;
            if rest.is_empty()
                || rest.contains('/')
                || !origin.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(format!(
                    "`{origin}` is not an origin (scheme://host[:port], no path)"
                ));
            }
            list.push(origin.to_owned());
        }
        Ok(Self::List(list))
    }
}

/// `MEDIA_URL`: where the media service is (for chat, to check
/// attachments, and for the gateway's attachment routes).
#[derive(Debug, Clone, Args)]
pub struct MediaUrl {
    /// Where to find the media service: http://host:port, several
    /// separated by commas, or a name resolving to several addresses.
    #[arg(
        id = "MEDIA_URL",
        long = "media-url",
        env = "MEDIA_URL",
        default_value = "http://127.0.0.1:50054"
    )]
    pub media_url: ServiceUrl,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_humantime() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn database_urls_pick_the_engine_and_hide_passwords() {
        let pg: DatabaseUrl = "postgres://parley:hunter2@db:5432/parley".parse().unwrap();
        assert_eq!(pg.kind(), DatabaseKind::Postgres);
        assert_eq!(pg.to_string(), "postgres://parley:***@db:5432/parley");
        assert!(!format!("{pg:?}").contains("hunter2"));

        let sqlite: DatabaseUrl = "sqlite://data/auth.db".parse().unwrap();
        assert_eq!(sqlite.kind(), DatabaseKind::Sqlite);
        assert_eq!(sqlite.sqlite_path(), Some("data/auth.db"));

        assert!("mysql://x".parse::<DatabaseUrl>().is_err());
    }

    #[test]
    fn service_urls_take_lists() {
        let url: ServiceUrl = "http://a:1, http://b.svc:50052/".parse().unwrap();
        assert_eq!(url.targets().len(), 2);
        assert_eq!(url.targets()[1].host, "b.svc");
        assert_eq!(url.targets()[1].port, 50052);
        assert_eq!(url.to_string(), "http://a:1,http://b.svc:50052");
        assert!("a:1".parse::<ServiceUrl>().is_err());
        assert!("http://a".parse::<ServiceUrl>().is_err());
        assert!("".parse::<ServiceUrl>().is_err());
        assert!(!url.is_tls());

        let secure: ServiceUrl = "https://chat-0.chat:50053,https://chat-1.chat:50053"
            .parse()
            .unwrap();
        assert!(secure.is_tls());
        assert_eq!(
            secure.to_string(),
            "https://chat-0.chat:50053,https://chat-1.chat:50053"
        );
        let mixed = "http://a:1,https://b:2".parse::<ServiceUrl>().unwrap_err();
        assert!(mixed.contains("mixes"), "{mixed}");
    }
}
