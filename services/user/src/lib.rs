//! `parley-user`: user profiles, with unary, server-streaming,
//! client-streaming and bidirectional RPCs.
//!
//! # Layout
//! - [`config`]: `USER_*` settings.
//! - [`domain`]: users and their validation.
//! - [`store`]: the `user_profile` table.
//! - [`grpc`]: the `parley.user.v1.UserService` handlers.
//! - [`error`]: failures and their gRPC statuses.
//!
//! Every call needs an access token, verified locally with auth's public
//! keys; the service is not ready until it holds them and its database is
//! migrated.
#![warn(missing_docs)]

pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod store;

use anyhow::Context as _;
use parley_proto::{
    auth::v1::auth_service_client::AuthServiceClient,
    user::v1::user_service_server::UserServiceServer,
};
use parley_runtime::{
    CancellationToken,
    config::DatabaseUrl,
    grpc::{MAX_MESSAGE_BYTES, ServerOptions, Services},
    health::Readiness,
    serve::Listeners,
    storage::Database,
    token,
};

pub use config::{Config, UserArgs};

/// The service name in logs, metrics and traces.
pub const SERVICE_NAME: &str = "user";

/// The user service's migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// One-off tasks on the user database, run by `parley-user` and by the
/// all-in-one `parley` instead of serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminCommand {
    /// Gives USERNAME the admin role: how the first admin is made.
    GrantAdmin {
        /// The user's sign-in name.
        username: String,
    },
    /// Takes the admin role away from USERNAME.
    RevokeAdmin {
        /// The user's sign-in name.
        username: String,
    },
}

impl AdminCommand {
    /// Runs the task on `database_url`, printing the user's roles after
    /// it; `program` names the binary in errors.
    pub fn run(self, program: &str, database_url: &DatabaseUrl) -> std::process::ExitCode {
        let (username, admin) = match self {
            Self::GrantAdmin { username } => (username, true),
            Self::RevokeAdmin { username } => (username, false),
        };
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                eprintln!("{program}: cannot start the async runtime: {err}");
                return std::process::ExitCode::FAILURE;
            }
        };
        match runtime.block_on(set_admin(database_url, &username, admin)) {
            Ok(roles) => {
                println!("{username}: roles {}", roles.join(", "));
                std::process::ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{program}: {err:#}");
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// Grants (`admin: true`) or takes away the `admin` role of `username`,
/// straight in the database: how the first admin is made, by whoever runs
/// `parley-user grant-admin` where the service runs (README, "Accounts").
/// The change reaches the user's tokens when they are next issued.
///
/// # Errors
/// An unknown user, or a database that cannot be reached or used.
pub async fn set_admin(
    database_url: &DatabaseUrl,
    username: &str,
    admin: bool,
) -> anyhow::Result<Vec<String>> {
    let shutdown = CancellationToken::new();
    let database = Database::open(
        database_url,
        "users",
        &MIGRATOR,
        &Readiness::new(),
        shutdown.clone(),
    )
    .await
    .context("opening the user database")?;
    let store = store::UserStore::new(database);
    let result = async {
        let mut user = store
            .get_by_username(username)
            .await
            .map_err(|err| anyhow::anyhow!("{err}"))?;
        user.roles
            .retain(|role| role != parley_runtime::token::ADMIN_ROLE);
        if admin {
            user.roles
                .push(parley_runtime::token::ADMIN_ROLE.to_owned());
            user.roles.sort();
        }
        let user = store
            .update(user)
            .await
            .map_err(|err| anyhow::anyhow!("{err}"))?;
        Ok(user.roles)
    }
    .await;
    shutdown.cancel();
    result
}

/// A built service, bound to its ports: call `run` to serve.
pub use parley_runtime::serve::Service as Application;

/// Binds the configured addresses and builds the service.
///
/// # Errors
/// Fails when an address cannot be bound or the database is unusable.
pub async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Application> {
    let listeners = Listeners::bind(
        config.user.grpc_addr,
        "USER_GRPC_ADDR",
        config.user.admin_addr,
        "USER_ADMIN_ADDR",
    )
    .await?;
    with_listeners(config, listeners, shutdown).await
}

/// Builds the service on listeners bound by the caller (tests bind port
/// 0 first, to wire services to each other).
///
/// # Errors
/// Fails when the database is unusable.
pub async fn with_listeners(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<Application> {
    parley_runtime::metrics::install();
    parley_runtime::metrics::register_build_info(SERVICE_NAME);
    let readiness = Readiness::new();

    let tls = parley_runtime::tls::ServiceTls::load(&config.user.tls.files())?;
    let verifier = token::verifier_for(&config.auth_url, &tls.client, &readiness, shutdown.clone());

    let database = Database::open(
        &config.user.database_url,
        "users",
        &MIGRATOR,
        &readiness,
        shutdown.clone(),
    )
    .await
    .context("opening the user database")?;
    let auth = AuthServiceClient::new(parley_runtime::client::connect(
        "auth",
        &config.auth_url,
        &parley_runtime::client::ClientOptions {
            tls: tls.client.clone(),
            ..parley_runtime::client::ClientOptions::default()
        },
    ));
    let store = store::UserStore::new(database);
    tokio::spawn(search_indexes(store.clone(), shutdown.clone()));
    let service = grpc::UserService::new(store, auth);
    let server = UserServiceServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let services = Services::new().with(tonic::service::interceptor::InterceptedService::new(
        server,
        verifier.interceptor(),
    ));

    Ok(Application::new(
        SERVICE_NAME,
        listeners,
        services,
        readiness,
        ServerOptions {
            shutdown_grace: config.shutdown_grace,
            cors_origins: config.user.cors_origins.clone(),
            tls: tls.server,
            ..ServerOptions::default()
        },
        shutdown,
    ))
}

/// Builds and runs the user service until `shutdown` fires and it has
/// drained.
///
/// # Errors
/// Fails when it cannot start or a server fails.
pub async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    build(config, shutdown).await?.run().await
}

/// Makes the search indexes once the database is migrated: retried while
/// it is not reachable yet (the service serves meanwhile, searching by
/// scanning).
async fn search_indexes(store: store::UserStore, shutdown: CancellationToken) {
    let mut delay = std::time::Duration::from_millis(500);
    loop {
        match store.ensure_search_indexes().await {
            Ok(()) => return,
            Err(err) => tracing::debug!(error = %err, "search indexes not made yet; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(30));
    }
}
