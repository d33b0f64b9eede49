//! The gateway's multiplexed streams to chat (README: "How the gateway
//! carries sessions" and "When a chat replica goes away").
//!
//! The gateway keeps `GATEWAY_STREAMS_PER_REPLICA` `GatewayStream`s to every
//! address `CHAT_URL` resolves to, and places each WebSocket session on the
//! least-loaded open stream. One task owns each stream and everything about
//! the sessions on it ([`stream`]: their rooms, and per room the highest
//! `seq` each client has received). When a stream breaks (a replica
//! restarts, crashes or cuts a slow stream), its sessions become orphans,
//! are adopted by another open stream (or the same replica once it is back)
//! and resume where their cursors stand.
//!
//! A room event arrives once per stream however many of its sessions are in
//! the room, and a message is encoded to JSON once per gateway
//! ([`encoded`]).
//!
//! Connections reach their stream only through [`SessionHandle::forward`]
//! and [`SessionHandle::close_upstream`]; what travels is this module's
//! own business.

mod encoded;
mod stream;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use parley_proto::chat::v1::{
    ChatRequest, GatewayStreamResponse, chat_request::Frame as In,
    chat_service_client::ChatServiceClient,
};
use parley_runtime::{
    CancellationToken,
    client::{self, ClientOptions},
    config::ServiceUrl,
    grpc::MAX_MESSAGE_BYTES,
    health::Condition,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};
use tracing::Instrument as _;

use self::{
    encoded::EncodedMessages,
    stream::{Orphan, Stream, unavailable},
};
use crate::session::{SessionHandle, SessionId};

/// Commands waiting for one stream's task; connections wait when it is
/// full, which slows their socket reads rather than growing memory.
const COMMAND_QUEUE: usize = 4096;
/// Requests waiting to be written to one chat stream; when full, frames
/// are refused with RESOURCE_EXHAUSTED instead of blocking the stream's
/// task (which also delivers to every session on it).
const REQUEST_QUEUE: usize = 8192;
/// Encoded messages kept for other streams and replays to reuse.
const ENCODED_MESSAGES: usize = 4096;

/// What a stream's task is asked to do.
#[derive(Debug)]
enum Command {
    /// A new connection's session.
    Open {
        /// The connection.
        handle: Arc<SessionHandle>,
        /// Its access token.
        token: String,
    },
    /// A frame from a connection.
    Frame {
        /// The connection.
        handle: Arc<SessionHandle>,
        /// The frame.
        request: ChatRequest,
        /// Its W3C trace context; empty when traces are not exported.
        trace: HashMap<String, String>,
    },
    /// The connection closed.
    Close {
        /// Its session.
        session: SessionId,
    },
    /// A session moving here from a stream that broke.
    Adopt(Box<Orphan>),
}

/// The stream a session lives on now, as its connection holds it.
#[derive(Debug, Clone)]
pub(crate) struct Route(mpsc::Sender<Command>);

/// Settings of the streams.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Streams per chat address.
    pub(crate) streams_per_replica: usize,
    /// Rooms one connection may have joined.
    pub(crate) max_rooms_per_connection: usize,
    /// Timeouts and keepalive of the connections to chat.
    pub(crate) client: ClientOptions,
    /// What proves to chat that this is a gateway (`GATEWAY_STREAM_SECRET`).
    pub(crate) stream_secret: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

/// No chat stream is open to take a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NoStream;

/// The pool of chat streams. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Mutex<Pool>,
    ready: Condition,
    settings: Settings,
    next_slot: AtomicU64,
    encoded: Arc<EncodedMessages>,
}

/// Open streams and the sessions waiting for one. One lock for both, so a
/// session is never parked just after the last check for an open stream.
#[derive(Debug, Default)]
struct Pool {
    open: HashMap<u64, OpenStream>,
    waiting: Vec<Orphan>,
}

#[derive(Debug)]
struct OpenStream {
    commands: mpsc::Sender<Command>,
    load: Arc<AtomicUsize>,
}

/// The open stream with the fewest sessions, counted as taking one more:
/// where a new or moving session goes.
fn least_loaded(pool: &Pool) -> Option<mpsc::Sender<Command>> {
    let least = pool
        .open
        .values()
        .min_by_key(|stream| stream.load.load(Ordering::Relaxed))?;
    least.load.fetch_add(1, Ordering::Relaxed);
    Some(least.commands.clone())
}

impl Upstream {
    /// Starts keeping streams to every address of `url` until `stop`;
    /// `ready` holds while at least one is open.
    pub(crate) fn start(
        url: ServiceUrl,
        settings: Settings,
        ready: Condition,
        stop: CancellationToken,
    ) -> Self {
        let upstream = Self {
            inner: Arc::new(Inner {
                pool: Mutex::new(Pool::default()),
                ready,
                settings,
                next_slot: AtomicU64::new(1),
                encoded: Arc::new(EncodedMessages::new(ENCODED_MESSAGES)),
            }),
        };
        tokio::spawn(upstream.clone().follow_replicas(url, stop));
        upstream
    }

    /// Whether any chat stream is open.
    pub(crate) fn is_available(&self) -> bool {
        !self.lock().open.is_empty()
    }

    /// Places a new session on the least-loaded open stream, which opens
    /// it on chat; the handle's route points there from now on.
    ///
    /// # Errors
    /// [`NoStream`] when no stream is open (or every one tried broke).
    pub(crate) async fn open(
        &self,
        handle: Arc<SessionHandle>,
        token: String,
    ) -> Result<(), NoStream> {
        let mut command = Command::Open { handle, token };
        // A stream can break between the pick and the send; try the next.
        for _ in 0..4 {
            let Some(commands) = least_loaded(&self.lock()) else {
                return Err(NoStream);
            };
            if let Command::Open { handle, .. } = &command {
                handle.set_route(Some(Route(commands.clone())));
            }
            match commands.send(command).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(returned)) => command = returned,
            }
        }
        Err(NoStream)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        // Every update leaves the pool consistent, so a poisoned lock is
        // still usable.
        self.inner
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps one set of streams per address `url` resolves to, adding and
    /// dropping replicas as the name's addresses change.
    async fn follow_replicas(self, url: ServiceUrl, stop: CancellationToken) {
        let mut replicas: HashMap<SocketAddr, CancellationToken> = HashMap::new();
        let mut every = tokio::time::interval(self.inner.settings.client.resolve_every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = stop.cancelled() => return,
            }
            let found = client::resolve("chat", &url).await;
            // A failed lookup keeps the replicas already known.
            if found.is_empty() {
                continue;
            }
            replicas.retain(|address, streams| {
                let keep = found.contains_key(address);
                if !keep {
                    tracing::info!(%address, "chat replica no longer resolved; moving its sessions");
                    streams.cancel();
                }
                keep
            });
            for (address, host) in found {
                if replicas.contains_key(&address) {
                    continue;
                }
                let streams = stop.child_token();
                for _ in 0..self.inner.settings.streams_per_replica {
                    tokio::spawn(self.clone().keep_stream(
                        address,
                        host.clone(),
                        url.is_tls(),
                        streams.clone(),
                    ));
                }
                replicas.insert(address, streams);
            }
        }
    }

    /// Keeps one stream to `address` (found under `host`) open until
    /// `stop`, reopening it with backoff when it breaks.
    async fn keep_stream(
        self,
        address: SocketAddr,
        host: Arc<str>,
        tls: bool,
        stop: CancellationToken,
    ) {
        let mut failures: u32 = 0;
        while !stop.is_cancelled() {
            // A channel per stream, so a reopened stream uses the TLS files
            // as they are now (README, "TLS").
            let channel =
                match client::connect_one("chat", address, &host, tls, &self.inner.settings.client)
                {
                    Ok(channel) => channel,
                    Err(err) => {
                        tracing::warn!(%address, error = %err, "unusable chat address");
                        return;
                    }
                };
            let (requests, outgoing) = mpsc::channel(REQUEST_QUEUE);
            let mut chat = ChatServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let opened = tokio::select! {
                opened = chat.gateway_stream(self.stream_request(ReceiverStream::new(outgoing))) => opened,
                () = stop.cancelled() => return,
            };
            let responses = match opened {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_multiple_of(50) {
                        tracing::warn!(%address, code = ?status.code(), error = %status.message(), "cannot open a chat stream; retrying");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff(failures)) => continue,
                        () = stop.cancelled() => return,
                    }
                }
            };
            if failures > 0 {
                tracing::info!(%address, "chat stream open again");
            }
            failures = 0;
            let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
            let load = Arc::new(AtomicUsize::new(0));
            let slot = self.stream_opened(commands, load.clone());
            let stream = Stream::new(
                self.inner.encoded.clone(),
                requests,
                load,
                self.inner.settings.max_rooms_per_connection,
            );
            let orphans = run(stream, inbox, responses, &stop, address).await;
            self.stream_closed(slot, orphans);
        }
    }

    /// The request opening a stream, with the gateway's secret.
    fn stream_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(secret) = &self.inner.settings.stream_secret {
            request
                .metadata_mut()
                .insert(parley_runtime::token::GATEWAY_SECRET_HEADER, secret.clone());
        }
        request
    }

    fn stream_opened(&self, commands: mpsc::Sender<Command>, load: Arc<AtomicUsize>) -> u64 {
        let slot = self.inner.next_slot.fetch_add(1, Ordering::Relaxed);
        let waiting = {
            let mut pool = self.lock();
            pool.open.insert(slot, OpenStream { commands, load });
            std::mem::take(&mut pool.waiting)
        };
        self.inner.ready.set(true);
        self.place(waiting);
        slot
    }

    fn stream_closed(&self, slot: u64, orphans: Vec<Orphan>) {
        let any_open = {
            let mut pool = self.lock();
            pool.open.remove(&slot);
            !pool.open.is_empty()
        };
        self.inner.ready.set(any_open);
        if !orphans.is_empty() {
            tracing::info!(
                sessions = orphans.len(),
                "moving sessions off a broken chat stream"
            );
        }
        self.place(orphans);
    }

    /// Hands orphans to open streams, or parks them until one opens.
    fn place(&self, orphans: Vec<Orphan>) {
        let orphans: Vec<Orphan> = orphans
            .into_iter()
            .filter(|orphan| !orphan.handle.has_ended())
            .collect();
        if orphans.is_empty() {
            return;
        }
        let upstream = self.clone();
        tokio::spawn(async move {
            for orphan in orphans {
                upstream.place_one(orphan).await;
            }
        });
    }

    async fn place_one(&self, mut orphan: Orphan) {
        loop {
            if orphan.handle.has_ended() {
                return;
            }
            let commands = {
                let mut pool = self.lock();
                match least_loaded(&pool) {
                    Some(commands) => commands,
                    None => {
                        // Connections that ended while waiting need no
                        // home.
                        pool.waiting.retain(|waiting| !waiting.handle.has_ended());
                        pool.waiting.push(orphan);
                        return;
                    }
                }
            };
            let handle = orphan.handle.clone();
            match commands.send(Command::Adopt(Box::new(orphan))).await {
                Ok(()) => {
                    handle.set_route(Some(Route(commands)));
                    return;
                }
                Err(mpsc::error::SendError(Command::Adopt(returned))) => orphan = *returned,
                Err(_) => return,
            }
        }
    }
}

/// 100 ms doubling up to 2 s: a restarted replica is found again quickly.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(5)).min(2_000))
}

/// Serves the stream until it breaks or `stop` fires; returns its
/// sessions, to be moved.
/// Drives a stream's state with what chat sends and what connections ask,
/// until the stream breaks or `stop` fires; returns its sessions, to be
/// moved.
async fn run(
    mut stream: Stream,
    mut inbox: mpsc::Receiver<Command>,
    mut responses: Streaming<GatewayStreamResponse>,
    stop: &CancellationToken,
    address: SocketAddr,
) -> Vec<Orphan> {
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            response = responses.message() => match response {
                Ok(Some(response)) => stream.dispatch(response),
                Ok(None) => {
                    tracing::info!(%address, "chat ended the stream");
                    break;
                }
                Err(status) => {
                    if status.code() == Code::ResourceExhausted {
                        tracing::warn!(%address, "chat cut a stream this gateway read too slowly");
                    } else {
                        tracing::info!(%address, code = ?status.code(), error = %status.message(), "chat stream broke");
                    }
                    break;
                }
            },
            Some(command) = inbox.recv() => stream.command(command),
        }
        stream.report_load();
    }
    // Commands already queued belong to sessions that now move.
    inbox.close();
    while let Ok(command) = inbox.try_recv() {
        stream.command_after_loss(command);
    }
    stream.into_orphans()
}

impl SessionHandle {
    /// Sends a client frame to the session's stream, which passes it to
    /// chat; a session between streams is answered UNAVAILABLE (the client
    /// may retry).
    pub(crate) async fn forward(self: &Arc<Self>, request: ChatRequest) {
        let Some(Route(route)) = self.route() else {
            unavailable(self, &request);
            return;
        };
        // A send is where a trace starts: its context rides the frame to
        // chat, which stores and publishes the message under it.
        let (span, trace) = match &request.frame {
            Some(In::Send(send)) if parley_runtime::telemetry::exporting() => {
                let span = tracing::info_span!("ws.send", otel.kind = "server", chat.room_id = %send.room_id);
                let trace = parley_runtime::telemetry::context_of(&span);
                (span, trace)
            }
            _ => (tracing::Span::none(), HashMap::new()),
        };
        let command = Command::Frame {
            handle: self.clone(),
            request,
            trace,
        };
        if let Err(mpsc::error::SendError(Command::Frame { request, .. })) =
            route.send(command).instrument(span).await
        {
            unavailable(self, &request);
        }
    }

    /// Tells the session's stream that the connection ended, so it forgets
    /// the session (and closes it on chat); if the stream is gone, so is
    /// the session.
    pub(crate) async fn close_upstream(&self) {
        if let Some(Route(route)) = self.route() {
            let _ = route.send(Command::Close { session: self.id }).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_stream(pool: &mut Pool, slot: u64, load: usize) -> mpsc::Receiver<Command> {
        let (commands, inbox) = mpsc::channel(4);
        pool.open.insert(
            slot,
            OpenStream {
                commands,
                load: Arc::new(AtomicUsize::new(load)),
            },
        );
        inbox
    }

    fn loads(pool: &Pool) -> Vec<(u64, usize)> {
        let mut loads: Vec<_> = pool
            .open
            .iter()
            .map(|(slot, stream)| (*slot, stream.load.load(Ordering::Relaxed)))
            .collect();
        loads.sort_unstable();
        loads
    }

    #[test]
    fn placement_picks_the_least_loaded_stream_and_counts_the_session() {
        let mut pool = Pool::default();
        assert!(least_loaded(&pool).is_none(), "no stream, no place");
        let _a = open_stream(&mut pool, 1, 3);
        let _b = open_stream(&mut pool, 2, 1);
        assert!(least_loaded(&pool).is_some());
        assert_eq!(loads(&pool), [(1, 3), (2, 2)], "the lighter stream took it");
        least_loaded(&pool);
        assert_eq!(loads(&pool), [(1, 3), (2, 3)]);
        least_loaded(&pool);
        least_loaded(&pool);
        assert_eq!(loads(&pool), [(1, 4), (2, 4)], "even from a tie");
    }
}
