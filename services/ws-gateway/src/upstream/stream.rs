//! The state of one chat stream: its sessions, the rooms they joined and,
//! per room and session, the highest `seq` the client has received.
//!
//! It is a plain state machine, driven by the stream's task (see the
//! parent module) and tested here on its own: [`Stream::command`] takes
//! what connections ask for and writes requests for chat, [`Stream::dispatch`]
//! takes what chat answers and queues frames for the connections, and
//! [`Stream::into_orphans`] hands the sessions over when the stream breaks,
//! each with what it needs to resume elsewhere ([`Stream::adopt`]).
//!
//! The cursor is what makes a move lossless: a moved session rejoins every
//! room with `since_seq` at its cursor, and messages at or below a cursor
//! are dropped, so a client sees each message once, in order, and never
//! notices the move.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use parley_proto::chat::v1::{
    ChatRequest, ChatResponse, CloseSession, GatewayStreamRequest, GatewayStreamResponse, Join,
    OpenSession, RoomEvent, SessionRequest, chat_request::Frame as In, chat_response::Frame as Out,
    gateway_stream_request::Kind as Up, gateway_stream_response::Kind as Down,
};
use parley_runtime::{grpc::status::code_from_name, vec_set::VecSet};
use tokio::sync::mpsc;
use tonic::Code;

use super::{Command, encoded::EncodedMessages};
use crate::{
    frames::{self, FrameError},
    metrics::FrameKind,
    session::{CloseReason, SessionHandle, SessionId},
};

/// Writes (sends, edits, deletions, reactions) with a `client_id` kept per
/// session until acknowledged, to be sent again (idempotently) after a
/// move.
const MAX_UNACKED: usize = 256;

/// The `client_id` of a frame that writes to a room's timeline, when it
/// has one: such a frame may be sent again after a move.
fn write_key(frame: &In) -> Option<&str> {
    let client_id = match frame {
        In::Send(send) => &send.client_id,
        In::Edit(edit) => &edit.client_id,
        In::Delete(delete) => &delete.client_id,
        In::React(react) => &react.client_id,
        _ => return None,
    };
    (!client_id.is_empty()).then_some(client_id.as_str())
}

/// The room and seq of a timeline event; `None` for other frames.
fn timeline_position(frame: &Out) -> Option<(&str, i64)> {
    match frame {
        Out::Message(message) => Some((&message.room_id, message.seq)),
        Out::MessageEdited(edited) => Some((&edited.room_id, edited.seq)),
        Out::MessageDeleted(deleted) => Some((&deleted.room_id, deleted.seq)),
        Out::Reaction(reaction) => Some((&reaction.room_id, reaction.seq)),
        Out::MemberUpdate(update) => Some((&update.room_id, update.seq)),
        Out::RoomUpdated(update) => Some((&update.room_id, update.seq)),
        _ => None,
    }
}

/// Whether a timeline frame's encoding may be shared through the cache: a
/// message replayed after its deletion differs from the live one (its
/// text is gone), so it is encoded on its own.
fn shareable(frame: &Out) -> bool {
    !matches!(frame, Out::Message(message) if message.deleted)
}

/// A session between two streams, with what it needs to resume.
#[derive(Debug)]
pub(super) struct Orphan {
    pub(super) handle: Arc<SessionHandle>,
    token: String,
    /// Each joined room and the seq to rejoin it after.
    rooms: Vec<(Arc<str>, i64)>,
    unacked: VecDeque<In>,
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
    unacked: VecDeque<In>,
}

impl Session {
    /// Boxed: the stream's table, sized for growth, then holds a pointer
    /// per spare slot rather than a whole session.
    fn new(handle: Arc<SessionHandle>, token: String) -> Box<Self> {
        Box::new(Self {
            handle,
            token,
            rooms: VecSet::new(),
            rejoining: VecSet::new(),
            unacked: VecDeque::new(),
        })
    }

    /// Keeps a write with a `client_id` until chat acknowledges it.
    fn remember(&mut self, frame: &In) {
        if write_key(frame).is_some() && self.unacked.len() < MAX_UNACKED {
            self.unacked.push_back(frame.clone());
        }
    }

    /// Forgets the write answered by an `ack` or `error` for `client_id`.
    fn answered(&mut self, client_id: &str) {
        if !client_id.is_empty()
            && let Some(at) = self
                .unacked
                .iter()
                .position(|frame| write_key(frame) == Some(client_id))
        {
            self.unacked.remove(at);
        }
    }
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

/// The sessions of one open stream.
#[derive(Debug)]
pub(super) struct Stream {
    encoded: Arc<EncodedMessages>,
    requests: mpsc::Sender<GatewayStreamRequest>,
    sessions: HashMap<SessionId, Box<Session>>,
    /// Room to the sessions on this stream that joined it; a room without
    /// sessions has no entry.
    rooms: HashMap<Arc<str>, HashMap<SessionId, Recipient>>,
    load: Arc<AtomicUsize>,
    max_rooms: usize,
}

impl Stream {
    /// A stream writing its requests for chat to `requests`, and counting
    /// its sessions in `load` for placement.
    pub(super) fn new(
        encoded: Arc<EncodedMessages>,
        requests: mpsc::Sender<GatewayStreamRequest>,
        load: Arc<AtomicUsize>,
        max_rooms: usize,
    ) -> Self {
        Self {
            encoded,
            requests,
            sessions: HashMap::new(),
            rooms: HashMap::new(),
            load,
            max_rooms,
        }
    }

    /// Publishes the number of sessions, which placement compares.
    pub(super) fn report_load(&self) {
        self.load.store(self.sessions.len(), Ordering::Relaxed);
    }

    fn push(&self, kind: Up) -> bool {
        self.requests
            .try_send(GatewayStreamRequest { kind: Some(kind) })
            .is_ok()
    }

    /// What a connection asks of a working stream.
    pub(super) fn command(&mut self, command: Command) {
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
                &session.token,
            ));
        }
        session.rejoining.clone_from(&session.rooms);
        for write in &session.unacked {
            self.push(session_request(id, write.clone(), &session.token));
        }
        self.sessions.insert(id, session);
    }

    /// Registers a moved session's rooms on this stream, each with the
    /// cursor it arrived with, and returns the session.
    fn settle(&mut self, orphan: Orphan) -> Box<Session> {
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
            Some(frame @ (In::Send(_) | In::Edit(_) | In::Delete(_) | In::React(_))) => {
                session.remember(frame);
            }
            Some(In::Refresh(refresh)) => refresh.token.clone_into(&mut session.token),
            _ => {}
        }
        let access_token = token_for(&request, &session.token);
        let echo = request.echo();
        if !self.push(Up::SessionRequest(SessionRequest {
            session_id: handle.id,
            request: Some(request),
            trace_context,
            access_token,
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

    /// Forgets a session and its place in every room.
    fn remove(&mut self, id: SessionId) -> Option<Box<Session>> {
        let session = self.sessions.remove(&id)?;
        for room in &session.rooms {
            self.remove_recipient(room, id);
        }
        Some(session)
    }

    /// Takes a session out of one room: the one way a session stops
    /// receiving a room here, whether it left, could not rejoin after a
    /// move, or is gone.
    fn leave_room(&mut self, id: SessionId, room: &str) {
        if let Some(session) = self.sessions.get_mut(&id) {
            session.rooms.remove(room);
            session.rejoining.remove(room);
        }
        self.remove_recipient(room, id);
    }

    /// Removes a session from a room's recipients, and the room once it
    /// has none.
    fn remove_recipient(&mut self, room: &str, id: SessionId) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.remove(&id);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// What chat sent on the stream.
    pub(super) fn dispatch(&mut self, response: GatewayStreamResponse) {
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
                    session.handle.close(match code_from_name(&closed.code) {
                        Some(Code::Unauthenticated) => CloseReason::TokenExpired,
                        _ => CloseReason::ServerError,
                    });
                }
            }
            None => {}
        }
    }

    fn deliver_to_session(&mut self, id: SessionId, response: &ChatResponse) {
        let Some(frame) = &response.frame else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&id) else {
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
            Out::Left(left) => self.leave_room(id, &left.room_id),
            frame if timeline_position(frame).is_some() => {
                let fresh = timeline_position(frame).is_none_or(|(room, seq)| {
                    self.rooms
                        .get_mut(room)
                        .and_then(|members| members.get_mut(&id))
                        .is_none_or(|recipient| recipient.admit(seq))
                });
                if !fresh {
                    return;
                }
            }
            Out::Ack(ack) => session.answered(&ack.client_id),
            Out::Error(error) => {
                session.answered(&error.client_id);
                if !error.room_id.is_empty() && session.rejoining.contains(error.room_id.as_str()) {
                    // The room could not be rejoined: the client hears
                    // why and stops receiving it.
                    self.leave_room(id, &error.room_id);
                }
            }
            // The gateway answered the refresh itself.
            Out::Refreshed(_) => return,
            _ => {}
        }
        let text = match timeline_position(frame) {
            Some((room, seq)) if shareable(frame) => {
                self.encoded.get_or_encode(&Arc::from(room), seq, response)
            }
            _ => frames::encode_response(response),
        };
        if let (Some(text), Some(session)) = (text, self.sessions.get(&id)) {
            session.handle.deliver(FrameKind::of_response(frame), text);
        }
    }

    fn deliver_to_room(&mut self, event: &RoomEvent) {
        let Some(response) = &event.response else {
            return;
        };
        let Some(frame) = &response.frame else {
            return;
        };
        let Some(room) = self
            .rooms
            .get_key_value(event.room_id.as_str())
            .map(|(room, _)| room.clone())
        else {
            return;
        };
        let position = timeline_position(frame);
        let text = match position {
            Some((_, seq)) if shareable(frame) => self.encoded.get_or_encode(&room, seq, response),
            _ => frames::encode_response(response),
        };
        let Some(text) = text else {
            return;
        };
        let Some(members) = self.rooms.get_mut(&room) else {
            return;
        };
        let kind = FrameKind::of_response(frame);
        match (position, frame) {
            (Some((_, seq)), _) => {
                for recipient in members.values_mut() {
                    if recipient.admit(seq) {
                        recipient.handle.deliver(kind, text.clone());
                    }
                }
            }
            (None, Out::Typing(_) | Out::Presence(_) | Out::Read(_)) => {
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
    pub(super) fn command_after_loss(&mut self, command: Command) {
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
                    Some(frame) if write_key(&frame).is_some() => session.remember(&frame),
                    Some(In::Refresh(refresh)) => session.token = refresh.token,
                    frame => unavailable(&handle, &ChatRequest { frame }),
                }
            }
            Command::Close { session } => {
                self.remove(session);
            }
        }
    }

    /// Hands every session over, each with its rooms' cursors, its token
    /// and its unacknowledged sends.
    pub(super) fn into_orphans(mut self) -> Vec<Orphan> {
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

/// A frame for chat from one session whose token is `token`.
fn session_request(session_id: SessionId, frame: In, token: &str) -> Up {
    let request = ChatRequest { frame: Some(frame) };
    Up::SessionRequest(SessionRequest {
        session_id,
        access_token: token_for(&request, token),
        request: Some(request),
        ..SessionRequest::default()
    })
}

/// The token a frame travels with: the session's, for a send that names
/// attachments (chat looks them up in media as the sender); none for the
/// rest, so chat need not keep a copy of every session's token.
fn token_for(request: &ChatRequest, token: &str) -> String {
    match &request.frame {
        Some(In::Send(send)) if !send.attachments.is_empty() => token.to_owned(),
        _ => String::new(),
    }
}

/// Answers a frame that reached no chat replica.
pub(super) fn unavailable(handle: &SessionHandle, request: &ChatRequest) {
    let (client_id, room_id) = request.echo();
    let error = FrameError {
        code: Code::Unavailable,
        message: "chat is moving this connection to another replica; retry".into(),
        client_id,
        room_id,
    };
    handle.deliver(FrameKind::Error, error.to_frame());
}

#[cfg(test)]
mod tests {
    use parley_proto::chat::v1::{
        Ack, ChatMessage, Error as ErrorOut, GatewayStreamResponse, Joined, Leave, Left, React,
        Reaction, Send as SendFrame, SessionClosed, SessionResponse, chat_request::Frame as In,
    };
    use serde_json::Value;

    use super::*;
    use crate::session::Grant;

    /// A stream's state with the receiving end of its requests to chat.
    struct Rig {
        stream: Stream,
        requests: mpsc::Receiver<GatewayStreamRequest>,
    }

    fn rig(max_rooms: usize) -> Rig {
        let (requests, receiver) = mpsc::channel(64);
        Rig {
            stream: Stream::new(
                Arc::new(EncodedMessages::new(16)),
                requests,
                Arc::new(AtomicUsize::new(0)),
                max_rooms,
            ),
            requests: receiver,
        }
    }

    impl Rig {
        /// The requests written for chat since the last call.
        fn sent(&mut self) -> Vec<Up> {
            std::iter::from_fn(|| self.requests.try_recv().ok())
                .filter_map(|request| request.kind)
                .collect()
        }

        fn open(&mut self, id: SessionId) -> Arc<SessionHandle> {
            let handle = SessionHandle::new(
                id,
                Arc::from(format!("u{id}")),
                64,
                i64::MAX,
                Grant::default(),
            );
            self.stream.command(Command::Open {
                handle: handle.clone(),
                token: format!("token-{id}"),
            });
            handle
        }

        fn frame(&mut self, handle: &Arc<SessionHandle>, frame: In) {
            self.stream.command(Command::Frame {
                handle: handle.clone(),
                request: ChatRequest { frame: Some(frame) },
                trace: HashMap::new(),
            });
        }

        fn chat_to_session(&mut self, id: SessionId, frame: Out) {
            self.stream.dispatch(GatewayStreamResponse {
                kind: Some(Down::SessionResponse(SessionResponse {
                    session_id: id,
                    response: Some(ChatResponse { frame: Some(frame) }),
                })),
            });
        }

        fn chat_to_room(&mut self, room: &str, frame: Out) {
            self.stream.dispatch(GatewayStreamResponse {
                kind: Some(Down::RoomEvent(RoomEvent {
                    room_id: room.into(),
                    response: Some(ChatResponse { frame: Some(frame) }),
                    except_user_id: String::new(),
                })),
            });
        }

        fn joined(&mut self, id: SessionId, room: &str, last_seq: i64) {
            self.chat_to_session(
                id,
                Out::Joined(Joined {
                    room_id: room.into(),
                    last_seq,
                    ..Joined::default()
                }),
            );
        }

        fn rooms(&self) -> Vec<&str> {
            let mut rooms: Vec<&str> = self.stream.rooms.keys().map(|room| &**room).collect();
            rooms.sort_unstable();
            rooms
        }
    }

    fn message(room: &str, seq: i64) -> Out {
        Out::Message(ChatMessage {
            room_id: room.into(),
            seq,
            ..ChatMessage::default()
        })
    }

    fn send(client_id: &str) -> SendFrame {
        SendFrame {
            room_id: "r".into(),
            content: "hi".into(),
            client_id: client_id.into(),
            reply_to: 0,
            attachments: Vec::new(),
        }
    }

    /// The frames queued for a connection, each as its kind and body
    /// (`{"message": {...}}` is `("message", {...})`).
    fn received(handle: &SessionHandle) -> Vec<(String, Value)> {
        handle
            .take_frames(usize::MAX)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|frame| {
                let json: Value = serde_json::from_str(frame.text.as_str()).expect("JSON");
                let (kind, body) = json.as_object()?.iter().next()?;
                Some((kind.clone(), body.clone()))
            })
            .collect()
    }

    fn seqs(handle: &SessionHandle) -> Vec<i64> {
        received(handle)
            .iter()
            .filter(|(kind, _)| kind == "message")
            .filter_map(|(_, json)| json["seq"].as_i64())
            .collect()
    }

    #[test]
    fn cursors_drop_what_a_client_already_has() {
        let handle = SessionHandle::new(1, Arc::from("u"), 4, i64::MAX, Grant::default());
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

    /// Chat keeps no token for a gateway's session: it comes along with a
    /// send that names attachments, and again when that send is replayed
    /// on the replica the session moves to.
    #[test]
    fn the_token_travels_only_with_sends_that_name_attachments() {
        fn tokens(sent: &[Up]) -> Vec<&str> {
            sent.iter()
                .filter_map(|up| match up {
                    Up::SessionRequest(request) => Some(request.access_token.as_str()),
                    _ => None,
                })
                .collect()
        }
        let mut first = rig(8);
        let ann = first.open(1);
        first.sent();
        first.frame(&ann, In::Send(send("plain")));
        first.frame(
            &ann,
            In::Send(SendFrame {
                attachments: vec!["0".repeat(32)],
                ..send("with-file")
            }),
        );
        assert_eq!(tokens(&first.sent()), ["", "token-1"]);

        let mut other = rig(8);
        for orphan in first.stream.into_orphans() {
            other.stream.command(Command::Adopt(Box::new(orphan)));
        }
        assert_eq!(
            tokens(&other.sent()),
            ["", "token-1"],
            "both unacknowledged sends replayed, the token with the second"
        );
    }

    #[test]
    fn a_session_opens_joins_and_receives_each_message_once() {
        let mut rig = rig(8);
        let ann = rig.open(1);
        assert!(matches!(&rig.sent()[..], [Up::OpenSession(open)] if open.session_id == 1));
        rig.frame(
            &ann,
            In::Join(Join {
                room_id: "r".into(),
                ..Join::default()
            }),
        );
        assert!(matches!(&rig.sent()[..], [Up::SessionRequest(_)]));
        rig.joined(1, "r", 5);
        assert_eq!(received(&ann)[0].0, "joined");
        for seq in [6, 6, 4, 7] {
            rig.chat_to_room("r", message("r", seq));
        }
        assert_eq!(seqs(&ann), [6, 7], "duplicates and old messages dropped");
        rig.chat_to_room("elsewhere", message("elsewhere", 1));
        assert!(received(&ann).is_empty(), "a room not joined");
    }

    #[test]
    fn a_move_rejoins_after_the_cursor_and_resends_what_was_not_acknowledged() {
        let mut rig = rig(8);
        let ann = rig.open(1);
        rig.joined(1, "r", 3);
        rig.chat_to_room("r", message("r", 4));
        rig.frame(&ann, In::Send(send("c1")));
        rig.frame(&ann, In::Send(send("c2")));
        rig.frame(
            &ann,
            In::React(React {
                room_id: "r".into(),
                seq: 4,
                emoji: "👍".into(),
                remove: false,
                client_id: "r1".into(),
            }),
        );
        rig.chat_to_session(
            1,
            Out::Ack(Ack {
                client_id: "c1".into(),
                seq: 5,
                ..Ack::default()
            }),
        );
        rig.sent();
        received(&ann);

        let orphans = rig.stream.into_orphans();
        assert_eq!(orphans.len(), 1);
        assert!(
            ann.route().is_none(),
            "between streams, frames have no route"
        );

        let mut other = self::rig(8);
        for orphan in orphans {
            other.stream.command(Command::Adopt(Box::new(orphan)));
        }
        let sent = other.sent();
        assert!(matches!(&sent[0], Up::OpenSession(open) if open.access_token == "token-1"));
        let frames: Vec<&In> = sent[1..]
            .iter()
            .filter_map(|up| match up {
                Up::SessionRequest(request) => request.request.as_ref()?.frame.as_ref(),
                _ => None,
            })
            .collect();
        assert!(
            matches!(frames[0], In::Join(join) if join.room_id == "r" && join.since_seq == 4 && join.replay),
            "{frames:?}"
        );
        assert!(
            matches!(
                &frames[1..],
                [In::Send(send), In::React(react)] if send.client_id == "c2" && react.client_id == "r1"
            ),
            "only the unacknowledged writes again: {frames:?}"
        );

        other.joined(1, "r", 7);
        other.chat_to_session(1, message("r", 4));
        other.chat_to_session(1, message("r", 5));
        other.chat_to_room("r", message("r", 6));
        let reaction = Out::Reaction(Reaction {
            room_id: "r".into(),
            seq: 7,
            target_seq: 4,
            ..Reaction::default()
        });
        other.chat_to_session(1, reaction.clone());
        other.chat_to_room("r", reaction);
        let frames = received(&ann);
        assert!(
            frames.iter().all(|(kind, _)| kind != "joined"),
            "the client never left, so hears no second joined"
        );
        let seqs: Vec<i64> = frames
            .iter()
            .filter_map(|(_, json)| json["seq"].as_i64())
            .collect();
        assert_eq!(
            seqs,
            [5, 6, 7],
            "the replay resumes after the cursor, every timeline event once"
        );
    }

    /// Moves `rig`'s sessions to a fresh stream, as when chat is lost, and
    /// answers the seq each rejoin of `room` asks to resume after.
    fn move_to_new_stream(rig: Rig, room: &str) -> (Rig, i64) {
        let orphans = rig.stream.into_orphans();
        let mut other = self::rig(8);
        for orphan in orphans {
            other.stream.command(Command::Adopt(Box::new(orphan)));
        }
        let since = other
            .sent()
            .iter()
            .find_map(|up| match up {
                Up::SessionRequest(request) => match request.request.as_ref()?.frame.as_ref()? {
                    In::Join(join) if join.room_id == room && join.replay => Some(join.since_seq),
                    _ => None,
                },
                _ => None,
            })
            .expect("a rejoin");
        (other, since)
    }

    proptest::proptest! {
        /// However often a session moves between streams, and however much
        /// each new stream's replay overlaps what was sent before, the
        /// client receives every event once, in order.
        #[test]
        fn across_moves_each_event_reaches_the_client_once_in_order(
            total in 1i64..50,
            moves in proptest::collection::vec((0i64..50, 0i64..6), 0..6),
        ) {
            let mut rig = rig(8);
            let ann = rig.open(1);
            rig.joined(1, "r", 0);
            let mut received: Vec<i64> = Vec::new();
            // What chat has delivered live so far.
            let mut live = 0;
            for (cut, overlap) in moves {
                let cut = cut.min(total);
                for seq in (live - overlap + 1).max(1)..=cut {
                    rig.chat_to_room("r", message("r", seq));
                }
                live = live.max(cut);
                received.extend(seqs(&ann));
                let (mut other, since) = move_to_new_stream(rig, "r");
                proptest::prop_assert_eq!(since, received.last().copied().unwrap_or(0));
                other.joined(1, "r", live);
                // The replay starts after `since`, perhaps repeating some of
                // it, and live events may repeat its end.
                for seq in (since - overlap + 1).max(1)..=live {
                    other.chat_to_session(1, message("r", seq));
                }
                rig = other;
            }
            for seq in (live - 2).max(1)..=total {
                rig.chat_to_room("r", message("r", seq));
            }
            received.extend(seqs(&ann));
            proptest::prop_assert_eq!(received, (1..=total).collect::<Vec<_>>());
        }
    }

    #[test]
    fn leaving_removes_the_session_and_an_emptied_room() {
        let mut rig = rig(8);
        let ann = rig.open(1);
        let bob = rig.open(2);
        rig.joined(1, "r", 0);
        rig.joined(2, "r", 0);
        rig.chat_to_session(
            1,
            Out::Left(Left {
                room_id: "r".into(),
            }),
        );
        assert_eq!(rig.rooms(), ["r"], "bob is still there");
        rig.chat_to_room("r", message("r", 1));
        assert_eq!(seqs(&bob), [1]);
        assert!(
            received(&ann).iter().all(|(kind, _)| kind != "message"),
            "ann left"
        );
        rig.chat_to_session(
            2,
            Out::Left(Left {
                room_id: "r".into(),
            }),
        );
        assert!(rig.rooms().is_empty(), "an emptied room is forgotten");

        rig.joined(1, "s", 0);
        rig.stream.command(Command::Close { session: 1 });
        assert!(rig.rooms().is_empty(), "a closed session leaves its rooms");
        assert!(
            matches!(rig.sent().last(), Some(Up::CloseSession(close)) if close.session_id == 1)
        );
    }

    #[test]
    fn a_room_that_cannot_be_rejoined_after_a_move_is_dropped_whole() {
        let mut rig = rig(8);
        let ann = rig.open(1);
        rig.joined(1, "r", 2);
        let orphans = rig.stream.into_orphans();
        let mut other = self::rig(8);
        for orphan in orphans {
            other.stream.command(Command::Adopt(Box::new(orphan)));
        }
        assert_eq!(other.rooms(), ["r"]);
        other.chat_to_session(
            1,
            Out::Error(ErrorOut {
                code: "PERMISSION_DENIED".into(),
                message: "no longer a member".into(),
                room_id: "r".into(),
                client_id: String::new(),
            }),
        );
        assert!(other.rooms().is_empty(), "no room left without sessions");
        assert_eq!(
            received(&ann).last().map(|(kind, _)| kind.as_str()),
            Some("error")
        );
        other.chat_to_room("r", message("r", 3));
        assert!(received(&ann).is_empty());
    }

    #[test]
    fn joins_past_the_limit_are_refused_here() {
        let mut rig = rig(1);
        let ann = rig.open(1);
        rig.sent();
        rig.joined(1, "r", 0);
        received(&ann);
        rig.frame(
            &ann,
            In::Join(Join {
                room_id: "s".into(),
                ..Join::default()
            }),
        );
        assert!(rig.sent().is_empty(), "not forwarded");
        let frames = received(&ann);
        assert_eq!(frames[0].1["code"], "RESOURCE_EXHAUSTED");
        rig.frame(
            &ann,
            In::Join(Join {
                room_id: "r".into(),
                since_seq: 0,
                replay: true,
                ..Join::default()
            }),
        );
        assert_eq!(
            rig.sent().len(),
            1,
            "a room already joined may be joined again"
        );
        rig.frame(
            &ann,
            In::Leave(Leave {
                room_id: "r".into(),
            }),
        );
        assert_eq!(rig.sent().len(), 1);
    }

    #[test]
    fn chat_closing_a_session_closes_its_connection_with_the_matching_code() {
        let mut rig = rig(8);
        let ann = rig.open(1);
        let bob = rig.open(2);
        for (id, code) in [(1, "UNAUTHENTICATED"), (2, "INTERNAL")] {
            rig.stream.dispatch(GatewayStreamResponse {
                kind: Some(Down::SessionClosed(SessionClosed {
                    session_id: id,
                    code: code.into(),
                    message: "closed".into(),
                })),
            });
        }
        assert_eq!(ann.closing(), Some(CloseReason::TokenExpired));
        assert_eq!(bob.closing(), Some(CloseReason::ServerError));
        assert!(rig.stream.sessions.is_empty());
    }

    #[test]
    fn after_a_loss_sends_wait_for_the_next_stream_and_other_frames_are_refused() {
        let mut rig = rig(8);
        let ann = rig.open(1);
        rig.stream.command_after_loss(Command::Frame {
            handle: ann.clone(),
            request: ChatRequest {
                frame: Some(In::Send(send("c1"))),
            },
            trace: HashMap::new(),
        });
        rig.stream.command_after_loss(Command::Frame {
            handle: ann.clone(),
            request: ChatRequest {
                frame: Some(In::Leave(Leave {
                    room_id: "r".into(),
                })),
            },
            trace: HashMap::new(),
        });
        let frames = received(&ann);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].1["code"], "UNAVAILABLE");
        assert_eq!(frames[0].1["room_id"], "r");
        let orphans = rig.stream.into_orphans();
        assert_eq!(orphans[0].unacked.len(), 1, "the send waits to be resent");
    }
}
