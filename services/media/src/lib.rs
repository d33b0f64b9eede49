//! `parley-media`: the attachments that messages carry (README, "Media"),
//! stored whole in one call, from a client stream, or through a resumable
//! bidirectional transfer; read back in byte ranges; images measured and
//! thumbnailed.
//!
//! # Layout
//! - [`config`]: `MEDIA_*` settings.
//! - `domain`: attachments and the checked values requests become.
//! - [`ingest`]: what an upload learns from its bytes as they pass.
//! - [`images`]: bounded decoding, dimensions and thumbnails.
//! - `blobs`: the object store (a folder or S3).
//! - `store`: the `attachment`, `upload` and `upload_part` tables.
//! - `media`: the service's work, apart from the wire.
//! - `grpc`: the `parley.media.v1.MediaService` handlers.
//! - [`error`]: failures and their gRPC statuses.
//!
//! Every call needs an access token, verified locally with auth's public
//! keys; the service is not ready until it holds them and its database is
//! migrated.
#![warn(missing_docs)]

mod blobs;
pub mod config;
mod domain;
pub mod error;
mod grpc;
pub mod images;
pub mod ingest;
mod media;
mod store;

use std::time::Duration;

use anyhow::Context as _;
use parley_proto::media::v1::media_service_server::MediaServiceServer;
use parley_runtime::{
    CancellationToken,
    grpc::{MAX_MESSAGE_BYTES, ServerOptions, Services},
    health::Readiness,
    serve::Listeners,
    storage::Database,
    token,
};

pub use config::{Config, MediaArgs};

/// The service name in logs, metrics and traces.
pub const SERVICE_NAME: &str = "media";

/// The media service's migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A built service, bound to its ports: call `run` to serve.
pub use parley_runtime::serve::Service as Application;

/// Binds the configured addresses and builds the service.
///
/// # Errors
/// Fails when an address cannot be bound, the store or the database is
/// unusable.
pub async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Application> {
    let listeners = Listeners::bind(
        config.media.grpc_addr,
        "MEDIA_GRPC_ADDR",
        config.media.admin_addr,
        "MEDIA_ADMIN_ADDR",
    )
    .await?;
    with_listeners(config, listeners, shutdown).await
}

/// Builds the service on listeners bound by the caller (tests bind port
/// 0 first, to wire services to each other).
///
/// # Errors
/// Fails when the store or the database is unusable.
pub async fn with_listeners(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<Application> {
    parley_runtime::metrics::install();
    parley_runtime::metrics::register_build_info(SERVICE_NAME);
    let readiness = Readiness::new();

    let tls = parley_runtime::tls::ServiceTls::load(&config.media.tls.files())?;
    let verifier = token::verifier_for(&config.auth_url, &tls.client, &readiness, shutdown.clone());
    let blobs = blobs::Blobs::open(&config.media)?;
    let database = Database::open(
        &config.media.database_url,
        "media",
        &MIGRATOR,
        &readiness,
        shutdown.clone(),
    )
    .await
    .context("opening the media database")?;
    let limits = media::Limits {
        max_bytes: config.media.max_bytes,
        quota_bytes: config.media.user_quota_bytes,
        upload_ttl: config.media.upload_ttl,
    };
    let media = media::Media::new(store::MediaStore::new(database), blobs, limits);
    // Often enough that an upload outlives its TTL by little.
    let sweep_every =
        (limits.upload_ttl / 4).clamp(Duration::from_millis(200), Duration::from_secs(60));
    tokio::spawn(media.clone().expire_uploads(sweep_every, shutdown.clone()));

    let server = MediaServiceServer::new(grpc::MediaService::new(media))
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
            cors_origins: config.media.cors_origins.clone(),
            tls: tls.server,
            ..ServerOptions::default()
        },
        shutdown,
    ))
}

/// Builds and runs the media service until `shutdown` fires and it has
/// drained.
///
/// # Errors
/// Fails when it cannot start or a server fails.
pub async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    build(config, shutdown).await?.run().await
}
