//! Serving gRPC: every service goes through [`serve`], which adds health,
//! reflection, gRPC-Web (with CORS), metrics, tracing, limits and a bounded
//! graceful shutdown.

pub mod methods;
pub(crate) mod observe;
pub mod status;

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::{
    server::NamedService,
    service::RoutesBuilder,
    transport::{Server, server::TcpIncoming},
};

use crate::{config::CorsOrigins, health::Readiness, telemetry, tls::ServerTls};

pub use observe::Observe;

/// Largest request or response message a service accepts or sends. Set on
/// each generated server with `max_decoding_message_size` and
/// `max_encoding_message_size`.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Limits and timings of a gRPC server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Drain time on shutdown before open calls are cut.
    pub shutdown_grace: Duration,
    /// Age after which a connection is asked to go away (GOAWAY), so clients
    /// reconnect and spread over new replicas. Open streams are not cut.
    pub max_connection_age: Duration,
    /// Calls served at once on one connection; more wait.
    pub concurrency_per_connection: usize,
    /// Browser origins allowed to call with gRPC-Web (`<SVC>_CORS_ORIGINS`).
    pub cors_origins: CorsOrigins,
    /// TLS (and mTLS) on the gRPC port; `None` serves plaintext.
    pub tls: Option<Arc<ServerTls>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(20),
            max_connection_age: Duration::from_secs(300),
            concurrency_per_connection: 256,
            cors_origins: CorsOrigins::None,
            tls: None,
        }
    }
}

/// The gRPC services one server exposes, with their names for health and
/// reflection.
#[derive(Debug, Default)]
pub struct Services {
    routes: RoutesBuilder,
    names: Vec<&'static str>,
}

impl Services {
    /// No services yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a generated tonic server (wrapped in its interceptor, if any).
    pub fn with<S>(mut self, service: S) -> Self
    where
        S: tower_service::Service<
                http::Request<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(service);
        self
    }
}

/// Serves `services` on `listener` until `shutdown` fires, then drains.
///
/// Each service's health entry follows `readiness`. On shutdown: every
/// health entry turns NOT_SERVING, the listener stops accepting, open
/// response streams end with UNAVAILABLE once idle, and whatever is still
/// running after `shutdown_grace` is cut.
///
/// # Errors
/// Fails when reflection cannot be built or the server fails while serving.
pub async fn serve(
    listener: TcpListener,
    services: Services,
    readiness: Readiness,
    options: ServerOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Services { mut routes, names } = services;

    let (reporter, health_service) = tonic_health::server::health_reporter();
    // Every entry exists before the first connection is accepted, so a
    // probe never sees a service it does not know.
    for name in &names {
        reporter
            .set_service_status(*name, tonic_health::ServingStatus::NotServing)
            .await;
    }
    let reporting = tokio::spawn(crate::health::report(
        reporter,
        names.clone(),
        readiness,
        shutdown.clone(),
    ));

    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(parley_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // The `google.rpc` error details (`BadRequest`...) errors carry,
            // so grpcurl prints them instead of base64.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for name in &names {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("building the v1 reflection service")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building the v1alpha reflection service")?;
    routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let stop_accepting = CancellationToken::new();
    let cut_streams = CancellationToken::new();
    let router = Server::builder()
        // gRPC-Web arrives over HTTP/1.1 as well as HTTP/2 (README,
        // "gRPC-Web"); native gRPC is unaffected.
        .accept_http1(true)
        .max_connection_age(options.max_connection_age)
        .concurrency_limit_per_connection(options.concurrency_per_connection)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .trace_fn(|request| {
            let info = methods::lookup(request.uri().path());
            let span = tracing::info_span!(
                "grpc.server",
                otel.kind = "server",
                rpc.service = info.service,
                rpc.method = info.method
            );
            telemetry::extract_context(request.headers(), &span);
            span
        })
        .layer(tower::util::option_layer(cors_layer(&options.cors_origins)))
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(observe::ServerLayer {
            drain: cut_streams.clone(),
        })
        .add_routes(routes.routes());
    let stopped = stop_accepting.clone().cancelled_owned();
    // Plaintext or TLS, the same server behind two kinds of connection.
    let mut server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match options.tls {
            None => {
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
            }
            Some(tls) => {
                let accepted = tls.accept(listener);
                let incoming = tokio_stream::wrappers::ReceiverStream::new(accepted)
                    .map(|(stream, _)| Ok::<_, std::io::Error>(stream));
                Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
            }
        };

    tokio::select! {
        result = &mut server => return result.context("gRPC server failed"),
        () = shutdown.cancelled() => {}
    }
    // NOT_SERVING goes out first, so load balancers stop sending new calls
    // before the listener closes.
    if let Err(err) = reporting.await {
        tracing::warn!(error = %err, "health reporting ended abnormally");
    }
    stop_accepting.cancel();
    cut_streams.cancel();
    match tokio::time::timeout(options.shutdown_grace, server).await {
        Ok(result) => result.context("gRPC server failed while draining"),
        Err(_) => {
            tracing::warn!(grace = ?options.shutdown_grace, "calls still open after the shutdown grace; cutting them");
            Ok(())
        }
    }
}

/// The CORS answer for gRPC-Web callers from other origins; `None` when no
/// origin is allowed, so no CORS header is ever sent.
fn cors_layer(origins: &CorsOrigins) -> Option<tower_http::cors::CorsLayer> {
    use http::{HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};

    let allow = match origins {
        CorsOrigins::None => return None,
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(
            list.iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        ),
    };
    let headers = |names: &[&'static str]| -> Vec<HeaderName> {
        names.iter().map(|n| HeaderName::from_static(n)).collect()
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::POST, Method::OPTIONS])
            .allow_headers(headers(&[
                "authorization",
                "content-type",
                "grpc-timeout",
                "traceparent",
                "x-grpc-web",
                "x-user-agent",
            ]))
            .expose_headers(headers(&[
                "grpc-status",
                "grpc-message",
                "grpc-status-details-bin",
            ]))
            .max_age(Duration::from_secs(3600)),
    )
}
