//! The process-wide Prometheus registry and the metric names dashboards rely
//! on (README: "Metrics").
//!
//! The exporter is installed once per process, however many services run in
//! it, and every admin port renders the same registry. Every histogram gets
//! explicit buckets: without them the exporter renders summaries, which have
//! no `_bucket` series, so heatmaps and `histogram_quantile` come out empty.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Request latency buckets (seconds): the OpenTelemetry RPC advisory set, a
/// superset of Prometheus' defaults with exact 0.1 and 0.25 boundaries.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Fan-out and database buckets (seconds), where sub-millisecond matters.
pub const FAST_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Batch size buckets (items), for how many writes share a commit.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0, 32.0, 64.0, 128.0, 512.0];

/// Password hashing buckets (seconds), around the Argon2id cost.
pub const HASH_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder if this process has none yet, and
/// returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_fanout_seconds".into()),
                        FAST_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Prefix("parley_db_".into()), FAST_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_hash_seconds".into()), HASH_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), BATCH_BUCKETS)
                });
            // Bucket lists are non-empty constants, so building cannot fail.
            let builder = builder.expect("bucket lists are non-empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a test harness);
            // then ours renders nothing, which the metrics tests would catch.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            handle
        })
        .clone()
}

/// Exports `parley_build_info{service,version} 1` for one service.
pub fn register_build_info(service: &'static str) {
    metrics::gauge!("parley_build_info", "service" => service, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Counts a TLS handshake that failed or timed out: a plaintext client on a
/// TLS port, a client certificate refused under mTLS, an untrusted server
/// certificate on the client's side.
pub(crate) fn tls_handshake_failed() {
    metrics::counter!("parley_tls_handshake_failures_total").increment(1);
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

    describe_gauge!(
        "parley_build_info",
        "Build of each service in this process."
    );
    describe_gauge!(
        "parley_client_circuit_state",
        "Circuit breaker of calls to a service: 0 closed, 1 half-open, 2 open."
    );
    describe_gauge!(
        "parley_client_endpoints",
        "Addresses of a service its unary calls are balanced over: those answering their health check, where there are several."
    );
    describe_counter!(
        "parley_client_circuit_transitions_total",
        "Circuit breaker state changes, by the state entered."
    );
    describe_counter!(
        "parley_tls_handshake_failures_total",
        "TLS handshakes this process refused or that timed out."
    );
    for side in ["server", "client"] {
        let name = |suffix: &str| -> String { format!("grpc_{side}_{suffix}") };
        describe_counter!(name("started_total"), "gRPC calls started.");
        describe_counter!(
            name("handled_total"),
            "gRPC calls completed, by status code."
        );
        describe_histogram!(
            name("handling_seconds"),
            Unit::Seconds,
            "Time from a call's start to its last response message."
        );
        describe_counter!(name("msg_received_total"), "gRPC stream messages received.");
        describe_counter!(name("msg_sent_total"), "gRPC stream messages sent.");
        describe_gauge!(name("streams_active"), "Streaming gRPC calls open now.");
    }
    describe_gauge!(
        "parley_runtime_tasks_alive",
        "Tokio tasks alive in this process, sampled at each scrape."
    );
    describe_gauge!(
        "parley_runtime_workers",
        "Tokio worker threads of this process."
    );
    describe_gauge!(
        "parley_runtime_global_queue_depth",
        "Tasks waiting in the tokio runtime's global queue, sampled at each scrape."
    );
    describe_gauge!(
        "parley_db_pool_connections",
        "Database pool connections, by state."
    );
    describe_histogram!(
        "parley_db_query_seconds",
        Unit::Seconds,
        "Database query latency, by operation."
    );
}

/// Renders the registry in the Prometheus text format, with the tokio
/// runtime's gauges sampled now (a task leak shows as a climbing
/// `parley_runtime_tasks_alive`; `make soak` watches it).
pub fn render() -> String {
    let handle = install();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let sample = runtime.metrics();
        metrics::gauge!("parley_runtime_tasks_alive").set(sample.num_alive_tasks() as f64);
        metrics::gauge!("parley_runtime_workers").set(sample.num_workers() as f64);
        metrics::gauge!("parley_runtime_global_queue_depth")
            .set(sample.global_queue_depth() as f64);
    }
    handle.render()
}
