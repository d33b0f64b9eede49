//! The user service's settings.

use std::{net::SocketAddr, time::Duration};

use clap::Args;
use parley_runtime::config::{CorsOrigins, DatabaseUrl, ServiceUrl, UserTls};

/// Settings read from `USER_*` variables.
#[derive(Debug, Clone, Args)]
pub struct UserArgs {
    /// gRPC API listen address.
    #[arg(
        id = "USER_GRPC_ADDR",
        long = "user-grpc-addr",
        env = "USER_GRPC_ADDR",
        default_value = "0.0.0.0:50052"
    )]
    pub grpc_addr: SocketAddr,

    /// Admin listen address: /metrics, /healthz, /readyz.
    #[arg(
        id = "USER_ADMIN_ADDR",
        long = "user-admin-addr",
        env = "USER_ADMIN_ADDR",
        default_value = "0.0.0.0:9092"
    )]
    pub admin_addr: SocketAddr,

    /// `postgres://...` (tables in schema `users`) or `sqlite://path`.
    #[arg(
        id = "USER_DATABASE_URL",
        long = "user-database-url",
        env = "USER_DATABASE_URL",
        default_value = "sqlite://data/user.db",
        hide_env_values = true
    )]
    pub database_url: DatabaseUrl,

    /// Browser origins that may call with gRPC-Web: comma-separated, or
    /// `*`; empty sends no CORS headers.
    #[arg(
        id = "USER_CORS_ORIGINS",
        long = "user-cors-origins",
        env = "USER_CORS_ORIGINS",
        default_value = ""
    )]
    pub cors_origins: CorsOrigins,

    /// TLS on the gRPC port and for calls to `https://` services.
    #[command(flatten)]
    pub tls: UserTls,
}

/// Everything the user service needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Its own settings.
    pub user: UserArgs,
    /// Where auth is, for public keys.
    pub auth_url: ServiceUrl,
    /// Drain time on shutdown.
    pub shutdown_grace: Duration,
}
