//! The actor behind one server stream: a `Chat` stream (one session) or a
//! gateway stream (many sessions). One task owns all of the stream's
//! session state, so there are no locks; frames that need storage or Redis
//! (join, leave, history) run as futures beside it, and a session's later
//! frames wait in its backlog until they finish, so each session's frames
//! take effect in the order they were sent while other sessions go on.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use futures_util::{
    FutureExt as _, Stream, StreamExt as _, future::BoxFuture, stream::FuturesUnordered,
};
use parley_proto::chat::v1::{
    ChatRequest, ChatResponse, History, Left, Pong, Refreshed, chat_request::Frame as In,
    chat_response::Frame as Out,
};
use parley_runtime::{storage::timestamp, token::Caller, vec_set::VecSet};
use tonic::Status;

use crate::{
    domain::{RoomId, validate_room_id, validate_seq},
    engine::{Engine, JoinRequest, PrepareError, User},
    error::Error,
    hub::message_frame,
    link::{Link, Outbound, SessionId},
    writer::Reply,
};

/// The W3C trace context a gateway sends with a frame; empty otherwise.
pub type TraceContext = std::collections::HashMap<String, String>;

/// Frames a busy session may queue before further ones are refused.
const MAX_BACKLOG: usize = 256;
/// Sessions live this long past their token's expiry, so the gateway,
/// which closes the client with 4001 at expiry, acts first.
const EXPIRY_GRACE_SECONDS: i64 = 5;

/// What arrives on a stream, whichever RPC it is.
#[derive(Debug)]
pub enum Incoming {
    /// A gateway client connected.
    Open(SessionId, String),
    /// A session sent a frame, with the trace context it came with.
    Frame(SessionId, ChatRequest, TraceContext),
    /// A gateway client disconnected.
    Close(SessionId),
}

struct Session {
    user: User,
    expires_at: i64,
    rooms: VecSet<RoomId>,
    busy: bool,
    backlog: VecDeque<(ChatRequest, TraceContext)>,
}

/// What a finished slow frame changed.
enum Effect {
    None,
    Joined(RoomId),
    Left(RoomId),
}

struct Done {
    session: SessionId,
    /// Who the session was, to undo a join if it closed meanwhile.
    user: Option<User>,
    effect: Effect,
}

/// One stream's sessions.
pub struct StreamActor {
    engine: Engine,
    link: Link,
    /// `Chat` streams end with their only session; gateway streams do not.
    single_session: bool,
    sessions: HashMap<SessionId, Session>,
    expiries: BTreeSet<(i64, SessionId)>,
    ops: FuturesUnordered<BoxFuture<'static, Done>>,
}

impl std::fmt::Debug for StreamActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamActor")
            .field("link", &self.link.id())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

fn user_of(caller: &Caller) -> User {
    User {
        id: Arc::from(caller.user_id.as_str()),
        name: Arc::from(caller.name.as_str()),
    }
}

fn frame(out: Out) -> ChatResponse {
    ChatResponse { frame: Some(out) }
}

impl StreamActor {
    /// An actor for a gateway stream.
    pub fn gateway(engine: Engine, link: Link) -> Self {
        Self {
            engine,
            link,
            single_session: false,
            sessions: HashMap::new(),
            expiries: BTreeSet::new(),
            ops: FuturesUnordered::new(),
        }
    }

    /// An actor for a `Chat` stream of `caller`, as session 0.
    pub fn client(engine: Engine, link: Link, caller: &Caller) -> Self {
        let mut actor = Self {
            single_session: true,
            ..Self::gateway(engine, link)
        };
        actor.add_session(0, caller);
        actor
    }

    fn add_session(&mut self, id: SessionId, caller: &Caller) {
        self.expiries.insert((caller.expires_at, id));
        self.sessions.insert(
            id,
            Session {
                user: user_of(caller),
                expires_at: caller.expires_at,
                rooms: VecSet::new(),
                busy: false,
                backlog: VecDeque::new(),
            },
        );
    }

    /// Serves the stream until the client goes away, then cleans up every
    /// session.
    pub async fn run(mut self, incoming: impl Stream<Item = Result<Incoming, Status>> + Send) {
        metrics::gauge!("parley_chat_active_streams").increment(1.0);
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let next_expiry = self.expiries.first().map(|(at, _)| *at);
            let expiry = async {
                match next_expiry {
                    Some(at) => {
                        let wait = (at + EXPIRY_GRACE_SECONDS
                            - parley_runtime::storage::now_millis() / 1000)
                            .max(0);
                        tokio::time::sleep(Duration::from_secs(wait.unsigned_abs())).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = self.link.closed() => break,
                Some(done) = self.ops.next(), if !self.ops.is_empty() => self.finish(done),
                item = incoming.next() => match item {
                    Some(Ok(item)) => self.receive(item),
                    Some(Err(status)) => {
                        tracing::debug!(code = ?status.code(), "chat stream ended by the client");
                        break;
                    }
                    None => break,
                },
                () = expiry => self.expire(),
            }
            if self.single_session && self.sessions.is_empty() {
                break;
            }
        }
        // Let started joins and leaves finish, so what they changed is
        // undone below.
        while let Some(done) = self.ops.next().await {
            self.finish(done);
        }
        for (_, session) in std::mem::take(&mut self.sessions) {
            self.clean_up(session);
        }
        metrics::gauge!("parley_chat_active_streams").decrement(1.0);
    }

    fn receive(&mut self, item: Incoming) {
        match item {
            Incoming::Open(id, token) => match self.engine.verifier().verify(&token) {
                Ok(claims) => {
                    if let Some(old) = self.sessions.remove(&id) {
                        self.expiries.remove(&(old.expires_at, id));
                        self.clean_up(old);
                    }
                    self.add_session(id, &claims.into());
                }
                Err(err) => {
                    self.link.push(
                        Outbound::Close(id, Status::from(err)),
                        crate::link::Importance::Essential,
                    );
                }
            },
            Incoming::Close(id) => {
                if let Some(session) = self.sessions.remove(&id) {
                    self.expiries.remove(&(session.expires_at, id));
                    self.clean_up(session);
                }
            }
            Incoming::Frame(id, request, trace) => {
                let Some(session) = self.sessions.get_mut(&id) else {
                    self.link.push(
                        Outbound::Close(
                            id,
                            Status::failed_precondition("no such session: open it first"),
                        ),
                        crate::link::Importance::Essential,
                    );
                    return;
                };
                if session.busy {
                    if session.backlog.len() >= MAX_BACKLOG {
                        let (client_id, room_id) = request.echo();
                        self.link.send_to(
                            id,
                            Error::ResourceExhausted("too many frames waiting; slow down".into())
                                .into_frame(&client_id, &room_id),
                        );
                    } else {
                        session.backlog.push_back((request, trace));
                    }
                    return;
                }
                self.handle(id, request, &trace);
            }
        }
    }

    /// Leaves every room of a session that is gone, without ending its
    /// memberships.
    fn clean_up(&self, session: Session) {
        if session.rooms.is_empty() {
            return;
        }
        for room_id in &session.rooms {
            self.engine.hub().detach(&self.link, room_id);
        }
        let engine = self.engine.clone();
        tokio::spawn(async move {
            for room_id in &session.rooms {
                engine.exit(room_id, &session.user).await;
            }
        });
    }

    fn expire(&mut self) {
        let now = parley_runtime::storage::now_millis() / 1000;
        while let Some(&(at, id)) = self.expiries.first() {
            if at + EXPIRY_GRACE_SECONDS > now {
                break;
            }
            self.expiries.pop_first();
            if let Some(session) = self.sessions.remove(&id) {
                self.link.push(
                    Outbound::Close(
                        id,
                        Status::unauthenticated(
                            "access token expired: send a refresh frame before it does",
                        ),
                    ),
                    crate::link::Importance::Essential,
                );
                self.clean_up(session);
            }
        }
    }

    fn finish(&mut self, done: Done) {
        let Some(session) = self.sessions.get_mut(&done.session) else {
            // The session closed while its frame ran: undo a join.
            if let Effect::Joined(room_id) = done.effect {
                self.engine.hub().detach(&self.link, &room_id);
                if let Some(user) = done.user {
                    let engine = self.engine.clone();
                    tokio::spawn(async move { engine.exit(&room_id, &user).await });
                }
            }
            return;
        };
        session.busy = false;
        match done.effect {
            Effect::Joined(room_id) => {
                session.rooms.insert(room_id);
            }
            Effect::Left(room_id) => {
                session.rooms.remove(&room_id);
            }
            Effect::None => {}
        }
        while let Some(session) = self.sessions.get_mut(&done.session)
            && !session.busy
            && let Some((request, trace)) = session.backlog.pop_front()
        {
            self.handle(done.session, request, &trace);
        }
    }

    fn start(&mut self, id: SessionId, op: BoxFuture<'static, Effect>) {
        let user = self.sessions.get_mut(&id).map(|session| {
            session.busy = true;
            session.user.clone()
        });
        self.ops.push(
            op.map(move |effect| Done {
                session: id,
                user,
                effect,
            })
            .boxed(),
        );
    }

    fn handle(&mut self, id: SessionId, request: ChatRequest, trace: &TraceContext) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        let user = session.user.clone();
        let link = self.link.clone();
        let engine = self.engine.clone();
        let Some(frame_in) = request.frame else {
            link.send_to(
                id,
                Error::invalid("frame", "a frame needs exactly one kind").into_frame("", ""),
            );
            return;
        };
        match frame_in {
            In::Ping(ping) => {
                link.send_to(id, frame(Out::Pong(Pong { nonce: ping.nonce })));
            }
            In::Refresh(refresh) => self.refresh(id, &refresh.token),
            In::Typing(typing) => {
                if !session.rooms.contains(typing.room_id.as_str()) {
                    link.send_to(
                        id,
                        not_joined(&typing.room_id).into_frame("", &typing.room_id),
                    );
                    return;
                }
                engine.typing(&typing.room_id, &user);
            }
            In::Send(send) => {
                if !session.rooms.contains(send.room_id.as_str()) {
                    let err = match validate_room_id("room_id", &send.room_id) {
                        Ok(()) => not_joined(&send.room_id),
                        Err(err) => err,
                    };
                    link.send_to(id, err.into_frame(&send.client_id, &send.room_id));
                    return;
                }
                let client_id = send.client_id.clone();
                let span = send_span(&send.room_id, trace);
                match engine.prepare_send(&user, &send.room_id, send.content, send.client_id) {
                    Ok(message) => {
                        engine.submit(message, Reply::Session { link, session: id }, span);
                    }
                    Err(PrepareError::Invalid(err)) => {
                        link.send_to(id, err.into_frame(&client_id, &send.room_id));
                    }
                    Err(PrepareError::RateLimited(message)) => {
                        // Possibly a retry, which is answered over the rate.
                        self.start(
                            id,
                            async move {
                                let reply = match engine.find_retry(&message).await {
                                    Ok(stored) => frame(Out::Ack(parley_proto::chat::v1::Ack {
                                        client_id: stored.client_id.clone(),
                                        message_id: stored.id.clone(),
                                        seq: stored.seq,
                                    })),
                                    Err(err) => {
                                        err.into_frame(&message.client_id, &message.room_id)
                                    }
                                };
                                link.send_to(id, reply);
                                Effect::None
                            }
                            .boxed(),
                        );
                    }
                }
            }
            In::GetChatHistory(request) => {
                self.start(
                    id,
                    async move {
                        let room_id = request.room_id.clone();
                        let reply = match engine
                            .history(&user, &request.room_id, request.before_seq, request.limit)
                            .await
                        {
                            Ok((messages, has_more)) => frame(Out::History(History {
                                room_id: request.room_id,
                                messages,
                                has_more,
                            })),
                            Err(err) => err.into_frame("", &room_id),
                        };
                        link.send_to(id, reply);
                        Effect::None
                    }
                    .boxed(),
                );
            }
            In::Leave(leave) => {
                let joined_here = session.rooms.contains(leave.room_id.as_str());
                self.start(
                    id,
                    async move {
                        if let Err(err) = engine.end_membership(&user, &leave.room_id).await {
                            link.send_to(id, err.into_frame("", &leave.room_id));
                            return Effect::None;
                        }
                        let room_id = RoomId::from(leave.room_id.as_str());
                        if joined_here {
                            engine.hub().detach(&link, &room_id);
                            engine.exit(&room_id, &user).await;
                        }
                        link.send_to(
                            id,
                            frame(Out::Left(Left {
                                room_id: leave.room_id,
                            })),
                        );
                        if joined_here {
                            Effect::Left(room_id)
                        } else {
                            Effect::None
                        }
                    }
                    .boxed(),
                );
            }
            In::Join(join) => {
                let rejoin =
                    !join.room_id.is_empty() && session.rooms.contains(join.room_id.as_str());
                let limit = engine.limits().max_rooms_per_session;
                if !rejoin && session.rooms.len() >= limit {
                    link.send_to(
                        id,
                        Error::ResourceExhausted(format!(
                            "at most {limit} rooms may be joined at once"
                        ))
                        .into_frame("", &join.room_id),
                    );
                    return;
                }
                self.start(id, join_room(engine, link, id, user, join, rejoin).boxed());
            }
        }
    }

    fn refresh(&mut self, id: SessionId, token: &str) {
        let verified = self.engine.verifier().verify(token);
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let reply = match verified {
            Ok(claims) if claims.sub == *session.user.id => {
                self.expiries.remove(&(session.expires_at, id));
                session.expires_at = claims.exp;
                self.expiries.insert((claims.exp, id));
                frame(Out::Refreshed(Refreshed {
                    expires_at: Some(timestamp(claims.exp.saturating_mul(1000))),
                }))
            }
            Ok(_) => Error::Unauthenticated("the new token belongs to another user".into())
                .into_frame("", ""),
            Err(err) => Error::from(err).into_frame("", ""),
        };
        self.link.send_to(id, reply);
    }
}

async fn join_room(
    engine: Engine,
    link: Link,
    id: SessionId,
    user: User,
    join: parley_proto::chat::v1::Join,
    rejoin: bool,
) -> Effect {
    let echo_room = join.room_id.clone();
    if let Err(err) = validate_seq("since_seq", join.since_seq) {
        link.send_to(id, err.into_frame("", &echo_room));
        return Effect::None;
    }
    let request = JoinRequest {
        room_id: join.room_id,
        short_code: join.short_code,
        password: join.password,
    };
    let room = match engine.admit(&user, &request).await {
        Ok(room) => room,
        Err(err) => {
            link.send_to(id, err.into_frame("", &echo_room));
            return Effect::None;
        }
    };
    // Replay after since_seq when it is positive, or from the start when
    // asked to.
    let since = (join.since_seq > 0 || join.replay).then_some(join.since_seq);
    let room_id = if rejoin {
        RoomId::from(room.id.as_str())
    } else {
        engine.enter(&room, &user).await
    };
    let members = engine.members(&room_id).await;
    let max_replay = engine.limits().max_replay;
    let attached = if rejoin {
        replay_again(&engine, &link, id, &room_id, since, max_replay, members).await
    } else {
        engine
            .hub()
            .attach(&link, id, &room_id, since, max_replay, members)
            .await
            .map(drop)
    };
    match attached {
        Ok(()) if rejoin => Effect::None,
        Ok(()) => Effect::Joined(room_id),
        Err(err) => {
            if !rejoin {
                engine.exit(&room_id, &user).await;
            }
            link.send_to(id, err.into_frame("", &echo_room));
            Effect::None
        }
    }
}

/// A join of a room the session already receives: answers `joined` and
/// replays what was asked for, without registering twice.
async fn replay_again(
    engine: &Engine,
    link: &Link,
    id: SessionId,
    room_id: &RoomId,
    since: Option<i64>,
    max_replay: i64,
    members: Vec<parley_proto::chat::v1::Member>,
) -> Result<(), Error> {
    let last_seq = engine.hub().delivered_seq(room_id).unwrap_or(0);
    let since_seq = since.unwrap_or(0);
    let from = since_seq.max(last_seq - max_replay);
    let replay = if since.is_some() && last_seq > since_seq {
        engine.replay(room_id, from, last_seq).await?
    } else {
        Vec::new()
    };
    link.send_to(
        id,
        frame(Out::Joined(parley_proto::chat::v1::Joined {
            room_id: room_id.to_string(),
            last_seq,
            members,
            replay_truncated: since.is_some() && from > since_seq,
        })),
    );
    for message in replay {
        link.send_to(id, message_frame((*message).clone()));
    }
    Ok(())
}

/// The span of one send, a child of the client's frame when the gateway
/// sent its trace context; none when traces are not exported.
fn send_span(room_id: &str, trace: &TraceContext) -> tracing::Span {
    if !parley_runtime::telemetry::exporting() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!("chat.send", otel.kind = "server", chat.room_id = %room_id);
    parley_runtime::telemetry::set_parent_from(&span, trace);
    span
}

fn not_joined(room_id: &str) -> Error {
    Error::FailedPrecondition(format!("join room {room_id} before using it"))
}
