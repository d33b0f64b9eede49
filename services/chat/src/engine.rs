//! The operations every entry point shares: the unary RPCs, `Chat` streams
//! and gateway sessions all join, leave, send, type and read history
//! through an [`Engine`], so they follow the same rules.

use std::sync::Arc;

use parley_proto::chat::v1::{
    ChatResponse, Left, Member, MemberAction, Presence as PresenceFrame, PresenceState, ReadNotice,
    RoomEvent, RoomSummary, TypingNotice, chat_response::Frame,
};
use parley_runtime::{
    limits::{KeyedLimit, retry_in},
    password::Passwords,
    storage::now_millis,
    token::TokenVerifier,
};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::{
    attachments::{self, Media},
    bus::Bus,
    domain::{
        self, HistoryQuery, JoinRequest, JoinTarget, NewMessage, Room, RoomId, StoredMessage,
        validate_client_id, validate_content, validate_new_password,
    },
    error::Error,
    hub::Hub,
    limiter::SendLimiter,
    moderation::{self, Action},
    presence::Presence,
    store::{ChatStore, MemberState},
    timeline::{Change, NewEvent, check_change, validate_user_id},
    writer::{Reply, Submission, Write, Writer, reply_error},
};

/// Limits from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Largest content, in bytes.
    pub(crate) max_content_bytes: usize,
    /// Most messages replayed on a join.
    pub(crate) max_replay: i64,
    /// Rooms one session may have joined.
    pub(crate) max_rooms_per_session: usize,
    /// Items queued per outgoing stream.
    pub(crate) stream_queue: usize,
    /// Sessions one user may hold on this replica.
    pub(crate) max_sessions_per_user: u32,
    /// Sessions one gateway stream may carry.
    pub(crate) max_sessions_per_stream: usize,
    /// Rooms one user may have created when a join would create another
    /// (admins: no limit).
    pub(crate) max_rooms_per_creator: i64,
    /// Joins and leaves one user may make at once on this replica.
    pub(crate) join_burst: u32,
    /// Joins and leaves per second per user once the burst is spent.
    pub(crate) joins_per_second: u32,
}

/// The user a request acts for, from their token.
#[derive(Debug, Clone)]
pub(crate) struct User {
    /// The user id.
    pub(crate) id: Arc<str>,
    /// The username.
    pub(crate) name: Arc<str>,
    /// Whether they hold the global `admin` role.
    pub(crate) admin: bool,
}

impl From<&parley_runtime::token::Caller> for User {
    fn from(caller: &parley_runtime::token::Caller) -> Self {
        Self {
            id: Arc::from(caller.user_id.as_str()),
            name: Arc::from(caller.name.as_str()),
            admin: caller.is_admin(),
        }
    }
}

/// The shared operations. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Engine {
    inner: Arc<EngineInner>,
}

#[derive(Debug)]
struct EngineInner {
    store: ChatStore,
    hub: Hub,
    bus: Bus,
    presence: Presence,
    writer: Writer,
    limiter: Arc<SendLimiter>,
    passwords: Passwords,
    verifier: TokenVerifier,
    limits: Limits,
    media: Media,
    /// Stream joins admitted at once (see [`JOINS_AT_ONCE`]).
    joins: Semaphore,
    /// Password attempts per user and private room.
    password_attempts: KeyedLimit<(Arc<str>, RoomId)>,
    /// Joins (and leaves) per user.
    joins_per_user: KeyedLimit<Arc<str>>,
    /// Typing notices per user.
    typing_per_user: KeyedLimit<Arc<str>>,
    /// Lookups of rate-limited sends that may be retries, per user.
    retry_lookups: KeyedLimit<Arc<str>>,
    /// Sessions per user (`CHAT_MAX_SESSIONS_PER_USER`).
    user_sessions: crate::session::quota::UserSessions,
}

/// Typing notices one user may send at once; then one per [`TYPING_EVERY`].
/// Clients send one every few seconds while typing.
pub(crate) const TYPING_BURST: u32 = 10;
const TYPING_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Rate-limited sends one user may have looked up as possible retries at
/// once; then one per [`RETRY_LOOKUP_EVERY`]. A client retrying a lost ack
/// needs one lookup per message it retries.
const RETRY_LOOKUP_BURST: u32 = 20;
const RETRY_LOOKUP_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Password attempts one user may make on one private room at once; then
/// one more per [`PASSWORD_ATTEMPT_EVERY`]. Room passwords are guessed
/// online, so guessing must be slow.
const PASSWORD_ATTEMPTS: u32 = 5;
const PASSWORD_ATTEMPT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Stream joins this replica works on at once; the rest wait their turn
/// here. A join takes about seven queries, one after another; when every
/// client of a dead gateway rejoins at once (a reconnect storm) thousands
/// would otherwise queue on the database pool itself, whose 3 s acquire
/// timeout then failed joins and sends alike with UNAVAILABLE
/// (RELIABILITY.md, "Reconnect storm"). Waiting here has no timeout, and
/// sends keep the rest of the pool.
const JOINS_AT_ONCE: usize = 4;

/// The parts an [`Engine`] is made of.
#[derive(Debug)]
pub(crate) struct Parts {
    /// Storage.
    pub(crate) store: ChatStore,
    /// The replica's rooms.
    pub(crate) hub: Hub,
    /// Fan-out to other replicas.
    pub(crate) bus: Bus,
    /// Who is online.
    pub(crate) presence: Presence,
    /// Message storage lanes.
    pub(crate) writer: Writer,
    /// The send rate limit.
    pub(crate) limiter: Arc<SendLimiter>,
    /// Room password hashing.
    pub(crate) passwords: Passwords,
    /// Access-token verification.
    pub(crate) verifier: TokenVerifier,
    /// Limits.
    pub(crate) limits: Limits,
    /// Where attachments are checked.
    pub(crate) media: Media,
}

/// What a sender asks to store, before it is checked.
#[derive(Debug, Default)]
pub(crate) struct Draft {
    /// The text.
    pub(crate) content: String,
    /// The idempotency key, "" for none.
    pub(crate) client_id: String,
    /// The seq it replies to, 0 for none.
    pub(crate) reply_to: i64,
    /// Attachment ids.
    pub(crate) attachments: Vec<String>,
}

impl Engine {
    /// An engine over its parts.
    pub(crate) fn new(parts: Parts) -> Self {
        let Parts {
            store,
            hub,
            bus,
            presence,
            writer,
            limiter,
            passwords,
            verifier,
            limits,
            media,
        } = parts;
        let joins_per_user = KeyedLimit::per_second(limits.join_burst, limits.joins_per_second);
        Self {
            inner: Arc::new(EngineInner {
                store,
                hub,
                bus,
                presence,
                writer,
                limiter,
                passwords,
                verifier,
                limits,
                media,
                joins: Semaphore::new(JOINS_AT_ONCE),
                user_sessions: Default::default(),
                joins_per_user,
                typing_per_user: KeyedLimit::new(TYPING_BURST, TYPING_EVERY),
                retry_lookups: KeyedLimit::new(RETRY_LOOKUP_BURST, RETRY_LOOKUP_EVERY),
                password_attempts: KeyedLimit::new(PASSWORD_ATTEMPTS, PASSWORD_ATTEMPT_EVERY),
            }),
        }
    }

    /// A turn to work on a stream join; see [`JOINS_AT_ONCE`]. `None` only
    /// once the replica is shutting down.
    pub(crate) async fn join_turn(&self) -> Option<SemaphorePermit<'_>> {
        self.inner.joins.acquire().await.ok()
    }

    /// The hub.
    pub(crate) fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// Who is online.
    pub(crate) fn presence(&self) -> &Presence {
        &self.inner.presence
    }

    /// Storage.
    pub(crate) fn store(&self) -> &ChatStore {
        &self.inner.store
    }

    /// The configured limits.
    pub(crate) fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Sessions per user on this replica.
    pub(crate) fn user_sessions(&self) -> &crate::session::quota::UserSessions {
        &self.inner.user_sessions
    }

    /// The token verifier.
    pub(crate) fn verifier(&self) -> &TokenVerifier {
        &self.inner.verifier
    }

    /// Creates a room with a server-made id and short code; private (with
    /// the creator as member) when a password is given.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a bad name or password; database failures.
    pub(crate) async fn create_room(
        &self,
        user: &User,
        name: &str,
        password: &str,
    ) -> Result<Room, Error> {
        let name = domain::room_name(name)?;
        validate_new_password(password)?;
        let password_hash = if password.is_empty() {
            None
        } else {
            Some(self.inner.passwords.hash(password.to_owned()).await?)
        };
        self.inner
            .store
            .create_room(domain::new_room_id(), name, password_hash, &user.id)
            .await
    }

    /// Finds (or, for an unknown public id, creates) the room a join names,
    /// checks bans, a direct room's pair and a private room's password
    /// (unless the user is a member), and records the membership. A direct
    /// room comes back named after the other user.
    ///
    /// # Errors
    /// NOT_FOUND for an unknown code, a deleted room, or an unknown id
    /// given with a password; PERMISSION_DENIED for a ban, another pair's
    /// direct room, or a wrong or missing password.
    pub(crate) async fn admit(
        &self,
        user: &User,
        request: &JoinRequest,
    ) -> Result<(Room, MemberState), Error> {
        self.joins_and_leaves(user)?;
        let store = &self.inner.store;
        let mut room = match &request.target {
            JoinTarget::Id(room_id) if request.password.is_empty() => {
                let max = (!user.admin).then_some(self.inner.limits.max_rooms_per_creator);
                store.room_or_create_public(room_id, &user.id, max).await?
            }
            JoinTarget::Id(room_id) => store
                .room(room_id)
                .await?
                .ok_or_else(|| Error::RoomNotFound(room_id.to_string()))?,
            JoinTarget::Code(code) => store
                .room_by_code(code)
                .await?
                .ok_or_else(|| Error::NoSuchShortCode(code.to_string()))?,
        };
        // Errors name the room as the user gave it: a short code, not the
        // id it stands for.
        let given = match &request.target {
            JoinTarget::Id(room_id) => room_id.to_string(),
            JoinTarget::Code(code) => code.to_string(),
        };
        if store.ban(&room.id, &user.id).await?.is_some() {
            return Err(Error::Banned(given));
        }
        if room.direct {
            let peer = self.direct_peer(&room, user).await?;
            room.name = self.peer_name(&peer).await?;
        } else if room.is_private() && !store.is_member(&room.id, &user.id).await? {
            // A missing and a wrong password get the same answer.
            if request.password.is_empty() {
                return Err(Error::WrongPassword(given));
            }
            if let Err(wait) = self
                .inner
                .password_attempts
                .check(&(user.id.clone(), room.id.clone()))
            {
                return Err(Error::ResourceExhausted(format!(
                    "too many password attempts for room {given}; {}",
                    retry_in(wait)
                )));
            }
            let matches = self
                .inner
                .passwords
                .verify(request.password.clone(), room.password_hash.clone())
                .await?;
            if !matches {
                return Err(Error::WrongPassword(given));
            }
        }
        store.add_member(&room, &user.id).await?;
        store.remember_name(&user.id, &user.name).await?;
        let state = store
            .member(&room.id, &user.id)
            .await?
            .ok_or_else(|| Error::RoomNotFound(room.id.to_string()))?;
        Ok((room, state))
    }

    /// The other user of a direct room `user` is one of.
    ///
    /// # Errors
    /// PERMISSION_DENIED when `user` is not one of its two.
    async fn direct_peer(&self, room: &Room, user: &User) -> Result<String, Error> {
        match self.inner.store.direct_pair(&room.id).await? {
            Some((low, high)) if *low == *user.id => Ok(high),
            Some((low, high)) if *high == *user.id => Ok(low),
            _ => Err(Error::OthersDirectRoom(room.id.to_string())),
        }
    }

    /// What a direct room is called for the user who is not `peer_id`.
    async fn peer_name(&self, peer_id: &str) -> Result<String, Error> {
        Ok(self
            .inner
            .store
            .known_name(peer_id)
            .await?
            .unwrap_or_else(|| peer_id.to_owned()))
    }

    /// The direct room of `user` and `peer_id`, created on first use;
    /// answers it (named after the peer) and whether it was created.
    /// `peer_name` is used only while chat has not seen the peer's own
    /// token.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a bad user id or the caller's own.
    pub(crate) async fn open_direct_room(
        &self,
        user: &User,
        peer_id: &str,
        peer_name: &str,
    ) -> Result<(Room, bool), Error> {
        validate_user_id(peer_id)?;
        if *peer_id == *user.id {
            return Err(Error::invalid(
                "user_id",
                "a direct room is with another user",
            ));
        }
        let store = &self.inner.store;
        store.remember_name(&user.id, &user.name).await?;
        if !peer_name.is_empty() && store.known_name(peer_id).await?.is_none() {
            let name = domain::room_name(peer_name)
                .map_err(|_| Error::invalid("user_name", "must be 1-100 characters"))?;
            store.remember_name(peer_id, &name).await?;
        }
        let (mut room, created) = store
            .open_direct_room(domain::new_room_id(), &user.id, peer_id)
            .await?;
        room.name = self.peer_name(peer_id).await?;
        Ok((room, created))
    }

    /// A moderation action, checked and ready for a writer lane (roles
    /// are checked when it is stored).
    ///
    /// # Errors
    /// INVALID_ARGUMENT for bad fields; RESOURCE_EXHAUSTED over the rate.
    pub(crate) fn prepare_moderation(
        &self,
        user: &User,
        room_id: RoomId,
        asked: Moderation,
    ) -> Result<NewEvent, Error> {
        let action = Action::from_proto(asked.action, &asked.role)?;
        let until = moderation::until(
            action,
            moderation::duration(asked.duration.as_ref())?,
            now_millis(),
        )?;
        let change = Change::Moderate {
            user_id: asked.user_id,
            action,
            until,
        };
        self.prepare_event(user, room_id, 0, change, asked.client_id)
    }

    /// A rename or password change, checked (the password hashed) and
    /// ready for a writer lane.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a bad name or password, or nothing to change.
    pub(crate) async fn prepare_room_update(
        &self,
        user: &User,
        room_id: RoomId,
        name: Option<String>,
        password: Option<String>,
        client_id: String,
    ) -> Result<NewEvent, Error> {
        if name.is_none() && password.is_none() {
            return Err(Error::invalid(
                "name",
                "give a new name or password (\"\" clears the password)",
            ));
        }
        let name = name.as_deref().map(domain::room_name).transpose()?;
        let password_hash = match password {
            None => None,
            Some(password) if password.is_empty() => Some(None),
            Some(password) => {
                validate_new_password(&password)?;
                Some(Some(self.inner.passwords.hash(password).await?))
            }
        };
        let change = Change::UpdateRoom {
            name,
            password_hash,
        };
        self.prepare_event(user, room_id, 0, change, client_id)
    }

    /// Deletes a room, and makes its live sessions leave it on every
    /// replica.
    ///
    /// # Errors
    /// NOT_FOUND, FAILED_PRECONDITION (a direct room), PERMISSION_DENIED
    /// (not its owner or an admin); database failures.
    pub(crate) async fn delete_room(&self, user: &User, room_id: &RoomId) -> Result<(), Error> {
        self.inner
            .store
            .delete_room(room_id, &user.id, user.admin)
            .await?;
        // A `left` for the whole room: each replica's hub turns it into
        // its sessions leaving (see `Hub::deliver_ephemeral`).
        self.broadcast(RoomEvent {
            room_id: room_id.to_string(),
            response: Some(ChatResponse {
                frame: Some(Frame::Left(Left {
                    room_id: room_id.to_string(),
                })),
            }),
            except_user_id: String::new(),
        });
        Ok(())
    }

    /// The user's standing in a room they send to over a unary call.
    ///
    /// # Errors
    /// FAILED_PRECONDITION for a non-member; PERMISSION_DENIED while
    /// muted; database failures.
    pub(crate) async fn check_sender(&self, user: &User, room_id: &RoomId) -> Result<(), Error> {
        let state = self
            .inner
            .store
            .member(room_id, &user.id)
            .await?
            .ok_or_else(|| Error::NotAMember(room_id.to_string()))?;
        if state.muted.is_some() {
            return Err(Error::Muted(room_id.to_string()));
        }
        Ok(())
    }

    /// Tells the room's members (on every replica) that a user arrived or
    /// left; never the user themselves.
    pub(crate) fn announce(&self, room_id: &str, user_id: &str, name: &str, state: PresenceState) {
        self.broadcast(RoomEvent {
            room_id: room_id.to_owned(),
            response: Some(ChatResponse {
                frame: Some(Frame::Presence(PresenceFrame {
                    room_id: room_id.to_owned(),
                    user_id: user_id.to_owned(),
                    name: name.to_owned(),
                    state: state.into(),
                })),
            }),
            except_user_id: user_id.to_owned(),
        });
    }

    /// Counts a join or leave of `user` against `CHAT_JOIN_BURST` and
    /// `CHAT_JOINS_PER_SECOND`.
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED, saying when to retry.
    pub(crate) fn joins_and_leaves(&self, user: &User) -> Result<(), Error> {
        self.inner.joins_per_user.check(&user.id).map_err(|wait| {
            Error::ResourceExhausted(format!("too many joins and leaves; {}", retry_in(wait)))
        })
    }

    /// Tells the room's other members that `user` is typing; past
    /// [`TYPING_BURST`] at once, typing is dropped, as it may be anyway.
    pub(crate) fn typing(&self, room_id: &str, user: &User) {
        if self.inner.typing_per_user.check(&user.id).is_err() {
            return;
        }
        self.broadcast(RoomEvent {
            room_id: room_id.to_owned(),
            response: Some(ChatResponse {
                frame: Some(Frame::Typing(TypingNotice {
                    room_id: room_id.to_owned(),
                    user_id: user.id.to_string(),
                    name: user.name.to_string(),
                })),
            }),
            except_user_id: user.id.to_string(),
        });
    }

    fn broadcast(&self, event: RoomEvent) {
        self.inner.bus.publish(&event);
        self.inner.hub.deliver_ephemeral(Arc::new(event));
    }

    /// The users online in the room, across replicas.
    pub(crate) async fn members(&self, room_id: &RoomId) -> Vec<Member> {
        self.inner
            .presence
            .members(room_id, || self.inner.hub.local_members(room_id))
            .await
    }

    /// Validates a send to a room the sender is in, and takes a
    /// rate-limit token for it. Content may be empty when the message
    /// carries attachments.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for bad fields; RESOURCE_EXHAUSTED when the user is
    /// over the rate (with the message the user would have stored, when
    /// the send is a retry of a stored one: see [`Self::find_retry`]).
    pub(crate) fn prepare_send(
        &self,
        user: &User,
        room_id: RoomId,
        draft: Draft,
    ) -> Result<NewMessage, PrepareError> {
        let Draft {
            content,
            client_id,
            reply_to,
            attachments,
        } = draft;
        let attachments = match attachments::parse_ids(attachments) {
            Ok(attachments) => attachments,
            Err(err) => return Err(PrepareError::Invalid(err)),
        };
        let checked = if attachments.is_empty() || !content.is_empty() {
            validate_content(&content, self.inner.limits.max_content_bytes)
        } else {
            Ok(())
        };
        let checked = checked
            .and_then(|()| validate_client_id(&client_id))
            .and_then(|()| {
                if reply_to < 0 {
                    Err(not_a_message_to_reply_to())
                } else {
                    Ok(())
                }
            });
        if let Err(err) = checked {
            return Err(PrepareError::Invalid(err));
        }
        let message = NewMessage {
            room_id,
            sender_id: user.id.clone(),
            sender_name: user.name.clone(),
            content,
            client_id,
            reply_to,
            attachments,
        };
        if self.inner.limiter.try_take(&user.id) {
            Ok(message)
        } else {
            Err(PrepareError::RateLimited(Box::new(message)))
        }
    }

    /// The message a rate-limited send would repeat, if it is a retry: a
    /// retry costs no token, so it is answered even over the rate.
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED when it is not a retry; database failures.
    pub(crate) async fn find_retry(&self, message: &NewMessage) -> Result<StoredMessage, Error> {
        // Looking a retry up costs a query: a sender far over the rate gets
        // a few lookups, not one per refused send.
        if !message.client_id.is_empty()
            && self.inner.retry_lookups.check(&message.sender_id).is_ok()
            && let Some(stored) = self
                .inner
                .store
                .message_by_client_id(&message.room_id, &message.sender_id, &message.client_id)
                .await?
        {
            return Ok(stored);
        }
        Err(self.too_fast())
    }

    /// Whether a prepared message needs [`Self::check_send`] before it is
    /// stored: a reply or a message with attachments.
    pub(crate) fn needs_check(message: &NewMessage) -> bool {
        message.reply_to != 0 || !message.attachments.is_empty()
    }

    /// Checks what a prepared message refers to: its `reply_to` names a
    /// message of its room, and its attachments are the sender's (asking
    /// media with the sender's `token`), whose metadata it then carries.
    ///
    /// # Errors
    /// INVALID_ARGUMENT when either does not hold; UNAVAILABLE without
    /// media; database failures.
    pub(crate) async fn check_send(
        &self,
        message: &mut NewMessage,
        token: &str,
    ) -> Result<(), Error> {
        self.check_reply(message).await?;
        if !message.attachments.is_empty() {
            self.inner
                .media
                .resolve(token, &message.sender_id, &mut message.attachments)
                .await?;
        }
        Ok(())
    }

    /// Checks that a message's `reply_to` names a message of its room.
    ///
    /// # Errors
    /// INVALID_ARGUMENT when it does not; database failures.
    async fn check_reply(&self, message: &NewMessage) -> Result<(), Error> {
        if message.reply_to == 0
            || self
                .inner
                .store
                .is_message(&message.room_id, message.reply_to)
                .await?
        {
            Ok(())
        } else {
            Err(not_a_message_to_reply_to())
        }
    }

    /// Validates an edit, deletion or reaction change, and takes a
    /// rate-limit token for it: they count against the same rate as
    /// sends.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for bad fields; RESOURCE_EXHAUSTED over the rate.
    pub(crate) fn prepare_event(
        &self,
        user: &User,
        room_id: RoomId,
        target_seq: i64,
        change: Change,
        client_id: String,
    ) -> Result<NewEvent, Error> {
        check_change(
            target_seq,
            &change,
            &client_id,
            self.inner.limits.max_content_bytes,
        )?;
        if !self.inner.limiter.try_take(&user.id) {
            return Err(self.too_fast());
        }
        Ok(NewEvent {
            room_id,
            target_seq,
            actor_id: user.id.clone(),
            actor_name: user.name.clone(),
            actor_admin: user.admin,
            client_id,
            change,
        })
    }

    /// Gives back the rate token of a write that was refused before it
    /// was queued.
    pub(crate) fn give_back(&self, user_id: &str) {
        self.inner.limiter.refund(user_id);
    }

    fn too_fast(&self) -> Error {
        Error::ResourceExhausted(format!(
            "sending too fast: at most {:.0} messages per second",
            1.0 / self.inner.limiter.retry_after().as_secs_f64()
        ))
    }

    /// Queues a prepared write for storage; the outcome goes to `reply`.
    /// Its storage and publish are traced under `span` (which may be
    /// disabled).
    pub(crate) fn submit(&self, write: Write, reply: Reply, span: tracing::Span) {
        if let Err(rejected) = self.inner.writer.submit(Submission { write, reply, span }) {
            let (submission, error) = *rejected;
            self.inner.limiter.refund(submission.write.actor());
            reply_error(submission, error);
        }
    }

    /// Moves `user`'s read marker in the room forward to `seq` (at most the
    /// room's newest seq) and, when it moved, tells the room's other
    /// members, droppably. Answers the marker now.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a negative seq; NOT_FOUND for an unknown room;
    /// FAILED_PRECONDITION for a non-member; database failures.
    pub(crate) async fn mark_read(
        &self,
        user: &User,
        room_id: &RoomId,
        seq: i64,
    ) -> Result<i64, Error> {
        domain::validate_seq("seq", seq)?;
        let room = self
            .inner
            .store
            .room(room_id)
            .await?
            .ok_or_else(|| Error::RoomNotFound(room_id.to_string()))?;
        let (read_seq, moved) = self
            .inner
            .store
            .mark_read(room_id, &user.id, seq.min(room.last_seq))
            .await?
            .ok_or_else(|| Error::NotAMemberOf(room_id.to_string()))?;
        if moved {
            self.broadcast(RoomEvent {
                room_id: room_id.to_string(),
                response: Some(ChatResponse {
                    frame: Some(Frame::Read(ReadNotice {
                        room_id: room_id.to_string(),
                        user_id: user.id.to_string(),
                        name: user.name.to_string(),
                        seq: read_seq,
                    })),
                }),
                except_user_id: user.id.to_string(),
            });
        }
        Ok(read_seq)
    }

    /// The caller's rooms, latest activity first.
    ///
    /// # Errors
    /// Database failures.
    pub(crate) async fn my_rooms(&self, user: &User) -> Result<Vec<RoomSummary>, Error> {
        self.inner.store.my_rooms(&user.id).await
    }

    /// Checks that `user` may read the room's history.
    ///
    /// # Errors
    /// NOT_FOUND for an unknown room; PERMISSION_DENIED for a private room
    /// the user is not a member of.
    pub(crate) async fn check_readable(
        &self,
        user: &User,
        room_id: &RoomId,
    ) -> Result<Room, Error> {
        let room = self
            .inner
            .store
            .room(room_id)
            .await?
            .ok_or_else(|| Error::RoomNotFound(room_id.to_string()))?;
        if room.is_private() && !self.inner.store.is_member(room_id, &user.id).await? {
            return Err(Error::MembersOnly(room_id.to_string()));
        }
        Ok(room)
    }

    /// Whether `user` is a member of the room.
    ///
    /// # Errors
    /// Database failures.
    pub(crate) async fn is_member(&self, user: &User, room_id: &RoomId) -> Result<bool, Error> {
        self.inner.store.is_member(room_id, &user.id).await
    }

    /// A page of history, oldest first, and whether older messages exist.
    ///
    /// # Errors
    /// As [`Self::check_readable`].
    pub(crate) async fn history(
        &self,
        user: &User,
        query: &HistoryQuery,
    ) -> Result<(Vec<parley_proto::chat::v1::ChatMessage>, bool), Error> {
        self.check_readable(user, &query.room_id).await?;
        self.inner
            .store
            .history(&query.room_id, query.before_seq, query.limit)
            .await
    }
}

fn not_a_message_to_reply_to() -> Error {
    Error::invalid("reply_to", "must be the seq of a message of this room")
}

/// A moderation as a frame or RPC asks for it.
#[derive(Debug, Clone)]
pub(crate) struct Moderation {
    /// The member acted on.
    pub(crate) user_id: String,
    /// What to do.
    pub(crate) action: MemberAction,
    /// The role, for `SET_ROLE`.
    pub(crate) role: String,
    /// How long a ban or mute lasts.
    pub(crate) duration: Option<prost_types::Duration>,
    /// Idempotency key.
    pub(crate) client_id: String,
}

impl Moderation {
    /// `action` on `user_id`, with no role or duration.
    pub(crate) fn of(action: MemberAction, user_id: String, client_id: String) -> Self {
        Self {
            user_id,
            action,
            role: String::new(),
            duration: None,
            client_id,
        }
    }

    /// For a ban or mute: how long it lasts.
    pub(crate) fn lasting(self, duration: Option<prost_types::Duration>) -> Self {
        Self { duration, ..self }
    }

    /// For `set_role`: the role.
    pub(crate) fn with_role(self, role: String) -> Self {
        Self { role, ..self }
    }
}

/// Why a send was not queued.
#[derive(Debug)]
pub(crate) enum PrepareError {
    /// A bad field.
    Invalid(Error),
    /// Over the rate; the message, to check whether it is a retry.
    RateLimited(Box<NewMessage>),
}
