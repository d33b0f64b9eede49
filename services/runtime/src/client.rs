//! Channels to other Parley services.
//!
//! A `*_URL` may list several endpoints or name a host that resolves to
//! several addresses (a headless Service); every address found is a
//! balancing target, and names are re-resolved periodically so new replicas
//! get traffic. Every call is observed (the `grpc_client_*` metrics and
//! trace context) and bounded by a timeout; retries are for idempotent calls
//! only and are chosen at the call site with [`retry_idempotent`].

use std::{
    collections::HashMap,
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

use crate::{
    circuit::{Breaker, BreakerSettings, is_failure},
    config::ServiceUrl,
    grpc::Observe,
    tls::ClientTls,
};

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
    /// The circuit breaker of a balanced channel (see [`crate::circuit`]);
    /// `None` for none.
    pub breaker: Option<BreakerSettings>,
    /// What `https://` calls trust and present (README, "TLS"); unused for
    /// `http://` URLs.
    pub tls: ClientTls,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            resolve_every: Duration::from_secs(10),
            keep_alive_every: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(10),
            breaker: Some(BreakerSettings::default()),
            tls: ClientTls::default(),
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
    breaker: Option<Breaker>,
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
        breaker: options
            .breaker
            .map(|settings| Breaker::new(target, settings)),
    }
}

/// Opens a lazy, observed channel to one address, for callers that place
/// work on a particular replica themselves (the gateway's chat streams).
/// `host` is the name the address was found under, which a TLS certificate
/// must carry; `tls` whether the URL said `https://`. The TLS files are
/// read as they are now: callers make a new channel to reconnect.
pub fn connect_one(
    target: &'static str,
    address: SocketAddr,
    host: &str,
    tls: bool,
    options: &ClientOptions,
) -> Result<ClientChannel, tonic::transport::Error> {
    let channel = endpoint(address, host, tls, options)?.connect_lazy();
    // No breaker: its caller watches the one address itself and moves its
    // work elsewhere when it fails.
    Ok(ClientChannel {
        inner: Observe::client(channel),
        target: Arc::from(target),
        timeout: options.timeout,
        breaker: None,
    })
}

/// Every address `url` names now, with the host name it was found under.
/// A target that does not resolve is left out, with a warning.
pub async fn resolve(target: &'static str, url: &ServiceUrl) -> HashMap<SocketAddr, Arc<str>> {
    let mut found = HashMap::new();
    for t in url.targets() {
        match tokio::net::lookup_host((t.host.as_str(), t.port)).await {
            Ok(addrs) => {
                let host: Arc<str> = Arc::from(t.host.as_str());
                found.extend(addrs.map(|addr| (addr, host.clone())));
            }
            Err(err) => {
                tracing::warn!(%target, host = %t.host, error = %err, "cannot resolve service address")
            }
        }
    }
    found
}

fn endpoint(
    address: SocketAddr,
    host: &str,
    tls: bool,
    options: &ClientOptions,
) -> Result<Endpoint, tonic::transport::Error> {
    let scheme = if tls { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))?;
    if tls {
        // The certificate names the host, not the address it resolved to.
        endpoint = endpoint.tls_config(options.tls.config(host).0)?;
    }
    Ok(endpoint
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
    let mut known: HashMap<SocketAddr, Arc<str>> = HashMap::new();
    let mut generation = options.tls.generation();
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
        // Rotated TLS files: every endpoint is made again with them. Calls
        // open on the old connections finish there.
        if url.is_tls() && options.tls.generation() != generation {
            generation = options.tls.generation();
            tracing::info!(%target, "TLS files changed; reconnecting with them");
            known.clear();
        }
        for gone in known.keys().filter(|address| !found.contains_key(address)) {
            if changes.send(Change::Remove(*gone)).await.is_err() {
                return;
            }
        }
        for (new, host) in found
            .iter()
            .filter(|(address, _)| !known.contains_key(address))
        {
            let endpoint = match endpoint(*new, host, url.is_tls(), &options) {
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
        // An open circuit answers at once, without touching the network.
        let permit = match self.breaker.as_ref().map(Breaker::admit) {
            Some(Err(refused)) => {
                return Box::pin(async move { Err(Box::new(refused) as StdError) });
            }
            Some(Ok(permit)) => Some(permit),
            None => None,
        };
        let response = self.inner.call(request);
        let target = self.target.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let result = match tokio::time::timeout(timeout, response).await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(err)) => Err(unavailable(&target, err.into())),
                Err(_) => Err(Box::new(Status::deadline_exceeded(format!(
                    "{target} did not answer within {timeout:?}"
                ))) as StdError),
            };
            if let Some(permit) = permit {
                let failed = match &result {
                    Ok(response) => grpc_status(response).is_some_and(is_failure),
                    Err(err) => err
                        .downcast_ref::<Status>()
                        .is_none_or(|status| is_failure(status.code())),
                };
                permit.record(failed);
            }
            result
        })
    }
}

/// The status of an answer that came as headers only (a call refused at
/// once); `None` when the status comes later, in the trailers.
fn grpc_status(response: &http::Response<Body>) -> Option<Code> {
    let value = response.headers().get("grpc-status")?.to_str().ok()?;
    value.parse::<i32>().ok().map(Code::from_i32)
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
