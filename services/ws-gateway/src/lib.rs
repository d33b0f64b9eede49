//! `parley-gateway`: the WebSocket and REST edge of Parley, and the web
//! client.
//!
//! Browsers and apps connect here; the gateway verifies their tokens
//! locally, carries their sessions to chat over a few multiplexed gRPC
//! streams per replica, and fans each room event out to its local sockets.
//! It stores nothing: a restart loses no data, and clients reconnect with
//! `since_seq`.
//!
//! # Layout
//! - `config`: `GATEWAY_*` settings.
//! - `connection`: the upgrade and the task behind each WebSocket.
//! - `session`: what a connection shares with the stream carrying it (the
//!   `SessionHandle`, whose `forward` and `close_upstream` are the only way
//!   a connection reaches chat).
//! - `upstream`: the pool of streams to chat: replica following, reconnects
//!   and placement (`upstream/mod.rs`); each stream's session state machine,
//!   with rooms, cursors, unacknowledged sends and moves
//!   (`upstream/stream.rs`); the encoded-message cache
//!   (`upstream/encoded.rs`).
//! - `frames`: the JSON protocol and its protobuf twins.
//! - `rest`: the REST API; `error`: its error mapping.
//! - `web`: the embedded web client.
//! - `metrics`: the `parley_ws_*` and `parley_http_*` series, and the kind
//!   of every frame.
#![warn(missing_docs)]

mod api_keys;
mod attachments;
mod bots;
mod config;
mod connection;
mod error;
mod frames;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod metrics;
mod origins;
mod rest;
mod session;
mod upstream;
mod web;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use axum::{
    Router,
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
    routing::get,
    serve::ListenerExt as _,
};
use parley_proto::{
    auth::v1::auth_service_client::AuthServiceClient,
    chat::v1::chat_service_client::ChatServiceClient,
    media::v1::media_service_client::MediaServiceClient,
    user::v1::user_service_client::UserServiceClient,
};
use parley_runtime::{
    CancellationToken,
    client::{self, ClientChannel, ClientOptions},
    health::Readiness,
    tls::{ServerTls, ServiceTls},
    token::{self, TokenVerifier},
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::task::TaskTracker;

pub use config::{ClientAddressHeader, Config, GatewayArgs};

use crate::{connection::UserConnections, session::LiveSessions, upstream::Upstream};

/// Longest an upload through `POST /api/v1/attachments` may take: media
/// answers only after the last byte, so the usual call timeout would cut
/// every large upload.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The service name in logs, metrics and traces.
pub const SERVICE_NAME: &str = "gateway";

/// The gateway's two listening sockets.
#[derive(Debug)]
pub struct Listeners {
    /// WebSocket, REST and the web client.
    pub http: TcpListener,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds both configured addresses.
    ///
    /// # Errors
    /// Fails when an address cannot be bound, naming its variable.
    pub async fn bind(config: &GatewayArgs) -> anyhow::Result<Self> {
        Ok(Self {
            http: TcpListener::bind(config.http_addr).await.with_context(|| {
                format!("GATEWAY_HTTP_ADDR: cannot listen on {}", config.http_addr)
            })?,
            admin: TcpListener::bind(config.admin_addr)
                .await
                .with_context(|| {
                    format!("GATEWAY_ADMIN_ADDR: cannot listen on {}", config.admin_addr)
                })?,
        })
    }
}

/// Limits every connection follows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    max_frame_bytes: usize,
    send_queue: u32,
    max_connections_per_user: u32,
}

/// What every handler and connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    verifier: TokenVerifier,
    /// Tokens of the API keys clients present.
    keys: api_keys::KeyTokens,
    upstream: Upstream,
    auth: AuthServiceClient<ClientChannel>,
    user: UserServiceClient<ClientChannel>,
    chat: ChatServiceClient<ClientChannel>,
    /// Media, for metadata, downloads and deletes.
    media: MediaServiceClient<ClientChannel>,
    /// Media for uploads, whose answer comes only after the last byte.
    media_uploads: MediaServiceClient<ClientChannel>,
    limits: Limits,
    /// Other origins whose pages may open WebSockets.
    allowed_origins: parley_runtime::config::CorsOrigins,
    /// Sign-up, sign-in and refresh requests per client address.
    auth_attempts: parley_runtime::limits::KeyedLimit<std::net::IpAddr>,
    /// Where the client's address is read from, behind a proxy.
    client_address_header: Option<http::HeaderName>,
    per_user: Arc<UserConnections>,
    /// Fires when the drain starts.
    drain: CancellationToken,
    /// Every open connection, watched for token expiry and the drain.
    live: Arc<LiveSessions>,
    /// Open connections, awaited during the drain.
    tracker: TaskTracker,
    next_session: AtomicU64,
}

impl Shared {
    fn next_session(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }
}

/// The axum state.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    shared: Arc<Shared>,
}

/// A gateway built and bound, ready to run.
#[derive(Debug)]
pub struct Gateway {
    listeners: Listeners,
    /// HTTPS and WSS; `None` for plain HTTP.
    tls: Option<Arc<ServerTls>>,
    router: Router,
    readiness: Readiness,
    shared: Arc<Shared>,
    streams_stop: CancellationToken,
    shutdown: CancellationToken,
    grace: Duration,
    /// Sockets get their 1001 at a random point within this, so clients do
    /// not all reconnect at once (to the other gateways).
    drain_spread: Duration,
}

/// Binds the configured addresses and builds the gateway.
///
/// # Errors
/// Fails when an address cannot be bound or the settings disagree.
pub async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Gateway> {
    let listeners = Listeners::bind(&config.gateway).await?;
    with_listeners(config, listeners, shutdown)
}

/// Builds the gateway on listeners bound by the caller.
///
/// # Errors
/// Fails when the settings disagree.
pub fn with_listeners(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<Gateway> {
    parley_runtime::metrics::install();
    parley_runtime::metrics::register_build_info(SERVICE_NAME);
    metrics::register();
    let readiness = Readiness::new();
    let tls = ServiceTls::load(&config.gateway.tls.files())?;
    let verifier = token::verifier_for(&config.auth_url, &tls.client, &readiness, shutdown.clone());
    let options = ClientOptions {
        // A chat replica that died without closing its connections is
        // noticed within seconds, and its sessions move.
        keep_alive_every: Duration::from_secs(5),
        keep_alive_timeout: Duration::from_secs(5),
        tls: tls.client.clone(),
        ..ClientOptions::default()
    };
    let streams_stop = CancellationToken::new();
    let upstream = Upstream::start(
        config.chat_url.clone(),
        upstream::Settings {
            streams_per_replica: config.gateway.streams_per_replica as usize,
            max_rooms_per_connection: config.gateway.max_rooms_per_connection as usize,
            client: options.clone(),
            stream_secret: match &config.gateway.stream_secret {
                Some(secret) => {
                    Some(
                        secret
                            .parse()
                            .map_err(|_| parley_runtime::config::BadValue {
                                variable: "GATEWAY_STREAM_SECRET",
                                message: "must be printable ASCII".into(),
                            })?,
                    )
                }
                None => None,
            },
        },
        readiness.condition("chat"),
        streams_stop.clone(),
    );
    let auth = AuthServiceClient::new(client::connect("auth", &config.auth_url, &options));
    let shared = Arc::new(Shared {
        keys: api_keys::KeyTokens::new(auth.clone(), verifier.clone(), streams_stop.clone()),
        verifier,
        upstream,
        auth,
        user: UserServiceClient::new(client::connect("user", &config.user_url, &options)),
        chat: ChatServiceClient::new(client::connect("chat", &config.chat_url, &options)),
        media: MediaServiceClient::new(client::connect("media", &config.media_url, &options)),
        media_uploads: MediaServiceClient::new(client::connect(
            "media",
            &config.media_url,
            &ClientOptions {
                timeout: UPLOAD_TIMEOUT,
                // The other media channel's breaker speaks for the service.
                breaker: None,
                ..options.clone()
            },
        )),
        limits: Limits {
            max_frame_bytes: config.gateway.max_frame_bytes as usize,
            send_queue: config.gateway.send_queue,
            max_connections_per_user: config.gateway.max_connections_per_user,
        },
        allowed_origins: config.gateway.allowed_origins.clone(),
        auth_attempts: parley_runtime::limits::KeyedLimit::new(
            config.gateway.auth_attempts,
            config.gateway.auth_attempt_every,
        ),
        client_address_header: config.gateway.client_address_header.0.clone(),
        per_user: Arc::default(),
        drain: shutdown.clone(),
        live: Arc::default(),
        tracker: TaskTracker::new(),
        next_session: AtomicU64::new(1),
    });
    let router = router(AppState {
        shared: shared.clone(),
    });
    Ok(Gateway {
        listeners,
        tls: tls.server,
        router,
        readiness,
        shared,
        streams_stop,
        shutdown,
        grace: config.shutdown_grace,
        drain_spread: config.shutdown_grace.mul_f64(0.75),
    })
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(connection::upgrade))
        .merge(rest::router(state.clone()))
        .merge(attachments::router())
        .merge(bots::router())
        .merge(web::router())
        .route("/api/{*rest}", axum::routing::any(rest::not_found))
        .layer(axum::middleware::from_fn(observe))
        .with_state(state)
}

/// Counts and times every HTTP request by route template and status.
async fn observe(matched: Option<MatchedPath>, request: Request, next: Next) -> Response {
    let route = matched.map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    ::metrics::counter!("parley_http_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    ::metrics::histogram!("parley_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

impl Gateway {
    /// Closes every socket at once when draining, instead of spreading the
    /// closes: for a gateway no other gateway stands beside (the
    /// all-in-one), where spreading only makes the stop slow.
    #[must_use]
    pub fn close_at_once(self) -> Self {
        Self {
            drain_spread: Duration::ZERO,
            ..self
        }
    }

    /// The bound HTTP address.
    ///
    /// # Errors
    /// Fails when the socket has no local address.
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.listeners.http.local_addr()
    }

    /// The bound admin address.
    ///
    /// # Errors
    /// Fails when the socket has no local address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.listeners.admin.local_addr()
    }

    /// Serves until the shutdown token fires, then drains: readiness goes
    /// false, new upgrades are refused, open sockets get 1001 spread over
    /// the grace period, and the chat streams close last.
    ///
    /// # Errors
    /// Fails when a server fails.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            listeners,
            tls,
            router,
            readiness,
            shared,
            streams_stop,
            shutdown,
            grace,
            drain_spread,
        } = self;
        tracing::info!(
            service = SERVICE_NAME,
            http = %listeners.http.local_addr()?,
            admin = %listeners.admin.local_addr()?,
            "listening"
        );
        let admin = parley_runtime::admin::start(listeners.admin, &readiness, &shutdown);
        let keys = shared.keys.clone();
        let renew = move |handle: Arc<session::SessionHandle>, key: Arc<str>| {
            tokio::spawn(connection::renew(keys.clone(), handle, key));
        };
        let supervisor = tokio::spawn(shared.live.clone().supervise(
            shutdown.clone(),
            drain_spread,
            streams_stop.clone(),
            shared.verifier.revocations().subscribe(),
            renew,
        ));
        // The peer address reaches the handlers, for per-address limits.
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        let stopped = shutdown.clone().cancelled_owned();
        let served = match tls {
            None => {
                // Frames are small and latency matters: no Nagle delay.
                let http = listeners.http.tap_io(|tcp| {
                    if let Err(err) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
                    }
                });
                axum::serve(http, app).with_graceful_shutdown(stopped).await
            }
            Some(tls) => {
                let https = TlsListener {
                    local: listeners.http.local_addr()?,
                    accepted: tls.accept(listeners.http),
                };
                // The accept loop set TCP_NODELAY; the tap only lets the
                // peer address through as connect info.
                axum::serve(https.tap_io(|_| {}), app)
                    .with_graceful_shutdown(stopped)
                    .await
            }
        }
        .context("the HTTP server failed");
        // The server also returns when it fails: drain either way.
        shutdown.cancel();
        shared.tracker.close();
        let open = shared.tracker.len();
        if open > 0 {
            tracing::info!(
                connections = open,
                "closing WebSockets over the grace period"
            );
        }
        if tokio::time::timeout(grace + Duration::from_secs(2), shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = shared.tracker.len(),
                "grace period over; dropping the remaining WebSockets"
            );
        }
        streams_stop.cancel();
        let _ = supervisor.await;
        let admin_result = admin.finish().await;
        served?;
        admin_result?;
        tracing::info!(service = SERVICE_NAME, "stopped");
        Ok(())
    }
}

/// Connections whose TLS handshake is done, as axum takes them.
struct TlsListener {
    local: SocketAddr,
    accepted: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept loop ends only with this receiver: wait for the
            // shutdown that drops it.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Builds and runs the gateway until `shutdown` fires and it has drained.
///
/// # Errors
/// Fails when it cannot start or a server fails.
pub async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    build(config, shutdown).await?.run().await
}
