//! The user service's settings.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use clap::Args;
use parley_runtime::config::{DatabaseUrl, ServiceUrl};

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

    /// Usernames that get the `admin` role when created, comma-separated.
    #[arg(
        id = "USER_ADMIN_USERNAMES",
        long = "user-admin-usernames",
        env = "USER_ADMIN_USERNAMES",
        default_value = "",
        value_delimiter = ','
    )]
    pub admin_usernames: Vec<String>,
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

impl Config {
    /// The configured admin usernames, lower-cased.
    pub fn admin_usernames(&self) -> BTreeSet<String> {
        self.user
            .admin_usernames
            .iter()
            .map(|name| name.trim().to_lowercase())
            .filter(|name| !name.is_empty())
            .collect()
    }
}
