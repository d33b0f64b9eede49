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

    let verifier = token::verifier_for(&config.auth_url, &readiness, shutdown.clone());

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
        &parley_runtime::client::ClientOptions::default(),
    ));
    let service = grpc::UserService::new(
        store::UserStore::new(database),
        config.admin_usernames(),
        auth,
    );
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
