//! Channels to other Parley services.
//!
//! A `*_URL` may list several endpoints or name a host that resolves to
//! several addresses (a headless Service); every address found is a
//! balancing target, and names are re-resolved periodically so new replicas
//! get traffic. Where there are several, each is asked for its health every
//! second and only those that answer take calls, so a crashed or draining
//! replica stops getting its share before its name stops resolving to it
//! (README, "When a chat replica goes away"). Every call is observed (the
//! `grpc_client_*` metrics and trace context) and bounded by a timeout;
//! retries are for idempotent calls only and are chosen at the call site
//! with [`retry_idempotent`].

use std::{
    collections::{HashMap, HashSet},
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
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
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

/// How often each address of a service with several is asked for its
/// health.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Keeps the balancer's endpoint set equal to the addresses `url`
/// resolves to that are alive. Ends when the channel is dropped.
///
/// The balancer would otherwise keep sending a share of the calls to a
/// replica that crashed, each failing at once (and, five in a row, opening
/// the circuit for the whole service), until its name stopped resolving to
/// it. So, where there are several addresses, each is asked `grpc.health`
/// (the liveness entry, which a draining replica turns off) every
/// [`PROBE_EVERY`], and only those that answer SERVING take calls. If none
/// answers, all stay in: calls then fail fast as they would anyway.
async fn resolve_forever(
    target: &'static str,
    url: ServiceUrl,
    options: ClientOptions,
    changes: tokio::sync::mpsc::Sender<Change<SocketAddr, Endpoint>>,
) {
    let mut known: HashMap<SocketAddr, Arc<str>> = HashMap::new();
    let mut probes: HashMap<SocketAddr, HealthClient<Channel>> = HashMap::new();
    let mut balanced: HashSet<SocketAddr> = HashSet::new();
    let mut generation = options.tls.generation();
    let mut resolve_every = tokio::time::interval(options.resolve_every);
    resolve_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probe_every = tokio::time::interval(PROBE_EVERY);
    probe_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = resolve_every.tick() => {
                let found = resolve(target, &url).await;
                // A failed lookup keeps the last known addresses rather
                // than leaving the service with none.
                if !found.is_empty() {
                    known = found;
                }
                // Rotated TLS files: every endpoint is made again with
                // them. Calls open on the old connections finish there.
                if url.is_tls() && options.tls.generation() != generation {
                    generation = options.tls.generation();
                    tracing::info!(%target, "TLS files changed; reconnecting with them");
                    balanced.clear();
                    probes.clear();
                }
            }
            _ = probe_every.tick(), if known.len() > 1 => {}
        }
        probes.retain(|address, _| known.contains_key(address));
        // The first addresses go in at once, so calls need not wait for a
        // first round of checks; the next round prunes them.
        let live = if known.len() > 1 && !balanced.is_empty() {
            alive(&known, &mut probes, url.is_tls(), &options).await
        } else {
            HashSet::new()
        };
        let wanted: HashSet<SocketAddr> = if live.is_empty() {
            known.keys().copied().collect()
        } else {
            live
        };
        for gone in balanced.difference(&wanted) {
            tracing::info!(%target, address = %gone, "address left out: gone or not answering");
            if changes.send(Change::Remove(*gone)).await.is_err() {
                return;
            }
        }
        for new in wanted.difference(&balanced) {
            let Some(host) = known.get(new) else { continue };
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
            tracing::debug!(%target, address = %new, "balancing over an address");
        }
        balanced = wanted;
        metrics::gauge!("parley_client_endpoints", "target" => target).set(balanced.len() as f64);
    }
}

/// The addresses of `known` whose health check answers SERVING within the
/// connect timeout, asked all at once.
async fn alive(
    known: &HashMap<SocketAddr, Arc<str>>,
    probes: &mut HashMap<SocketAddr, HealthClient<Channel>>,
    tls: bool,
    options: &ClientOptions,
) -> HashSet<SocketAddr> {
    let mut checks = Vec::with_capacity(known.len());
    for (address, host) in known {
        let probe = match probes.get(address) {
            Some(probe) => probe.clone(),
            None => match endpoint(*address, host, tls, options) {
                Ok(endpoint) => {
                    let probe = HealthClient::new(endpoint.connect_lazy());
                    probes.insert(*address, probe.clone());
                    probe
                }
                Err(_) => continue,
            },
        };
        let address = *address;
        let limit = options.connect_timeout;
        checks.push(async move {
            let mut probe = probe;
            let asked = probe.check(HealthCheckRequest {
                service: String::new(),
            });
            let serving = matches!(
                tokio::time::timeout(limit, asked).await,
                Ok(Ok(answer)) if answer.get_ref().status == ServingStatus::Serving as i32
            );
            serving.then_some(address)
        });
    }
    futures_util::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect()
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
