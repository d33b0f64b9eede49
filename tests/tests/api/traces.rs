//! Tracing across processes: one WebSocket send is one trace, from the
//! gateway through chat to storage and Redis, received by a real OTLP/gRPC
//! endpoint.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value as AnyValue,
    trace::v1::Span,
};
use parley_tests::{
    DatabaseBackend, TestStack,
    chat::room_id,
    gateway::{ChatProcess, GatewayProcess, Ws, free_ports, service_url},
};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

/// Spans received, with the service that sent each.
#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    arrived: Arc<Notify>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .and_then(|attribute| attribute.value.as_ref()?.value.as_ref())
                .map(|value| match value {
                    AnyValue::StringValue(name) => name.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push((service.clone(), span));
                }
            }
        }
        self.spans.lock().unwrap().extend(received);
        self.arrived.notify_waiters();
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// The (service, span name) pairs of the trace that contains a span
    /// named `root`, once it holds every one of `wanted`.
    async fn trace_with(&self, root: &str, wanted: &[(&str, &str)]) -> Vec<(String, String)> {
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let arrived = self.arrived.notified();
                if let Some(trace) = self.find(root, wanted) {
                    return trace;
                }
                arrived.await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            let seen: Vec<(String, String)> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .map(|(service, span)| (service.clone(), span.name.clone()))
                .collect();
            panic!("no trace with {wanted:?} arrived; spans seen: {seen:?}")
        })
    }

    fn find(&self, root: &str, wanted: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        let spans = self.spans.lock().unwrap();
        let mut traces: HashMap<&[u8], Vec<(String, String)>> = HashMap::new();
        for (service, span) in spans.iter() {
            traces
                .entry(span.trace_id.as_slice())
                .or_default()
                .push((service.clone(), span.name.clone()));
        }
        traces.into_values().find(|trace| {
            trace.iter().any(|(_, name)| name == root)
                && wanted
                    .iter()
                    .all(|(service, name)| trace.iter().any(|(s, n)| s == service && n == name))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_websocket_send_is_one_trace_across_gateway_chat_storage_and_redis() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let mut stack = TestStack::start(DatabaseBackend::Postgres).await;
    let tracing_env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let port = free_ports(1).await[0];
    let _chat = ChatProcess::start(&stack, port, &tracing_env).await;
    let gateway = GatewayProcess::start(&stack, &service_url(&[port]), &tracing_env).await;

    let (_, token) = stack.signed_up("tracy").await;
    let mut ws = Ws::connect(gateway.http, &token).await;
    let room = room_id("traced");
    ws.join(&room, 0).await;
    ws.say(&room, "follow me", "t-1").await;
    assert_eq!(ws.next_kind("ack").await["client_id"], "t-1");

    let trace = collector
        .trace_with(
            "ws.send",
            &[
                ("parley-gateway", "ws.send"),
                ("parley-chat", "chat.send"),
                ("parley-chat", "chat.store"),
                ("parley-chat", "redis.publish"),
            ],
        )
        .await;
    assert!(
        trace.iter().filter(|(_, name)| name == "ws.send").count() == 1,
        "one send, one root: {trace:?}"
    );
    ws.close().await;
    server.abort();
    stack.stop().await;
}
