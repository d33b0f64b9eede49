//! The tower layer behind every gRPC server and client: metrics as
//! go-grpc-prometheus names them, trace context, and (on servers) the cut of
//! open response streams when the server drains.
//!
//! It works on HTTP, below tonic: calls are recognised by path, messages are
//! counted by parsing the 5-byte gRPC length prefixes as bytes go by, and the
//! status is read from the trailers (or from the headers of a trailers-only
//! answer, which is how tonic sends errors).

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::Instant,
};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use metrics::Counter;
use pin_project_lite::pin_project;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Code, body::Body};
use tower_service::Service;
use tracing::Instrument as _;

use super::{
    methods::{self, MethodInfo},
    status::metric_label,
};
use crate::telemetry;

/// Which end of a call this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Server,
    Client,
}

struct Names {
    started: &'static str,
    handled: &'static str,
    handling: &'static str,
    msg_received: &'static str,
    msg_sent: &'static str,
    streams_active: &'static str,
}

const SERVER: Names = Names {
    started: "grpc_server_started_total",
    handled: "grpc_server_handled_total",
    handling: "grpc_server_handling_seconds",
    msg_received: "grpc_server_msg_received_total",
    msg_sent: "grpc_server_msg_sent_total",
    streams_active: "grpc_server_streams_active",
};

const CLIENT: Names = Names {
    started: "grpc_client_started_total",
    handled: "grpc_client_handled_total",
    handling: "grpc_client_handling_seconds",
    msg_received: "grpc_client_msg_received_total",
    msg_sent: "grpc_client_msg_sent_total",
    streams_active: "grpc_client_streams_active",
};

impl Side {
    fn names(self) -> &'static Names {
        match self {
            Self::Server => &SERVER,
            Self::Client => &CLIENT,
        }
    }
}

/// Picks one metric name of a side.
type NamePicker = fn(&Names) -> &'static str;

/// One call in flight. Records `handled`, `handling_seconds` and the stream
/// gauge exactly once: when the status is known, or as `Canceled` when the
/// call is dropped before that (the peer went away).
struct Call {
    info: MethodInfo,
    side: Side,
    started_at: Instant,
    finished: bool,
}

impl Call {
    fn start(info: MethodInfo, side: Side) -> Self {
        let names = side.names();
        metrics::counter!(names.started, &labels(info)).increment(1);
        if info.kind.is_streaming() {
            metrics::gauge!(names.streams_active, "grpc_service" => info.service, "grpc_method" => info.method)
                .increment(1.0);
        }
        Self {
            info,
            side,
            started_at: Instant::now(),
            finished: false,
        }
    }

    fn message_counter(&self, name: NamePicker) -> Counter {
        metrics::counter!(name(self.side.names()), &labels(self.info))
    }

    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let names = self.side.names();
        let info = self.info;
        metrics::counter!(
            names.handled,
            "grpc_type" => info.kind.as_str(),
            "grpc_service" => info.service,
            "grpc_method" => info.method,
            "grpc_code" => metric_label(code),
        )
        .increment(1);
        metrics::histogram!(names.handling, &labels(info))
            .record(self.started_at.elapsed().as_secs_f64());
        if info.kind.is_streaming() {
            metrics::gauge!(names.streams_active, "grpc_service" => info.service, "grpc_method" => info.method)
                .decrement(1.0);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

fn labels(info: MethodInfo) -> [(&'static str, &'static str); 3] {
    [
        ("grpc_type", info.kind.as_str()),
        ("grpc_service", info.service),
        ("grpc_method", info.method),
    ]
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(value))
}

/// Counts gRPC messages in a byte stream by following the length prefixes.
#[derive(Debug, Default)]
struct MessageFramer {
    header: [u8; 5],
    header_len: usize,
    payload_left: usize,
}

impl MessageFramer {
    /// Feeds the next chunk and returns how many messages began in it.
    fn count(&mut self, mut data: &[u8]) -> u64 {
        let mut started = 0;
        while !data.is_empty() {
            if self.payload_left > 0 {
                let take = self.payload_left.min(data.len());
                self.payload_left -= take;
                data = &data[take..];
                continue;
            }
            let take = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
            self.header_len += take;
            data = &data[take..];
            if self.header_len == 5 {
                started += 1;
                self.header_len = 0;
                let [_, a, b, c, d] = self.header;
                self.payload_left = u32::from_be_bytes([a, b, c, d]) as usize;
            }
        }
        started
    }
}

pin_project! {
    /// A request body that counts the messages passing through it.
    struct CountingBody<B> {
        #[pin]
        inner: B,
        framer: MessageFramer,
        messages: Counter,
    }
}

impl<B: HttpBody<Data = Bytes>> HttpBody for CountingBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            this.messages.increment(this.framer.count(data));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// A response body that counts messages, records the call when its
    /// status arrives, and (server streams) ends with UNAVAILABLE when the
    /// server drains.
    struct ObservedBody<B> {
        #[pin]
        inner: B,
        framer: MessageFramer,
        messages: Counter,
        call: Call,
        #[pin]
        drain: Option<WaitForCancellationFutureOwned>,
        cut: bool,
    }
}

impl<B: HttpBody<Data = Bytes>> HttpBody for ObservedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        if *this.cut {
            return Poll::Ready(None);
        }
        // Whatever the stream has ready still goes out; the cut comes only
        // when it is idle, so a last message (health's NOT_SERVING) is not
        // lost to the drain.
        let Poll::Ready(frame) = this.inner.poll_frame(cx) else {
            if let Some(drain) = this.drain.as_mut().as_pin_mut()
                && drain.poll(cx).is_ready()
            {
                *this.cut = true;
                this.call.finish(Code::Unavailable);
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
                trailers.insert(
                    "grpc-message",
                    http::HeaderValue::from_static("server%20is%20shutting%20down%3B%20reconnect"),
                );
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            return Poll::Pending;
        };
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.messages.increment(this.framer.count(data));
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.call
                        .finish(grpc_status(trailers).unwrap_or(Code::Unknown));
                }
            }
            Some(Err(_)) => this.call.finish(Code::Unknown),
            None => this.call.finish(Code::Unknown),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.cut || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Observes every call of a gRPC server, and cuts its open response streams
/// once `drain` fires (tonic alone would wait for them forever).
#[derive(Debug, Clone)]
pub(crate) struct ServerLayer {
    pub(crate) drain: CancellationToken,
}

impl<S> tower_layer::Layer<S> for ServerLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            side: Side::Server,
            drain: Some(self.drain.clone()),
        }
    }
}

/// The service [`ServerLayer`] and the clients wrap around their inner
/// service.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    side: Side,
    drain: Option<CancellationToken>,
}

impl<S> Observe<S> {
    /// Observes the calls a client makes through `inner`.
    pub(crate) fn client(inner: S) -> Self {
        Self {
            inner,
            side: Side::Client,
            drain: None,
        }
    }
}

impl<S, ResBody> Service<http::Request<Body>> for Observe<S>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let info = methods::lookup(request.uri().path());
        let mut call = Call::start(info, self.side);
        let (request_messages, response_messages): (NamePicker, NamePicker) = match self.side {
            Side::Server => (|n| n.msg_received, |n| n.msg_sent),
            Side::Client => (|n| n.msg_sent, |n| n.msg_received),
        };
        let mut request = request.map(|body| {
            Body::new(CountingBody {
                inner: body,
                framer: MessageFramer::default(),
                messages: call.message_counter(request_messages),
            })
        });
        let span = match self.side {
            Side::Server => tracing::Span::current(),
            Side::Client => {
                let span = tracing::info_span!(
                    "grpc.client",
                    rpc.service = info.service,
                    rpc.method = info.method
                );
                span.in_scope(|| telemetry::inject_context(request.headers_mut()));
                span
            }
        };
        let drain = self
            .drain
            .as_ref()
            .filter(|_| info.kind.streams_responses())
            .map(|token| token.clone().cancelled_owned());
        let response = self.inner.call(request);
        Box::pin(
            async move {
                match response.await {
                    Ok(response) => {
                        if let Some(code) = grpc_status(response.headers()) {
                            call.finish(code);
                        }
                        let messages = call.message_counter(response_messages);
                        Ok(response.map(|body| {
                            Body::new(ObservedBody {
                                inner: body,
                                framer: MessageFramer::default(),
                                messages,
                                call,
                                drain,
                                cut: false,
                            })
                        }))
                    }
                    Err(err) => {
                        call.finish(Code::Unavailable);
                        Err(err)
                    }
                }
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend(std::iter::repeat_n(7, len as usize));
        bytes
    }

    #[test]
    fn counts_messages_split_anywhere() {
        let stream: Vec<u8> = [message(3), message(0), message(300)].concat();
        for chunk_size in [1, 2, 5, 7, 64, stream.len()] {
            let mut framer = MessageFramer::default();
            let total: u64 = stream
                .chunks(chunk_size)
                .map(|chunk| framer.count(chunk))
                .sum();
            assert_eq!(total, 3, "chunk size {chunk_size}");
        }
    }
}
