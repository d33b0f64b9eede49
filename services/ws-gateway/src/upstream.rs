//! The gateway's multiplexed streams to chat (DESIGN §8).
//!
//! The gateway keeps `GATEWAY_STREAMS_PER_REPLICA` `GatewayStream`s to every
//! address `CHAT_URL` resolves to, and places each WebSocket session on the
//! least-loaded open stream. One task owns each stream and everything about
//! the sessions on it: their rooms, and per room the highest `seq` each
//! client has received. That cursor is what makes a move lossless: when a
//! stream breaks (a replica restarts, crashes or cuts a slow stream), its
//! sessions become orphans, are adopted by another open stream (or the same
//! replica once it is back) and rejoin every room with `since_seq` at their
//! cursor. Messages at or below a cursor are dropped, so a client sees each
//! message once, in order, and never notices the move.
//!
//! A room event arrives once per stream however many of its sessions are in
//! the room. A message is encoded to JSON once per gateway: the first stream
//! to meet `(room, seq)` encodes it into the shared [`EncodedMessages`], and
//! every other stream, replay and recipient reuses those bytes.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::extract::ws::Utf8Bytes;
use parley_proto::chat::v1::{
    ChatRequest, ChatResponse, CloseSession, GatewayStreamRequest, GatewayStreamResponse, Join,
    OpenSession, RoomEvent, Send, SessionRequest, chat_request::Frame as In,
    chat_response::Frame as Out, chat_service_client::ChatServiceClient,
    gateway_stream_request::Kind as Up, gateway_stream_response::Kind as Down,
};
use parley_runtime::{
    CancellationToken,
    client::{self, ClientOptions},
    config::ServiceUrl,
    grpc::MAX_MESSAGE_BYTES,
    health::Condition,
    vec_set::VecSet,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

use crate::{
    frames::{self, FrameError},
    metrics::FrameKind,
    session::{CloseReason, SessionHandle, SessionId},
};

/// Commands waiting for one stream's task; connections wait when it is
/// full, which slows their socket reads rather than growing memory.
const COMMAND_QUEUE: usize = 4096;
/// Requests waiting to be written to one chat stream; when full, frames
/// are refused with RESOURCE_EXHAUSTED instead of blocking the stream's
/// task (which also delivers to every session on it).
const REQUEST_QUEUE: usize = 8192;
/// Sends with a `client_id` kept per session until acknowledged, to be
/// sent again (idempotently) after a move.
const MAX_UNACKED: usize = 256;
/// Encoded messages kept for other streams and replays to reuse.
const ENCODED_MESSAGES: usize = 4096;

/// What a stream's task is asked to do.
#[derive(Debug)]
pub enum Command {
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

/// A session between two streams, with what it needs to resume.
#[derive(Debug)]
pub struct Orphan {
    handle: Arc<SessionHandle>,
    token: String,
    /// Each joined room and the seq to rejoin it after.
    rooms: Vec<(Arc<str>, i64)>,
    unacked: VecDeque<Send>,
}

/// Settings of the streams.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Streams per chat address.
    pub streams_per_replica: usize,
    /// Rooms one connection may have joined.
    pub max_rooms_per_connection: usize,
    /// Timeouts and keepalive of the connections to chat.
    pub client: ClientOptions,
}

/// The pool of chat streams. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Upstream {
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

/// Messages recently encoded to JSON, by room and seq, shared by every
/// stream of the gateway. Bounded: the oldest entries go first.
#[derive(Debug)]
pub(crate) struct EncodedMessages {
    recent: Mutex<EncodedInner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct EncodedInner {
    frames: HashMap<(Arc<str>, i64), Utf8Bytes>,
    order: VecDeque<(Arc<str>, i64)>,
}

impl EncodedMessages {
    fn new(capacity: usize) -> Self {
        Self {
            recent: Mutex::new(EncodedInner::default()),
            capacity,
        }
    }

    /// The JSON of the message frame `response` (at `room`, `seq`),
    /// encoded now only if no stream has encoded it yet.
    fn get_or_encode(
        &self,
        room: &Arc<str>,
        seq: i64,
        response: &ChatResponse,
    ) -> Option<Utf8Bytes> {
        let key = (room.clone(), seq);
        if let Some(text) = self.lock().frames.get(&key) {
            return Some(text.clone());
        }
        // Encoded outside the lock; two streams racing on the same message
        // both encode it, which is harmless.
        let text = frames::encode_response(response)?;
        let mut recent = self.lock();
        if recent.frames.insert(key.clone(), text.clone()).is_none() {
            recent.order.push_back(key);
            while recent.order.len() > self.capacity {
                if let Some(oldest) = recent.order.pop_front() {
                    recent.frames.remove(&oldest);
                }
            }
        }
        Some(text)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EncodedInner> {
        // Entries are inserted and removed whole: a poisoned cache is
        // still consistent.
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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

impl Upstream {
    /// Starts keeping streams to every address of `url` until `stop`;
    /// `ready` holds while at least one is open.
    pub fn start(
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
    pub fn is_available(&self) -> bool {
        !self.lock().open.is_empty()
    }

    /// Places a new session on the least-loaded open stream.
    ///
    /// # Errors
    /// Gives the handle back when no stream is open.
    pub async fn open(&self, handle: Arc<SessionHandle>, token: String) -> Result<(), ()> {
        let mut command = Command::Open { handle, token };
        // A stream can break between the pick and the send; try the next.
        for _ in 0..4 {
            let Some(commands) = self.pick() else {
                return Err(());
            };
            if let Command::Open { handle, .. } = &command {
                handle.set_route(Some(commands.clone()));
            }
            match commands.send(command).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(returned)) => command = returned,
            }
        }
        Err(())
    }

    fn pick(&self) -> Option<mpsc::Sender<Command>> {
        let pool = self.lock();
        let least = pool
            .open
            .values()
            .min_by_key(|stream| stream.load.load(Ordering::Relaxed))?;
        least.load.fetch_add(1, Ordering::Relaxed);
        Some(least.commands.clone())
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
                let keep = found.contains(address);
                if !keep {
                    tracing::info!(%address, "chat replica no longer resolved; moving its sessions");
                    streams.cancel();
                }
                keep
            });
            for address in found {
                if replicas.contains_key(&address) {
                    continue;
                }
                let streams = stop.child_token();
                for _ in 0..self.inner.settings.streams_per_replica {
                    tokio::spawn(self.clone().keep_stream(address, streams.clone()));
                }
                replicas.insert(address, streams);
            }
        }
    }

    /// Keeps one stream to `address` open until `stop`, reopening it with
    /// backoff when it breaks.
    async fn keep_stream(self, address: SocketAddr, stop: CancellationToken) {
        let channel = match client::connect_one("chat", address, &self.inner.settings.client) {
            Ok(channel) => channel,
            Err(err) => {
                tracing::warn!(%address, error = %err, "unusable chat address");
                return;
            }
        };
        let mut failures: u32 = 0;
        while !stop.is_cancelled() {
            let (requests, outgoing) = mpsc::channel(REQUEST_QUEUE);
            let mut chat = ChatServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let opened = tokio::select! {
                opened = chat.gateway_stream(ReceiverStream::new(outgoing)) => opened,
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
            let stream = Stream {
                encoded: self.inner.encoded.clone(),
                requests,
                sessions: HashMap::new(),
                rooms: HashMap::new(),
                load,
                max_rooms: self.inner.settings.max_rooms_per_connection,
            };
            let orphans = stream.run(inbox, responses, &stop, address).await;
            self.stream_closed(slot, orphans);
        }
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
                let least = pool
                    .open
                    .values()
                    .min_by_key(|stream| stream.load.load(Ordering::Relaxed));
                match least {
                    Some(stream) => {
                        stream.load.fetch_add(1, Ordering::Relaxed);
                        stream.commands.clone()
                    }
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
                    handle.set_route(Some(commands));
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

/// One session on a stream.
#[derive(Debug)]
struct Session {
    handle: Arc<SessionHandle>,
    token: String,
    rooms: VecSet<Arc<str>>,
    /// Rooms rejoined after a move whose `joined` is still to come; it is
    /// not shown to the client, who never left.
    rejoining: VecSet<Arc<str>>,
    unacked: VecDeque<Send>,
}

impl Session {
    fn new(handle: Arc<SessionHandle>, token: String) -> Self {
        Self {
            handle,
            token,
            rooms: VecSet::new(),
            rejoining: VecSet::new(),
            unacked: VecDeque::new(),
        }
    }
}

/// A frame for chat from one session.
fn session_request(session_id: SessionId, frame: In) -> Up {
    Up::SessionRequest(SessionRequest {
        session_id,
        request: Some(ChatRequest { frame: Some(frame) }),
        trace_context: HashMap::new(),
    })
}

/// A session's place in a room.
#[derive(Debug)]
struct Recipient {
    handle: Arc<SessionHandle>,
    /// The highest seq delivered to the client.
    cursor: Option<i64>,
    /// The room's last seq when it was joined, for a rejoin before any
    /// message arrived.
    floor: i64,
}

impl Recipient {
    /// Whether the message at `seq` is new to this client; if so it
    /// becomes the cursor.
    fn admit(&mut self, seq: i64) -> bool {
        if self.cursor.is_some_and(|cursor| seq <= cursor) {
            return false;
        }
        self.cursor = Some(seq);
        true
    }

    fn since(&self) -> i64 {
        self.cursor.unwrap_or(self.floor)
    }
}

/// The task behind one open stream.
#[derive(Debug)]
struct Stream {
    encoded: Arc<EncodedMessages>,
    requests: mpsc::Sender<GatewayStreamRequest>,
    sessions: HashMap<SessionId, Session>,
    /// Room to the sessions on this stream that joined it.
    rooms: HashMap<Arc<str>, HashMap<SessionId, Recipient>>,
    load: Arc<AtomicUsize>,
    max_rooms: usize,
}

impl Stream {
    /// Serves the stream until it breaks or `stop` fires; returns its
    /// sessions, to be moved.
    async fn run(
        mut self,
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
                    Ok(Some(response)) => self.dispatch(response),
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
                Some(command) = inbox.recv() => self.command(command),
            }
            self.load.store(self.sessions.len(), Ordering::Relaxed);
        }
        // Commands already queued belong to sessions that now move.
        inbox.close();
        while let Ok(command) = inbox.try_recv() {
            self.command_after_loss(command);
        }
        self.into_orphans()
    }

    fn push(&self, kind: Up) -> bool {
        self.requests
            .try_send(GatewayStreamRequest { kind: Some(kind) })
            .is_ok()
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Open { handle, token } => {
                let id = handle.id;
                if !self.push(Up::OpenSession(OpenSession {
                    session_id: id,
                    access_token: token.clone(),
                })) {
                    handle.close(CloseReason::TryAgainLater);
                    return;
                }
                self.sessions.insert(id, Session::new(handle, token));
            }
            Command::Adopt(orphan) => self.adopt(*orphan),
            Command::Frame {
                handle,
                request,
                trace,
            } => self.forward(&handle, request, trace),
            Command::Close { session } => {
                if self.remove(session).is_some() {
                    self.push(Up::CloseSession(CloseSession {
                        session_id: session,
                    }));
                }
            }
        }
    }

    /// Resumes a moved session: opens it, rejoins its rooms after their
    /// cursors and sends its unacknowledged sends again.
    fn adopt(&mut self, orphan: Orphan) {
        let id = orphan.handle.id;
        if orphan.handle.has_ended() {
            return;
        }
        if !self.push(Up::OpenSession(OpenSession {
            session_id: id,
            access_token: orphan.token.clone(),
        })) {
            orphan.handle.close(CloseReason::TryAgainLater);
            return;
        }
        let mut session = self.settle(orphan);
        for room in &session.rooms {
            let since = self
                .rooms
                .get(room)
                .and_then(|members| members.get(&id))
                .map_or(0, Recipient::since);
            self.push(session_request(
                id,
                In::Join(Join {
                    room_id: room.to_string(),
                    since_seq: since,
                    replay: true,
                    ..Join::default()
                }),
            ));
        }
        session.rejoining.clone_from(&session.rooms);
        for send in &session.unacked {
            self.push(session_request(id, In::Send(send.clone())));
        }
        self.sessions.insert(id, session);
    }

    /// Registers a moved session's rooms on this stream, each with the
    /// cursor it arrived with, and returns the session.
    fn settle(&mut self, orphan: Orphan) -> Session {
        let id = orphan.handle.id;
        let mut session = Session::new(orphan.handle, orphan.token);
        session.unacked = orphan.unacked;
        for (room, since) in orphan.rooms {
            self.rooms.entry(room.clone()).or_default().insert(
                id,
                Recipient {
                    handle: session.handle.clone(),
                    cursor: (since > 0).then_some(since),
                    floor: since,
                },
            );
            session.rooms.insert(room);
        }
        session
    }

    fn forward(
        &mut self,
        handle: &SessionHandle,
        request: ChatRequest,
        trace_context: HashMap<String, String>,
    ) {
        let Some(session) = self.sessions.get_mut(&handle.id) else {
            // The session moved on after this frame was routed here.
            unavailable(handle, &request);
            return;
        };
        match &request.frame {
            Some(In::Join(join)) => {
                let joined =
                    !join.room_id.is_empty() && session.rooms.contains(join.room_id.as_str());
                if joined {
                    // Asked to replay again: let the replay through.
                    if join.since_seq > 0
                        && let Some(recipient) = self
                            .rooms
                            .get_mut(join.room_id.as_str())
                            .and_then(|members| members.get_mut(&handle.id))
                    {
                        recipient.cursor = Some(join.since_seq);
                    }
                } else if session.rooms.len() >= self.max_rooms {
                    let error = FrameError {
                        code: Code::ResourceExhausted,
                        message: format!(
                            "at most {} rooms may be joined on one connection",
                            self.max_rooms
                        ),
                        client_id: String::new(),
                        room_id: join.room_id.clone(),
                    };
                    handle.deliver(FrameKind::Error, error.to_frame());
                    return;
                }
            }
            Some(In::Send(send))
                if !send.client_id.is_empty() && session.unacked.len() < MAX_UNACKED =>
            {
                session.unacked.push_back(send.clone());
            }
            Some(In::Refresh(refresh)) => refresh.token.clone_into(&mut session.token),
            _ => {}
        }
        let echo = request.echo();
        if !self.push(Up::SessionRequest(SessionRequest {
            session_id: handle.id,
            request: Some(request),
            trace_context,
        })) {
            let error = FrameError {
                code: Code::ResourceExhausted,
                message: "the chat link is busy; retry shortly".into(),
                client_id: echo.0,
                room_id: echo.1,
            };
            handle.deliver(FrameKind::Error, error.to_frame());
        }
    }

    fn remove(&mut self, id: SessionId) -> Option<Session> {
        let session = self.sessions.remove(&id)?;
        for room in &session.rooms {
            if let Some(members) = self.rooms.get_mut(room) {
                members.remove(&id);
                if members.is_empty() {
                    self.rooms.remove(room);
                }
            }
        }
        Some(session)
    }

    fn dispatch(&mut self, response: GatewayStreamResponse) {
        match response.kind {
            Some(Down::SessionResponse(response)) => {
                if let Some(frame) = response.response {
                    self.deliver_to_session(response.session_id, &frame);
                }
            }
            Some(Down::RoomEvent(event)) => self.deliver_to_room(&event),
            Some(Down::SessionClosed(closed)) => {
                if let Some(session) = self.remove(closed.session_id) {
                    tracing::debug!(code = %closed.code, reason = %closed.message, "chat closed a session");
                    session.handle.close(if closed.code == "UNAUTHENTICATED" {
                        CloseReason::TokenExpired
                    } else {
                        CloseReason::ServerError
                    });
                }
            }
            None => {}
        }
    }

    fn deliver_to_session(&mut self, id: SessionId, response: &ChatResponse) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(frame) = &response.frame else {
            return;
        };
        match frame {
            Out::Joined(joined) => {
                if session.rejoining.remove(joined.room_id.as_str()) {
                    return;
                }
                // Sessions in one room share one copy of its id.
                let room: Arc<str> = match self.rooms.get_key_value(joined.room_id.as_str()) {
                    Some((room, _)) => room.clone(),
                    None => Arc::from(joined.room_id.as_str()),
                };
                if session.rooms.insert(room.clone()) {
                    self.rooms.entry(room).or_default().insert(
                        id,
                        Recipient {
                            handle: session.handle.clone(),
                            cursor: None,
                            floor: joined.last_seq,
                        },
                    );
                }
            }
            Out::Left(left) => {
                session.rooms.remove(left.room_id.as_str());
                if let Some(members) = self.rooms.get_mut(left.room_id.as_str()) {
                    members.remove(&id);
                    if members.is_empty() {
                        self.rooms.remove(left.room_id.as_str());
                    }
                }
            }
            Out::Message(message) => {
                let fresh = self
                    .rooms
                    .get_mut(message.room_id.as_str())
                    .and_then(|members| members.get_mut(&id))
                    .is_none_or(|recipient| recipient.admit(message.seq));
                if !fresh {
                    return;
                }
            }
            Out::Ack(ack) => {
                if !ack.client_id.is_empty()
                    && let Some(at) = session
                        .unacked
                        .iter()
                        .position(|s| s.client_id == ack.client_id)
                {
                    session.unacked.remove(at);
                }
            }
            Out::Error(error) => {
                if !error.room_id.is_empty() && session.rejoining.remove(error.room_id.as_str()) {
                    // The room could not be rejoined: the client hears
                    // why and stops receiving it.
                    session.rooms.remove(error.room_id.as_str());
                    if let Some(members) = self.rooms.get_mut(error.room_id.as_str()) {
                        members.remove(&id);
                    }
                }
                if !error.client_id.is_empty()
                    && let Some(at) = session
                        .unacked
                        .iter()
                        .position(|s| s.client_id == error.client_id)
                {
                    session.unacked.remove(at);
                }
            }
            // The gateway answered the refresh itself.
            Out::Refreshed(_) => return,
            _ => {}
        }
        let text = match frame {
            Out::Message(message) => self.encoded.get_or_encode(
                &Arc::from(message.room_id.as_str()),
                message.seq,
                response,
            ),
            _ => frames::encode_response(response),
        };
        if let Some(text) = text {
            session.handle.deliver(kind_of(frame), text);
        }
    }

    fn deliver_to_room(&mut self, event: &RoomEvent) {
        let Some(room) = self
            .rooms
            .get_key_value(event.room_id.as_str())
            .map(|(room, _)| room.clone())
        else {
            return;
        };
        let Some(response) = &event.response else {
            return;
        };
        let Some(frame) = &response.frame else {
            return;
        };
        let text = match frame {
            Out::Message(message) => self.encoded.get_or_encode(&room, message.seq, response),
            _ => frames::encode_response(response),
        };
        let Some(text) = text else {
            return;
        };
        let Some(members) = self.rooms.get_mut(&room) else {
            return;
        };
        let kind = kind_of(frame);
        match frame {
            Out::Message(message) => {
                for recipient in members.values_mut() {
                    if recipient.admit(message.seq) {
                        recipient.handle.deliver(kind, text.clone());
                    }
                }
            }
            Out::Typing(_) | Out::Presence(_) => {
                for recipient in members.values() {
                    if *recipient.handle.user_id != *event.except_user_id {
                        recipient.handle.offer(kind, text.clone());
                    }
                }
            }
            _ => {
                for recipient in members.values() {
                    if *recipient.handle.user_id != *event.except_user_id {
                        recipient.handle.deliver(kind, text.clone());
                    }
                }
            }
        }
    }

    /// A command that arrived after the stream broke: sessions join the
    /// orphans, sends with a `client_id` wait to be sent again, and other
    /// frames are answered UNAVAILABLE (the client may retry).
    fn command_after_loss(&mut self, command: Command) {
        match command {
            Command::Open { handle, token } => {
                self.sessions.insert(handle.id, Session::new(handle, token));
            }
            Command::Adopt(orphan) => {
                let id = orphan.handle.id;
                let session = self.settle(*orphan);
                self.sessions.insert(id, session);
            }
            Command::Frame {
                handle, request, ..
            } => {
                let Some(session) = self.sessions.get_mut(&handle.id) else {
                    unavailable(&handle, &request);
                    return;
                };
                match request.frame {
                    Some(In::Send(send))
                        if !send.client_id.is_empty() && session.unacked.len() < MAX_UNACKED =>
                    {
                        session.unacked.push_back(send);
                    }
                    Some(In::Refresh(refresh)) => session.token = refresh.token,
                    frame => unavailable(&handle, &ChatRequest { frame }),
                }
            }
            Command::Close { session } => {
                self.remove(session);
            }
        }
    }

    fn into_orphans(mut self) -> Vec<Orphan> {
        let mut orphans = Vec::with_capacity(self.sessions.len());
        for (id, session) in std::mem::take(&mut self.sessions) {
            session.handle.set_route(None);
            let rooms = session
                .rooms
                .iter()
                .map(|room| {
                    let since = self
                        .rooms
                        .get(room)
                        .and_then(|members| members.get(&id))
                        .map_or(0, Recipient::since);
                    (room.clone(), since)
                })
                .collect();
            orphans.push(Orphan {
                handle: session.handle,
                token: session.token,
                rooms,
                unacked: session.unacked,
            });
        }
        self.load.store(0, Ordering::Relaxed);
        orphans
    }
}

/// Answers a frame that reached no chat replica.
pub(crate) fn unavailable(handle: &SessionHandle, request: &ChatRequest) {
    let (client_id, room_id) = request.echo();
    let error = FrameError {
        code: Code::Unavailable,
        message: "chat is moving this connection to another replica; retry".into(),
        client_id,
        room_id,
    };
    handle.deliver(FrameKind::Error, error.to_frame());
}

/// The counter label of a server frame.
pub fn kind_of(frame: &Out) -> FrameKind {
    match frame {
        Out::Joined(_) => FrameKind::Joined,
        Out::Left(_) => FrameKind::Left,
        Out::Message(_) => FrameKind::Message,
        Out::Ack(_) => FrameKind::Ack,
        Out::Typing(_) => FrameKind::Typing,
        Out::Presence(_) => FrameKind::Presence,
        Out::History(_) => FrameKind::History,
        Out::Pong(_) => FrameKind::Pong,
        Out::Refreshed(_) => FrameKind::Refreshed,
        Out::Error(_) => FrameKind::Error,
    }
}

#[cfg(test)]
mod tests {
    use parley_proto::chat::v1::ChatMessage;

    use super::*;

    fn message(room: &str, seq: i64) -> ChatResponse {
        ChatResponse {
            frame: Some(Out::Message(ChatMessage {
                room_id: room.into(),
                seq,
                ..ChatMessage::default()
            })),
        }
    }

    #[test]
    fn a_message_is_encoded_once_and_its_bytes_shared() {
        let encoded = EncodedMessages::new(2);
        let room: Arc<str> = Arc::from("r");
        let first = encoded.get_or_encode(&room, 1, &message("r", 1)).unwrap();
        let again = encoded.get_or_encode(&room, 1, &message("r", 1)).unwrap();
        assert_eq!(
            first.as_str().as_ptr(),
            again.as_str().as_ptr(),
            "the same buffer"
        );
        encoded.get_or_encode(&room, 2, &message("r", 2));
        encoded.get_or_encode(&room, 3, &message("r", 3));
        let evicted = encoded.get_or_encode(&room, 1, &message("r", 1)).unwrap();
        assert_ne!(
            first.as_str().as_ptr(),
            evicted.as_str().as_ptr(),
            "the oldest was dropped"
        );
        assert_eq!(first, evicted);
    }

    #[test]
    fn cursors_drop_what_a_client_already_has() {
        let handle = SessionHandle::new(1, Arc::from("u"), 4, i64::MAX);
        let mut recipient = Recipient {
            handle,
            cursor: None,
            floor: 5,
        };
        assert_eq!(
            recipient.since(),
            5,
            "before any message: the join's last_seq"
        );
        assert!(recipient.admit(6));
        assert!(!recipient.admit(6), "a duplicate");
        assert!(!recipient.admit(4), "an old one");
        assert!(recipient.admit(7));
        assert_eq!(recipient.since(), 7);
    }
}
