//! The operations every entry point shares: the unary RPCs, `Chat` streams
//! and gateway sessions all join, leave, send, type and read history
//! through an [`Engine`], so they follow the same rules.

use std::sync::Arc;

use parley_proto::chat::v1::{
    ChatResponse, Member, Presence as PresenceFrame, PresenceState, RoomEvent, TypingNotice,
    chat_response::Frame,
};
use parley_runtime::{password::Passwords, token::TokenVerifier};

use crate::{
    bus::Bus,
    domain::{
        self, NewMessage, Room, RoomId, StoredMessage, normalize_short_code, validate_client_id,
        validate_content, validate_password, validate_room_id,
    },
    error::Error,
    hub::Hub,
    limiter::SendLimiter,
    presence::Presence,
    store::ChatStore,
    writer::{Reply, Submission, Writer, reply_error},
};

/// Limits from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest content, in bytes.
    pub max_content_bytes: usize,
    /// Most messages replayed on a join.
    pub max_replay: i64,
    /// Rooms one session may have joined.
    pub max_rooms_per_session: usize,
    /// Items queued per outgoing stream.
    pub stream_queue: usize,
}

/// The user a request acts for, from their token.
#[derive(Debug, Clone)]
pub struct User {
    /// The user id.
    pub id: Arc<str>,
    /// The username.
    pub name: Arc<str>,
}

/// What a join asks for.
#[derive(Debug, Clone, Default)]
pub struct JoinRequest {
    /// The room's id, or "".
    pub room_id: String,
    /// The room's short code, or "".
    pub short_code: String,
    /// The private room's password, or "".
    pub password: String,
}

/// The shared operations. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
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
}

/// The parts an [`Engine`] is made of.
#[derive(Debug)]
pub struct Parts {
    /// Storage.
    pub store: ChatStore,
    /// The replica's rooms.
    pub hub: Hub,
    /// Fan-out to other replicas.
    pub bus: Bus,
    /// Who is online.
    pub presence: Presence,
    /// Message storage lanes.
    pub writer: Writer,
    /// The send rate limit.
    pub limiter: Arc<SendLimiter>,
    /// Room password hashing.
    pub passwords: Passwords,
    /// Access-token verification.
    pub verifier: TokenVerifier,
    /// Limits.
    pub limits: Limits,
}

impl Engine {
    /// An engine over its parts.
    pub fn new(parts: Parts) -> Self {
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
        } = parts;
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
            }),
        }
    }

    /// The hub.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The configured limits.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// The token verifier.
    pub fn verifier(&self) -> &TokenVerifier {
        &self.inner.verifier
    }

    /// Creates a room with a server-made id and short code; private (with
    /// the creator as member) when a password is given.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a bad name or password; database failures.
    pub async fn create_room(
        &self,
        user: &User,
        name: &str,
        password: &str,
    ) -> Result<Room, Error> {
        let name = domain::room_name(name)?;
        validate_password(password)?;
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
    /// checks a private room's password unless the user is a member, and
    /// records the membership.
    ///
    /// # Errors
    /// INVALID_ARGUMENT unless exactly one of id and code is given;
    /// NOT_FOUND for an unknown code, or an unknown id given with a
    /// password; PERMISSION_DENIED for a wrong or missing password.
    pub async fn admit(&self, user: &User, request: &JoinRequest) -> Result<Room, Error> {
        validate_password(&request.password)?;
        let room =
            match (request.room_id.is_empty(), request.short_code.is_empty()) {
                (false, true) => {
                    validate_room_id("room_id", &request.room_id)?;
                    if request.password.is_empty() {
                        self.inner
                            .store
                            .room_or_create_public(&request.room_id, &user.id)
                            .await?
                    } else {
                        self.inner
                            .store
                            .room(&request.room_id)
                            .await?
                            .ok_or_else(|| not_found_room(&request.room_id))?
                    }
                }
                (true, false) => {
                    let code = normalize_short_code(&request.short_code)?;
                    self.inner.store.room_by_code(&code).await?.ok_or_else(|| {
                        Error::NotFound(format!("no room has the short code {code}"))
                    })?
                }
                _ => {
                    return Err(Error::invalid(
                        "room_id",
                        "give exactly one of room_id and short_code",
                    ));
                }
            };
        if room.is_private() && !self.inner.store.is_member(&room.id, &user.id).await? {
            if request.password.is_empty() {
                return Err(Error::PermissionDenied(format!(
                    "room {} is private: give its password",
                    room.id
                )));
            }
            let matches = self
                .inner
                .passwords
                .verify(request.password.clone(), room.password_hash.clone())
                .await?;
            if !matches {
                return Err(Error::PermissionDenied(format!(
                    "wrong password for room {}",
                    room.id
                )));
            }
        }
        self.inner.store.add_member(&room.id, &user.id).await?;
        Ok(room)
    }

    /// Ends a membership.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a bad room id; database failures.
    pub async fn end_membership(&self, user: &User, room_id: &str) -> Result<(), Error> {
        validate_room_id("room_id", room_id)?;
        self.inner.store.remove_member(room_id, &user.id).await
    }

    /// Counts a session of `user` into a room it was admitted to and, for
    /// the user's first session anywhere, announces them.
    pub async fn enter(&self, room: &Room, user: &User) -> RoomId {
        let room_id = RoomId::from(room.id.as_str());
        let first_here = self
            .inner
            .hub
            .enter(&room_id, room.last_seq, &user.id, &user.name);
        if first_here {
            let first_anywhere = match &self.inner.presence {
                Presence::Local => true,
                Presence::Redis(redis) => redis
                    .join(&room_id, &user.id, &user.name)
                    .await
                    .unwrap_or_else(|err| {
                        tracing::warn!(error = %err, "presence unavailable; announcing from local knowledge");
                        true
                    }),
            };
            if first_anywhere {
                self.announce(&room_id, &user.id, &user.name, PresenceState::Joined);
            }
        }
        room_id
    }

    /// Counts a session of `user` out of a room and, for the user's last
    /// session anywhere, announces that they left.
    pub async fn exit(&self, room_id: &str, user: &User) {
        if !self.inner.hub.exit(room_id, &user.id) {
            return;
        }
        let last_anywhere = match &self.inner.presence {
            Presence::Local => true,
            Presence::Redis(redis) => redis
                .leave(room_id, &user.id, &user.name)
                .await
                .unwrap_or_else(|err| {
                    tracing::warn!(error = %err, "presence unavailable; announcing from local knowledge");
                    true
                }),
        };
        if last_anywhere {
            self.announce(room_id, &user.id, &user.name, PresenceState::Left);
        }
    }

    /// Tells the room's members (on every replica) that a user arrived or
    /// left; never the user themselves.
    pub fn announce(&self, room_id: &str, user_id: &str, name: &str, state: PresenceState) {
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

    /// Tells the room's other members that `user` is typing.
    pub fn typing(&self, room_id: &str, user: &User) {
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
        self.inner.hub.deliver_ephemeral(event);
    }

    /// The users online in the room, across replicas.
    pub async fn members(&self, room_id: &str) -> Vec<Member> {
        match &self.inner.presence {
            Presence::Local => self.inner.hub.local_members(room_id),
            Presence::Redis(redis) => match redis.members(room_id).await {
                Ok(members) => members,
                Err(err) => {
                    tracing::warn!(error = %err, "presence unavailable; listing local members");
                    self.inner.hub.local_members(room_id)
                }
            },
        }
    }

    /// Validates a send and takes a rate-limit token for it.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for bad fields; RESOURCE_EXHAUSTED when the user is
    /// over the rate (with the message the user would have stored, when
    /// the send is a retry of a stored one: see [`Self::find_retry`]).
    pub fn prepare_send(
        &self,
        user: &User,
        room_id: &str,
        content: String,
        client_id: String,
    ) -> Result<NewMessage, PrepareError> {
        let checked = validate_room_id("room_id", room_id)
            .and_then(|()| validate_content(&content, self.inner.limits.max_content_bytes))
            .and_then(|()| validate_client_id(&client_id));
        if let Err(err) = checked {
            return Err(PrepareError::Invalid(err));
        }
        let message = NewMessage {
            room_id: RoomId::from(room_id),
            sender_id: user.id.clone(),
            sender_name: user.name.clone(),
            content,
            client_id,
        };
        if self.inner.limiter.try_take(&user.id) {
            Ok(message)
        } else {
            Err(PrepareError::RateLimited(message))
        }
    }

    /// The message a rate-limited send would repeat, if it is a retry: a
    /// retry costs no token, so it is answered even over the rate.
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED when it is not a retry; database failures.
    pub async fn find_retry(&self, message: &NewMessage) -> Result<StoredMessage, Error> {
        if !message.client_id.is_empty()
            && let Some(stored) = self
                .inner
                .store
                .message_by_client_id(&message.room_id, &message.sender_id, &message.client_id)
                .await?
        {
            return Ok(stored);
        }
        Err(Error::ResourceExhausted(format!(
            "sending too fast: at most {:.0} messages per second",
            1.0 / self.inner.limiter.retry_after().as_secs_f64()
        )))
    }

    /// Queues a prepared send for storage; the outcome goes to `reply`.
    /// Its storage and publish are traced under `span` (which may be
    /// disabled).
    pub fn submit(&self, message: NewMessage, reply: Reply, span: tracing::Span) {
        if let Err(rejected) = self.inner.writer.submit(Submission {
            message,
            reply,
            span,
        }) {
            let (submission, error) = *rejected;
            self.inner.limiter.refund(&submission.message.sender_id);
            reply_error(submission, error);
        }
    }

    /// Checks that `user` may read the room's history.
    ///
    /// # Errors
    /// NOT_FOUND for an unknown room; PERMISSION_DENIED for a private room
    /// the user is not a member of.
    pub async fn check_readable(&self, user: &User, room_id: &str) -> Result<Room, Error> {
        validate_room_id("room_id", room_id)?;
        let room = self
            .inner
            .store
            .room(room_id)
            .await?
            .ok_or_else(|| not_found_room(room_id))?;
        if room.is_private() && !self.inner.store.is_member(room_id, &user.id).await? {
            return Err(Error::PermissionDenied(format!(
                "room {room_id} is private: only members read its history"
            )));
        }
        Ok(room)
    }

    /// Whether `user` is a member of the room.
    ///
    /// # Errors
    /// Database failures.
    pub async fn is_member(&self, user: &User, room_id: &str) -> Result<bool, Error> {
        self.inner.store.is_member(room_id, &user.id).await
    }

    /// A page of history, oldest first, and whether older messages exist.
    ///
    /// # Errors
    /// As [`Self::check_readable`]; INVALID_ARGUMENT for a bad limit or seq.
    pub async fn history(
        &self,
        user: &User,
        room_id: &str,
        before_seq: i64,
        limit: i32,
    ) -> Result<(Vec<parley_proto::chat::v1::ChatMessage>, bool), Error> {
        let limit = domain::history_limit(limit)?;
        domain::validate_seq("before_seq", before_seq)?;
        self.check_readable(user, room_id).await?;
        self.inner.store.history(room_id, before_seq, limit).await
    }
}

/// Why a send was not queued.
#[derive(Debug)]
pub enum PrepareError {
    /// A bad field.
    Invalid(Error),
    /// Over the rate; the message, to check whether it is a retry.
    RateLimited(NewMessage),
}

fn not_found_room(room_id: &str) -> Error {
    Error::NotFound(format!("room {room_id} not found"))
}

impl Engine {
    /// Stored messages with `after < seq <= up_to`, oldest first.
    ///
    /// # Errors
    /// Database failures.
    pub async fn replay(
        &self,
        room_id: &str,
        after: i64,
        up_to: i64,
    ) -> Result<Vec<StoredMessage>, Error> {
        self.inner.store.range(room_id, after, up_to).await
    }
}
