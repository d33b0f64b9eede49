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

mod config;
mod connection;
mod error;
mod frames;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod metrics;
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
    user::v1::user_service_client::UserServiceClient,
};
use parley_runtime::{
    CancellationToken,
    client::{self, ClientChannel, ClientOptions},
    health::Readiness,
    token::{self, TokenVerifier},
};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use config::{Config, GatewayArgs};

use crate::{connection::UserConnections, session::LiveSessions, upstream::Upstream};

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
    upstream: Upstream,
    auth: AuthServiceClient<ClientChannel>,
    user: UserServiceClient<ClientChannel>,
    chat: ChatServiceClient<ClientChannel>,
    limits: Limits,
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
    let verifier = token::verifier_for(&config.auth_url, &readiness, shutdown.clone());
    let options = ClientOptions {
        // A chat replica that died without closing its connections is
        // noticed within seconds, and its sessions move.
        keep_alive_every: Duration::from_secs(5),
        keep_alive_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    let streams_stop = CancellationToken::new();
    let upstream = Upstream::start(
        config.chat_url.clone(),
        upstream::Settings {
            streams_per_replica: config.gateway.streams_per_replica as usize,
            max_rooms_per_connection: config.gateway.max_rooms_per_connection as usize,
            client: options.clone(),
        },
        readiness.condition("chat"),
        streams_stop.clone(),
    );
    let shared = Arc::new(Shared {
        verifier,
        upstream,
        auth: AuthServiceClient::new(client::connect("auth", &config.auth_url, &options)),
        user: UserServiceClient::new(client::connect("user", &config.user_url, &options)),
        chat: ChatServiceClient::new(client::connect("chat", &config.chat_url, &options)),
        limits: Limits {
            max_frame_bytes: config.gateway.max_frame_bytes as usize,
            send_queue: config.gateway.send_queue,
            max_connections_per_user: config.gateway.max_connections_per_user,
        },
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
        .merge(rest::router())
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
        let supervisor = tokio::spawn(shared.live.clone().supervise(
            shutdown.clone(),
            drain_spread,
            streams_stop.clone(),
        ));
        // Frames are small and latency matters: no Nagle delay on sockets.
        let http = listeners.http.tap_io(|tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!(error = %err, "cannot set TCP_NODELAY");
            }
        });
        let served = axum::serve(http, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await
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

/// Builds and runs the gateway until `shutdown` fires and it has drained.
///
/// # Errors
/// Fails when it cannot start or a server fails.
pub async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    build(config, shutdown).await?.run().await
}
