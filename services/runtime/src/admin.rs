//! The admin HTTP server every service runs beside its API: `/metrics`,
//! `/healthz` (the process is alive) and `/readyz` (it should get traffic).
//! It is separate from the API port so probes and scrapes never queue
//! behind user traffic.

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::Readiness;

/// The admin routes, reporting `readiness`.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(readiness)
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
}

async fn ready(State(readiness): State<Readiness>) -> impl IntoResponse {
    if readiness.is_ready() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        let unmet = readiness.unmet();
        let reason = if unmet.is_empty() {
            "not ready\n".to_owned()
        } else {
            format!("not ready: waiting for {}\n", unmet.join(", "))
        };
        (StatusCode::SERVICE_UNAVAILABLE, reason)
    }
}

/// Serves the admin routes on `listener` until `shutdown` fires. Admin
/// requests are short, so it stops right away rather than draining.
///
/// # Errors
/// Fails when the server fails.
pub async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(readiness))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// The admin server of a running service, and the `draining` readiness
/// condition that turns false when the shutdown starts.
#[derive(Debug)]
pub struct Running {
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    drain_flag: tokio::task::JoinHandle<()>,
}

/// Starts the admin server on `listener` and marks `readiness` not ready
/// as soon as `shutdown` fires, so probes see the drain before the API
/// port closes.
pub fn start(
    listener: TcpListener,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> Running {
    let not_draining = readiness.condition("draining");
    not_draining.set(true);
    let server = tokio::spawn(serve(listener, readiness.clone(), shutdown.clone()));
    let drain_flag = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            not_draining.set(false);
        })
    };
    Running { server, drain_flag }
}

impl Running {
    /// Waits for the admin server to stop (the shutdown must have fired).
    ///
    /// # Errors
    /// Fails when the admin server failed.
    pub async fn finish(self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        self.drain_flag.abort();
        self.server
            .await
            .context("admin server task failed")?
            .context("admin server failed")
    }
}
