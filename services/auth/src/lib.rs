//! `parley-auth`: accounts, Argon2id passwords, Ed25519 JWT access tokens
//! and rotating refresh tokens.
//!
//! # Layout
//! - [`config`]: `AUTH_*` settings.
//! - [`keys`]: the signing keys and the published public keys.
//! - [`store`]: credentials and refresh-token families.
//! - [`grpc`]: the `parley.auth.v1.AuthService` handlers.
//! - [`error`]: failures and their gRPC statuses.
//!
//! Profiles belong to the user service: registration creates one there
//! (with a short-lived service token auth signs itself) before storing the
//! credential here, and removes it again if that fails.
#![warn(missing_docs)]

mod api_keys;
pub mod config;
pub mod error;
pub mod grpc;
pub mod keys;
pub mod revocations;
pub mod store;

use std::sync::Arc;

use anyhow::Context as _;
use parley_proto::{
    auth::v1::auth_service_server::AuthServiceServer,
    user::v1::user_service_client::UserServiceClient,
};
use parley_runtime::{
    CancellationToken,
    client::{self, ClientOptions},
    grpc::{MAX_MESSAGE_BYTES, ServerOptions, Services},
    health::Readiness,
    limits::KeyedLimit,
    serve::Listeners,
    storage::Database,
    tls::ServiceTls,
    token::TokenVerifier,
};

pub use config::{AuthArgs, Config};

/// The service name in logs, metrics and traces.
pub const SERVICE_NAME: &str = "auth";

/// The auth service's migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A built service, bound to its ports: call `run` to serve.
pub use parley_runtime::serve::Service as Application;

/// Binds the configured addresses and builds the service.
///
/// # Errors
/// Fails when an address cannot be bound, the keys are unusable or the
/// database is.
pub async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Application> {
    let listeners = Listeners::bind(
        config.auth.grpc_addr,
        "AUTH_GRPC_ADDR",
        config.auth.admin_addr,
        "AUTH_ADMIN_ADDR",
    )
    .await?;
    with_listeners(config, listeners, shutdown).await
}

/// Builds the service on listeners bound by the caller.
///
/// # Errors
/// Fails when the keys or the database are unusable.
pub async fn with_listeners(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<Application> {
    parley_runtime::metrics::install();
    parley_runtime::metrics::register_build_info(SERVICE_NAME);
    for counter in [
        "parley_auth_logins_total",
        "parley_auth_registrations_total",
        "parley_auth_refreshes_total",
    ] {
        metrics::counter!(counter, "result" => "success").increment(0);
    }
    let readiness = Readiness::new();

    let tls = ServiceTls::load(&config.auth.tls.files())?;
    let keys = Arc::new(keys::SigningKeys::load(&config.auth)?);
    let verifier = TokenVerifier::new();
    verifier.set_public_keys(&keys.public_keys());
    let users = UserServiceClient::new(client::connect(
        "user",
        &config.user_url,
        &ClientOptions {
            tls: tls.client.clone(),
            ..ClientOptions::default()
        },
    ));
    let database = Database::open(
        &config.auth.database_url,
        "auth",
        &MIGRATOR,
        &readiness,
        shutdown.clone(),
    )
    .await
    .context("opening the auth database")?;
    let store = store::AuthStore::new(database);
    let feed = revocations::Feed::new(store.clone(), verifier.revocations().clone());
    feed.spawn_reader(shutdown.clone());
    let service = grpc::AuthService::new(
        store,
        users,
        keys,
        verifier,
        grpc::TokenLifetimes {
            access: config.auth.access_token_ttl,
            refresh: config.auth.refresh_token_ttl,
            api_key: config.auth.api_key_token_ttl,
        },
        KeyedLimit::new(config.auth.login_attempts, config.auth.login_attempt_every),
        feed,
    );
    let services = Services::new().with(
        AuthServiceServer::new(service)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    );
    Ok(Application::new(
        SERVICE_NAME,
        listeners,
        services,
        readiness,
        ServerOptions {
            shutdown_grace: config.shutdown_grace,
            cors_origins: config.auth.cors_origins.clone(),
            tls: tls.server,
            ..ServerOptions::default()
        },
        shutdown,
    ))
}

/// Builds and runs the auth service until `shutdown` fires and it has
/// drained.
///
/// # Errors
/// Fails when it cannot start or a server fails.
pub async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    build(config, shutdown).await?.run().await
}
