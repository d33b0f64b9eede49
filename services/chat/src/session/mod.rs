//! The actor behind one server stream: a `Chat` stream (one session) or a
//! gateway stream (many sessions). One task owns all of the stream's
//! session state, so there are no locks; frames that need storage or Redis
//! (join, leave, history) run as futures beside it, and a session's later
//! frames wait in its backlog until they finish, so each session's frames
//! take effect in the order they were sent while other sessions go on.
//!
//! Each frame kind has its handler: [`join`], [`leave`], [`send`],
//! [`change`] (edit, delete, react), [`moderate`], [`read`] and
//! [`history`] in their own modules, ping, typing and refresh here. The
//! hub's controls (a member kicked, banned or muted, a room deleted)
//! arrive beside the frames and change the sessions they name. A
//! handler answers at once, or returns the future of a slow frame, whose
//! [`Effect`] the actor applies to the session when it finishes.

mod change;
mod history;
mod join;
mod leave;
mod moderate;
pub(crate) mod quota;
mod read;
mod send;

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use futures_util::{
    FutureExt as _, Stream, StreamExt as _, future::BoxFuture, stream::FuturesUnordered,
};
use parley_proto::chat::v1::{
    ChatRequest, ChatResponse, Left, Pong, Refreshed, Typing, chat_request::Frame as In,
    chat_response::Frame as Out,
};
use parley_runtime::{
    storage::timestamp,
    token::{Caller, Scope, chat_frame_scope},
    vec_set::VecSet,
};
use tonic::Status;

use crate::{
    engine::{Engine, User},
    error::Error,
    link::{Control, Importance, Link, Outbound, SessionId},
    membership::Membership,
    moderation::Action,
};

/// The W3C trace context a gateway sends with a frame; empty otherwise.
pub(crate) type TraceContext = std::collections::HashMap<String, String>;

/// What a gateway sends along with a session's frame.
#[derive(Debug, Default)]
pub(crate) struct Along {
    /// The frame's trace context.
    pub(crate) trace: TraceContext,
    /// The session's access token, with a send that names attachments
    /// (see [`Session::token`]); empty otherwise.
    pub(crate) token: String,
}

/// Frames a busy session may queue before further ones are refused.
const MAX_BACKLOG: usize = 256;
/// Sessions live this long past their token's expiry, so the gateway,
/// which closes the client with 4001 at expiry, acts first.
const EXPIRY_GRACE_SECONDS: i64 = 5;

/// What arrives on a stream, whichever RPC it is.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A gateway client connected.
    Open(SessionId, String),
    /// A session sent a frame, with what came along with it.
    Frame(SessionId, ChatRequest, Along),
    /// A gateway client disconnected.
    Close(SessionId),
}

/// One client session. Dropping it leaves every room it joined here
/// (see [`Membership`]), without ending the stored memberships.
#[derive(Debug)]
struct Session {
    user: User,
    /// The access token a `Chat` stream's session was opened or last
    /// refreshed with, passed on to media when a send names attachments.
    /// A gateway's sessions keep none: their gateway sends the token with
    /// each such send (a token is about half a KiB, and a replica holds
    /// many thousands of sessions).
    token: Option<Arc<str>>,
    expires_at: i64,
    /// What its token may do; `None`: everything.
    scopes: Option<Vec<Scope>>,
    /// Unique within the stream, so an id opened again is told apart.
    generation: u64,
    /// Its place among its user's sessions on this replica.
    _slot: quota::Slot,
    rooms: VecSet<Membership>,
    busy: bool,
    backlog: VecDeque<(ChatRequest, Along)>,
}

/// What a finished slow frame changed.
#[derive(Debug)]
enum Effect {
    None,
    /// The session joined a room (or kept one a failed leave handed back).
    Joined(Membership),
}

/// A slow frame that finished. If its session closed meanwhile, dropping
/// the effect undoes it.
struct Done {
    session: SessionId,
    /// The generation of the session the frame came from: a session opened
    /// again under the same id is a new one, and must not get what the
    /// old one's frame did.
    generation: u64,
    effect: Effect,
}

/// What a control changes for each session it names.
#[derive(Debug, Clone, Copy)]
enum Standing {
    /// The session leaves the room.
    Out,
    /// The session's mute in the room (`None`: not muted).
    Muted(Option<crate::moderation::Until>),
}

/// A slow frame's work, run beside the actor.
type Op = BoxFuture<'static, Effect>;

/// What a frame handler works with: the stream and one of its sessions.
struct Context<'a> {
    engine: &'a Engine,
    link: &'a Link,
    id: SessionId,
    session: &'a mut Session,
    /// The token the frame came with; empty if none.
    frame_token: &'a str,
}

impl Context<'_> {
    /// Queues a frame for the session.
    fn reply(&self, out: Out) {
        self.link.send_to(self.id, frame(out));
    }

    /// Answers the session with an `error` frame echoing `client_id` and
    /// `room_id`.
    fn fail(&self, err: Error, client_id: &str, room_id: &str) {
        self.link
            .send_to(self.id, err.into_frame(client_id, room_id));
    }

    /// The session's access token (see [`Session::token`]): the one the
    /// frame came with, else the session's own; empty if neither.
    fn token(&self) -> Arc<str> {
        match &self.session.token {
            Some(token) if self.frame_token.is_empty() => token.clone(),
            _ => Arc::from(self.frame_token),
        }
    }

    /// What a slow frame's future takes along.
    fn owned(&self) -> (Engine, Link, SessionId, User) {
        (
            self.engine.clone(),
            self.link.clone(),
            self.id,
            self.session.user.clone(),
        )
    }
}

/// One stream's sessions.
pub(crate) struct StreamActor {
    engine: Engine,
    link: Link,
    /// `Chat` streams end with their only session; gateway streams do not.
    single_session: bool,
    /// Boxed: a table sized for growth holds spare slots, which then cost
    /// a pointer each rather than a whole session.
    sessions: HashMap<SessionId, Box<Session>>,
    /// The generation the next session gets.
    next_generation: u64,
    expiries: BTreeSet<(i64, SessionId)>,
    ops: FuturesUnordered<BoxFuture<'static, Done>>,
    controls: tokio::sync::mpsc::Receiver<Control>,
}

impl std::fmt::Debug for StreamActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamActor")
            .field("link", &self.link.id())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

fn frame(out: Out) -> ChatResponse {
    ChatResponse { frame: Some(out) }
}

impl StreamActor {
    /// An actor for a gateway stream.
    pub(crate) fn gateway(
        engine: Engine,
        link: Link,
        controls: tokio::sync::mpsc::Receiver<Control>,
    ) -> Self {
        Self {
            engine,
            link,
            single_session: false,
            sessions: HashMap::new(),
            next_generation: 0,
            expiries: BTreeSet::new(),
            ops: FuturesUnordered::new(),
            controls,
        }
    }

    /// An actor for a `Chat` stream of `caller`, as session 0.
    pub(crate) fn client(
        engine: Engine,
        link: Link,
        controls: tokio::sync::mpsc::Receiver<Control>,
        caller: &Caller,
        token: &str,
    ) -> Result<Self, Error> {
        let mut actor = Self {
            single_session: true,
            ..Self::gateway(engine, link, controls)
        };
        actor.add_session(0, caller, Some(Arc::from(token)))?;
        Ok(actor)
    }

    /// Starts a session of `caller`, unless the user holds
    /// `CHAT_MAX_SESSIONS_PER_USER` on this replica already.
    fn add_session(
        &mut self,
        id: SessionId,
        caller: &Caller,
        token: Option<Arc<str>>,
    ) -> Result<(), Error> {
        let limits = self.engine.limits();
        let slot = self
            .engine
            .user_sessions()
            .acquire(&caller.user_id, limits.max_sessions_per_user)
            .ok_or_else(|| {
                Error::ResourceExhausted(format!(
                    "a user holds at most {} sessions on one chat replica",
                    limits.max_sessions_per_user
                ))
            })?;
        let user = User {
            id: slot.user_id().clone(),
            name: Arc::from(caller.name.as_str()),
            admin: caller.is_admin(),
        };
        self.next_generation += 1;
        self.expiries.insert((caller.expires_at, id));
        self.sessions.insert(
            id,
            Box::new(Session {
                user,
                _slot: slot,
                token,
                expires_at: caller.expires_at,
                scopes: caller.scopes.clone(),
                generation: self.next_generation,
                rooms: VecSet::new(),
                busy: false,
                backlog: VecDeque::new(),
            }),
        );
        Ok(())
    }

    /// Serves the stream until the client goes away, then cleans up every
    /// session.
    pub(crate) async fn run(
        mut self,
        incoming: impl Stream<Item = Result<Incoming, Status>> + Send,
    ) {
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
                Some(control) = self.controls.recv() => self.on_control(control),
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
        // undone with the sessions below.
        while let Some(done) = self.ops.next().await {
            self.finish(done);
        }
        self.sessions.clear();
        metrics::gauge!("parley_chat_active_streams").decrement(1.0);
    }

    fn receive(&mut self, item: Incoming) {
        match item {
            // An id already open names a session whose frames may still be
            // running (a join); taking it over could hand their effect to
            // another user. Gateways never reuse ids, so both end.
            Incoming::Open(id, _) if self.sessions.contains_key(&id) => {
                self.remove_session(id);
                self.close_session(id, Error::SessionIdInUse);
            }
            Incoming::Open(id, _)
                if self.sessions.len() >= self.engine.limits().max_sessions_per_stream =>
            {
                self.close_session(
                    id,
                    Error::ResourceExhausted(format!(
                        "a gateway stream carries at most {} sessions",
                        self.engine.limits().max_sessions_per_stream
                    )),
                );
            }
            Incoming::Open(id, token) => match self.engine.verifier().verify(&token) {
                Ok(claims) => {
                    if let Err(err) = self.add_session(id, &claims.into(), None) {
                        self.close_session(id, err);
                    }
                }
                Err(err) => self.close_session(id, Error::from(err)),
            },
            Incoming::Close(id) => self.remove_session(id),
            Incoming::Frame(id, request, along) => {
                let Some(session) = self.sessions.get_mut(&id) else {
                    self.close_session(id, Error::NoSuchSession);
                    return;
                };
                if session.busy {
                    if session.backlog.len() >= MAX_BACKLOG {
                        let (client_id, room_id) = request.echo();
                        self.link
                            .send_to(id, Error::Backlogged.into_frame(&client_id, &room_id));
                    } else {
                        session.backlog.push_back((request, along));
                    }
                    return;
                }
                self.handle(id, request, &along);
            }
        }
    }

    /// Forgets a session; dropping it leaves its rooms here.
    fn remove_session(&mut self, id: SessionId) {
        if let Some(session) = self.sessions.remove(&id) {
            self.expiries.remove(&(session.expires_at, id));
        }
    }

    /// Tells the client chat ended its session.
    fn close_session(&self, id: SessionId, why: Error) {
        self.link.push(
            Outbound::Close(id, Status::from(why)),
            Importance::Essential,
        );
    }

    /// A member's standing changed, or a room is gone: the sessions it
    /// names leave the room (with `left`) or change their mute.
    fn on_control(&mut self, control: Control) {
        let (room_id, user_id, effect) = match control {
            Control::Member {
                room_id,
                user_id,
                action,
                until,
            } => {
                let effect = match action {
                    Action::Kick | Action::Ban => Standing::Out,
                    Action::Mute => Standing::Muted(Some(until)),
                    Action::Unmute => Standing::Muted(None),
                    // Roles are checked where they are stored; a session
                    // holds none.
                    Action::Unban | Action::SetRole(_) => return,
                };
                (room_id, Some(user_id), effect)
            }
            Control::RoomGone { room_id } => (room_id, None, Standing::Out),
        };
        for (id, session) in &mut self.sessions {
            if user_id
                .as_deref()
                .is_some_and(|user_id| *session.user.id != *user_id)
            {
                continue;
            }
            match effect {
                Standing::Muted(until) => {
                    if let Some(membership) = session.rooms.get_mut(room_id.as_str()) {
                        membership.set_muted(until);
                    }
                }
                // Dropping the membership detaches the session and counts
                // it out of presence.
                Standing::Out => {
                    if session.rooms.take(room_id.as_str()).is_some() {
                        self.link.send_to(
                            *id,
                            frame(Out::Left(Left {
                                room_id: room_id.clone(),
                            })),
                        );
                    }
                }
            }
        }
    }

    fn expire(&mut self) {
        let now = parley_runtime::storage::now_millis() / 1000;
        while let Some(&(at, id)) = self.expiries.first() {
            if at + EXPIRY_GRACE_SECONDS > now {
                break;
            }
            self.expiries.pop_first();
            if self.sessions.remove(&id).is_some() {
                self.close_session(id, Error::TokenExpired);
            }
        }
    }

    fn finish(&mut self, done: Done) {
        let Some(session) = self
            .sessions
            .get_mut(&done.session)
            .filter(|session| session.generation == done.generation)
        else {
            // The session closed while its frame ran, or its id now names
            // another session (of perhaps another user): dropping the
            // effect undoes a join.
            return;
        };
        session.busy = false;
        match done.effect {
            // A second membership of a room already joined (a join by
            // short code of a room joined by id) is dropped, and so
            // counted out again.
            Effect::Joined(membership) => {
                session.rooms.insert(membership);
            }
            Effect::None => {}
        }
        while let Some(session) = self.sessions.get_mut(&done.session)
            && !session.busy
            && let Some((request, along)) = session.backlog.pop_front()
        {
            self.handle(done.session, request, &along);
        }
    }

    fn start(&mut self, id: SessionId, op: Op) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        session.busy = true;
        let generation = session.generation;
        self.ops.push(
            op.map(move |effect| Done {
                session: id,
                generation,
                effect,
            })
            .boxed(),
        );
    }

    /// Handles one frame of a session that is not busy.
    fn handle(&mut self, id: SessionId, request: ChatRequest, along: &Along) {
        let Some(frame_in) = request.frame else {
            self.link.send_to(id, Error::EmptyFrame.into_frame("", ""));
            return;
        };
        if let In::Refresh(refresh) = &frame_in {
            self.refresh(id, &refresh.token);
            return;
        }
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        if let Some(scope) = chat_frame_scope(&frame_in)
            && session
                .scopes
                .as_ref()
                .is_some_and(|scopes| !scopes.contains(&scope))
        {
            let (client_id, room_id) = frame_in.echo();
            self.link.send_to(
                id,
                Error::MissingScope(scope).into_frame(client_id, room_id),
            );
            return;
        }
        let mut cx = Context {
            engine: &self.engine,
            link: &self.link,
            id,
            session,
            frame_token: &along.token,
        };
        let trace = &along.trace;
        let op = match frame_in {
            In::Ping(ping) => {
                cx.reply(Out::Pong(Pong { nonce: ping.nonce }));
                None
            }
            In::Typing(typing) => {
                self::typing(&cx, &typing);
                None
            }
            In::Send(request) => send::handle(&cx, request, trace),
            In::GetChatHistory(request) => history::handle(&cx, &request),
            In::Leave(request) => leave::handle(&mut cx, request),
            In::Join(request) => join::handle(&cx, request),
            In::Edit(request) => {
                change::handle(&cx, request.into(), trace);
                None
            }
            In::Delete(request) => {
                change::handle(&cx, request.into(), trace);
                None
            }
            In::React(request) => {
                change::handle(&cx, request.into(), trace);
                None
            }
            In::Read(request) => read::handle(&cx, request),
            In::Moderate(request) => {
                moderate::handle(&cx, request, trace);
                None
            }
            In::Refresh(_) => None,
        };
        if let Some(op) = op {
            self.start(id, op);
        }
    }

    /// `refresh`: the session lives on under a new token of the same user.
    fn refresh(&mut self, id: SessionId, token: &str) {
        let verified = self.engine.verifier().verify(token);
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let reply = match verified {
            Ok(claims) if claims.sub == *session.user.id => {
                session.scopes = parley_runtime::token::Caller::from(claims.clone()).scopes;
                if session.token.is_some() {
                    session.token = Some(Arc::from(token));
                }
                self.expiries.remove(&(session.expires_at, id));
                session.expires_at = claims.exp;
                self.expiries.insert((claims.exp, id));
                frame(Out::Refreshed(Refreshed {
                    expires_at: Some(timestamp(claims.exp.saturating_mul(1000))),
                }))
            }
            Ok(_) => Error::OtherUsersToken.into_frame("", ""),
            Err(err) => Error::from(err).into_frame("", ""),
        };
        self.link.send_to(id, reply);
    }
}

/// `typing`: tells the room's other members, if the session is in it.
fn typing(cx: &Context<'_>, typing: &Typing) {
    if cx.session.rooms.contains(typing.room_id.as_str()) {
        cx.engine.typing(&typing.room_id, &cx.session.user);
    } else {
        cx.fail(
            Error::NotJoined(typing.room_id.clone()),
            "",
            &typing.room_id,
        );
    }
}
