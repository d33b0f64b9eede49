//! The auth service's settings.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;
use parley_runtime::config::{AuthTls, CorsOrigins, DatabaseUrl, ServiceUrl, parse_duration};
use secrecy::SecretString;

/// Where the signing key is kept when none is configured.
pub const DEFAULT_KEY_FILE: &str = "data/jwt-ed25519.pem";

/// Settings read from `AUTH_*` variables.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// gRPC API listen address.
    #[arg(
        id = "AUTH_GRPC_ADDR",
        long = "auth-grpc-addr",
        env = "AUTH_GRPC_ADDR",
        default_value = "0.0.0.0:50051"
    )]
    pub grpc_addr: SocketAddr,

    /// Admin listen address: /metrics, /healthz, /readyz.
    #[arg(
        id = "AUTH_ADMIN_ADDR",
        long = "auth-admin-addr",
        env = "AUTH_ADMIN_ADDR",
        default_value = "0.0.0.0:9091"
    )]
    pub admin_addr: SocketAddr,

    /// `postgres://...` (tables in schema `auth`) or `sqlite://path`.
    #[arg(
        id = "AUTH_DATABASE_URL",
        long = "auth-database-url",
        env = "AUTH_DATABASE_URL",
        default_value = "sqlite://data/auth.db",
        hide_env_values = true
    )]
    pub database_url: DatabaseUrl,

    /// Ed25519 signing key(s), PKCS#8 PEM. The first signs; any further
    /// keys are still published for verification, so tokens signed before a
    /// rotation stay valid. Default: generated once into
    /// data/jwt-ed25519.pem.
    #[arg(
        id = "AUTH_JWT_PRIVATE_KEY",
        long = "auth-jwt-private-key",
        env = "AUTH_JWT_PRIVATE_KEY",
        hide_env_values = true
    )]
    pub jwt_private_key: Option<SecretString>,

    /// File holding the signing key(s), as for AUTH_JWT_PRIVATE_KEY.
    #[arg(
        id = "AUTH_JWT_PRIVATE_KEY_FILE",
        long = "auth-jwt-private-key-file",
        env = "AUTH_JWT_PRIVATE_KEY_FILE"
    )]
    pub jwt_private_key_file: Option<PathBuf>,

    /// Lifetime of access tokens.
    #[arg(id = "AUTH_ACCESS_TOKEN_TTL", long = "auth-access-token-ttl", env = "AUTH_ACCESS_TOKEN_TTL", default_value = "15m", value_parser = parse_duration)]
    pub access_token_ttl: Duration,

    /// Lifetime of refresh tokens.
    #[arg(id = "AUTH_REFRESH_TOKEN_TTL", long = "auth-refresh-token-ttl", env = "AUTH_REFRESH_TOKEN_TTL", default_value = "30d", value_parser = parse_duration)]
    pub refresh_token_ttl: Duration,

    /// Lifetime of the access tokens API keys are exchanged for: how long
    /// such a token outlives its key's revocation at most where the
    /// revocation has not arrived.
    #[arg(id = "AUTH_API_KEY_TOKEN_TTL", long = "auth-api-key-token-ttl", env = "AUTH_API_KEY_TOKEN_TTL", default_value = "5m", value_parser = parse_duration)]
    pub api_key_token_ttl: Duration,

    /// Sign-in attempts one username may make at once; then one more per
    /// `AUTH_LOGIN_ATTEMPT_EVERY` (password guessing, README "Behaviour").
    #[arg(
        id = "AUTH_LOGIN_ATTEMPTS",
        long = "auth-login-attempts",
        env = "AUTH_LOGIN_ATTEMPTS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub login_attempts: u32,

    /// How often a username gets one more sign-in attempt back.
    #[arg(
        id = "AUTH_LOGIN_ATTEMPT_EVERY",
        long = "auth-login-attempt-every",
        env = "AUTH_LOGIN_ATTEMPT_EVERY",
        default_value = "30s",
        value_parser = parse_duration
    )]
    pub login_attempt_every: Duration,

    /// Browser origins that may call with gRPC-Web: comma-separated, or
    /// `*`; empty sends no CORS headers.
    #[arg(
        id = "AUTH_CORS_ORIGINS",
        long = "auth-cors-origins",
        env = "AUTH_CORS_ORIGINS",
        default_value = ""
    )]
    pub cors_origins: CorsOrigins,

    /// TLS on the gRPC port and for calls to `https://` services.
    #[command(flatten)]
    pub tls: AuthTls,
}

/// Everything the auth service needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Its own settings.
    pub auth: AuthArgs,
    /// Where the user service is.
    pub user_url: ServiceUrl,
    /// Drain time on shutdown.
    pub shutdown_grace: Duration,
}
