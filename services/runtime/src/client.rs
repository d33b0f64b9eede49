//! Channels to other Parley services.
//!
//! A `*_URL` may list several endpoints or name a host that resolves to
//! several addresses (a headless Service); every address found is a
//! balancing target, and names are re-resolved periodically so new replicas
//! get traffic. Every call is observed (the `grpc_client_*` metrics and
//! trace context) and bounded by a timeout; retries are for idempotent calls
//! only and are chosen at the call site with [`retry_idempotent`].

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use backon::{ExponentialBuilder, Retryable as _};
use futures_util::future::BoxFuture;
use tonic::{
    Code, Status,
    body::Body,
    codegen::StdError,
    transport::{Channel, Endpoint, channel::Change},
};
use tower_service::Service;

use crate::{config::ServiceUrl, grpc::Observe};

/// Timings of a client channel.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Longest wait for a call's response headers (for streams: for the
    /// stream to open).
    pub timeout: Duration,
    /// Longest wait for a TCP connection.
    pub connect_timeout: Duration,
    /// How often host names are resolved again.
    pub resolve_every: Duration,
    /// How often an HTTP/2 ping checks a connection that may have died
    /// without closing (a crashed node).
    pub keep_alive_every: Duration,
    /// How long a ping may go unanswered before the connection is dropped.
    pub keep_alive_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            resolve_every: Duration::from_secs(10),
            keep_alive_every: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(10),
        }
    }
}

/// A balanced, observed channel to one service, for its generated client:
/// `UserServiceClient::new(channel)`.
#[derive(Debug, Clone)]
pub struct ClientChannel {
    inner: Observe<Channel>,
    target: Arc<str>,
    timeout: Duration,
}

/// Opens a lazy channel to `url`; connections are made on first use, so a
/// service may start before the ones it calls. `target` names the service
/// in errors and logs.
pub fn connect(target: &'static str, url: &ServiceUrl, options: &ClientOptions) -> ClientChannel {
    let (channel, changes) = Channel::balance_channel::<SocketAddr>(64);
    tokio::spawn(resolve_forever(
        target,
        url.clone(),
        options.clone(),
        changes,
    ));
    ClientChannel {
        inner: Observe::client(channel),
        target: Arc::from(target),
        timeout: options.timeout,
    }
}

/// Opens a lazy, observed channel to one address, for callers that place
/// work on a particular replica themselves (the gateway's chat streams).
pub fn connect_one(
    target: &'static str,
    address: SocketAddr,
    options: &ClientOptions,
) -> Result<ClientChannel, tonic::transport::Error> {
    let channel = endpoint(address, options)?.connect_lazy();
    Ok(ClientChannel {
        inner: Observe::client(channel),
        target: Arc::from(target),
        timeout: options.timeout,
    })
}

/// Every address `url` names now. A target that does not resolve is left
/// out, with a warning.
pub async fn resolve(target: &'static str, url: &ServiceUrl) -> HashSet<SocketAddr> {
    let mut found = HashSet::new();
    for t in url.targets() {
        match tokio::net::lookup_host((t.host.as_str(), t.port)).await {
            Ok(addrs) => found.extend(addrs),
            Err(err) => {
                tracing::warn!(%target, host = %t.host, error = %err, "cannot resolve service address")
            }
        }
    }
    found
}

fn endpoint(
    address: SocketAddr,
    options: &ClientOptions,
) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(options.keep_alive_every)
        .keep_alive_timeout(options.keep_alive_timeout)
        .keep_alive_while_idle(true))
}

/// Keeps the balancer's endpoint set equal to what `url` resolves to. Ends
/// when the channel is dropped.
async fn resolve_forever(
    target: &'static str,
    url: ServiceUrl,
    options: ClientOptions,
    changes: tokio::sync::mpsc::Sender<Change<SocketAddr, Endpoint>>,
) {
    let mut known: HashSet<SocketAddr> = HashSet::new();
    let mut every = tokio::time::interval(options.resolve_every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let found = resolve(target, &url).await;
        // A failed lookup keeps the last known addresses rather than
        // leaving the service with none.
        if found.is_empty() {
            continue;
        }
        for gone in known.difference(&found) {
            if changes.send(Change::Remove(*gone)).await.is_err() {
                return;
            }
        }
        for new in found.difference(&known) {
            let endpoint = match endpoint(*new, &options) {
                Ok(endpoint) => endpoint,
                Err(err) => {
                    tracing::warn!(%target, address = %new, error = %err, "unusable service address");
                    continue;
                }
            };
            if changes.send(Change::Insert(*new, endpoint)).await.is_err() {
                return;
            }
            tracing::debug!(%target, address = %new, "balancing over a new address");
        }
        known = found;
    }
}

impl Service<http::Request<Body>> for ClientChannel {
    type Response = http::Response<Body>;
    type Error = StdError;
    type Future = BoxFuture<'static, Result<http::Response<Body>, StdError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let target = self.target.clone();
        self.inner
            .poll_ready(cx)
            .map_err(move |err| unavailable(&target, err.into()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let response = self.inner.call(request);
        let target = self.target.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, response).await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(err)) => Err(unavailable(&target, err.into())),
                Err(_) => Err(Box::new(Status::deadline_exceeded(format!(
                    "{target} did not answer within {timeout:?}"
                ))) as StdError),
            }
        })
    }
}

/// Transport failures become UNAVAILABLE naming the service, so callers can
/// classify them by code.
fn unavailable(target: &str, err: StdError) -> StdError {
    match err.downcast::<Status>() {
        Ok(status) => status,
        Err(err) => Box::new(Status::unavailable(format!(
            "{target} is unavailable: {err}"
        ))),
    }
}

/// Runs an idempotent call, retrying UNAVAILABLE and DEADLINE_EXCEEDED with
/// exponential backoff and jitter (at most 3 retries). Never use it for a
/// call that must not happen twice.
///
/// # Errors
/// The last attempt's status.
pub async fn retry_idempotent<T, F, Fut>(call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    call.retry(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(1))
            .with_max_times(3)
            .with_jitter(),
    )
    .when(|status: &Status| matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded))
    .await
}
