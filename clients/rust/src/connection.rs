//! The WebSocket, kept open. One task owns it: it reconnects with backoff
//! and jitter, rejoins every room with `since_seq` (so no timeline event
//! is lost or repeated), resends unacknowledged sends with their
//! `client_id` (so a retry never stores a second message), and renews the
//! token in band before it expires (README: "WebSocket protocol").

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use futures_util::{Sink, SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::{
    self, Message, client::IntoClientRequest as _, http::HeaderValue,
};

use crate::{
    error::{Action, Error, Result},
    events::{Ack, Event, TIMELINE, TimelineEvent, split},
    rest::Client,
};

/// How long opening the WebSocket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the connection is pinged; silence for three of these counts
/// as a lost connection (a peer that vanished sends no close).
const PING_EVERY: Duration = Duration::from_secs(15);
/// Backoff between reconnects: doubling from the first, up to the most.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MOST: Duration = Duration::from_secs(30);
/// Most messages history may return at once (README: "WebSocket protocol").
const HISTORY_LIMIT: i64 = 200;

/// Where the connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Opening the first connection.
    Connecting,
    /// Open: rooms are joined and sends go out.
    Connected,
    /// Lost; the next attempt comes after a backoff. Sends wait meanwhile.
    Reconnecting {
        /// Attempts since the connection was last open.
        attempt: u32,
        /// Why the last one failed.
        reason: String,
    },
    /// Given up: the credentials were refused. Sign in again.
    Failed(String),
}

/// A live connection to the gateway. Dropping every handle (this and its
/// rooms) closes it.
#[derive(Debug)]
pub struct Connection {
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<ConnectionState>,
}

/// One joined room: read its events, and (through [`RoomSender`], which
/// it derefs to) send to it.
#[derive(Debug)]
pub struct Room {
    sender: RoomSender,
    events: mpsc::UnboundedReceiver<Event>,
}

/// What can be done in a joined room besides reading its events. Cheap to
/// clone, so other tasks can send while one reads.
#[derive(Debug, Clone)]
pub struct RoomSender {
    id: String,
    commands: mpsc::UnboundedSender<Command>,
}

type Events = mpsc::UnboundedReceiver<Event>;

#[derive(Debug)]
enum Command {
    Join {
        room_id: String,
        password: Option<String>,
        reply: oneshot::Sender<Result<Events>>,
    },
    /// A frame the server acknowledges by its `client_id`: send, edit,
    /// delete, react.
    Call(PendingSend),
    /// A frame with no answer (typing, read): dropped while disconnected.
    Notify { room_id: String, frame: Value },
    /// Leave the room: the user is no longer a member.
    Leave { room_id: String },
    /// The handle was dropped: stop following the room here.
    Forget { room_id: String },
}

/// A message to send: text, a reply, attachments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Draft {
    /// The text; may be empty when there are attachments.
    pub content: String,
    /// The `seq` of the message this answers; 0 for none.
    pub reply_to: i64,
    /// Ids of attachments the sender uploaded (at most 10).
    pub attachments: Vec<String>,
    /// The idempotency key; a fresh one when `None`.
    pub client_id: Option<String>,
}

impl Draft {
    /// A plain text message.
    pub fn text(content: impl Into<String>) -> Self {
        Self {
            content: content.into(),
            ..Self::default()
        }
    }
}

impl Connection {
    pub(crate) fn spawn(client: Client) -> Self {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (state, state_rx) = watch::channel(ConnectionState::Connecting);
        let task = Task {
            client,
            commands: commands_rx,
            state,
            rooms: HashMap::new(),
            sends: VecDeque::new(),
        };
        tokio::spawn(task.run());
        Self {
            commands,
            state: state_rx,
        }
    }

    /// Joins `room_id` (a public room is created by its first join) and
    /// returns its handle; its events start after the join.
    ///
    /// # Errors
    /// The server's refusal (NOT_FOUND, PERMISSION_DENIED for a private
    /// room), or [`Error::Closed`].
    pub async fn join(&self, room_id: &str) -> Result<Room> {
        self.join_with_password(room_id, None).await
    }

    /// Joins a private room with its password; rejoins after a reconnect
    /// use it again.
    ///
    /// # Errors
    /// As [`Connection::join`]; PERMISSION_DENIED for a wrong password.
    pub async fn join_with_password(&self, room_id: &str, password: Option<&str>) -> Result<Room> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Join {
                room_id: room_id.to_owned(),
                password: password.map(str::to_owned),
                reply,
            })
            .map_err(|_| Error::Closed)?;
        let events = answer.await.map_err(|_| Error::Closed)??;
        Ok(Room {
            sender: RoomSender {
                id: room_id.to_owned(),
                commands: self.commands.clone(),
            },
            events,
        })
    }

    /// The connection's state, to watch for changes.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }
}

impl Room {
    /// A handle to send with from another task.
    pub fn sender(&self) -> RoomSender {
        self.sender.clone()
    }

    /// The room's next event; `None` once the connection is closed or the
    /// room was left.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Leaves the room: the user is no longer a member (a private room
    /// then needs its password again). Dropping a handle only stops
    /// following the room here.
    pub fn leave(mut self) {
        let room_id = std::mem::take(&mut self.sender.id);
        let _ = self.sender.commands.send(Command::Leave { room_id });
    }
}

impl std::ops::Deref for Room {
    type Target = RoomSender;

    fn deref(&self) -> &RoomSender {
        &self.sender
    }
}

impl RoomSender {
    /// The room's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sends a message with a fresh `client_id` and waits for the server
    /// to store it; across reconnects it is resent with the same id, so it
    /// is stored once.
    ///
    /// # Errors
    /// The server's refusal (INVALID_ARGUMENT for empty or long content,
    /// RESOURCE_EXHAUSTED past the rate limit, PERMISSION_DENIED when
    /// muted), or [`Error::Closed`].
    pub async fn send(&self, content: &str) -> Result<Ack> {
        self.send_draft(Draft::text(content)).await
    }

    /// Sends with the caller's `client_id`: sending again with the same
    /// one returns the first message instead of storing another.
    ///
    /// # Errors
    /// As [`RoomSender::send`].
    pub async fn send_with_id(&self, content: &str, client_id: &str) -> Result<Ack> {
        self.send_draft(Draft {
            content: content.to_owned(),
            client_id: Some(client_id.to_owned()),
            ..Draft::default()
        })
        .await
    }

    /// Sends a message with a reply, attachments or a chosen `client_id`;
    /// stored once, like [`RoomSender::send`].
    ///
    /// # Errors
    /// As [`RoomSender::send`]; INVALID_ARGUMENT for an attachment that is
    /// unknown or someone else's, or a `reply_to` not in the room.
    pub async fn send_draft(&self, draft: Draft) -> Result<Ack> {
        let client_id = draft.client_id.unwrap_or_else(new_client_id);
        let mut send =
            json!({"room_id": self.id, "content": draft.content, "client_id": client_id});
        if draft.reply_to > 0 {
            send["reply_to"] = json!(draft.reply_to);
        }
        if !draft.attachments.is_empty() {
            send["attachments"] = json!(draft.attachments);
        }
        self.call(client_id, json!({ "send": send })).await
    }

    /// Replaces the text of one's own message `seq`.
    ///
    /// # Errors
    /// PERMISSION_DENIED for someone else's message, NOT_FOUND or
    /// FAILED_PRECONDITION for one that is gone.
    pub async fn edit(&self, seq: i64, content: &str) -> Result<Ack> {
        let client_id = new_client_id();
        let frame = json!({"edit": {"room_id": self.id, "seq": seq, "content": content, "client_id": client_id}});
        self.call(client_id, frame).await
    }

    /// Deletes message `seq` (one's own, or any as a moderator).
    ///
    /// # Errors
    /// As [`RoomSender::edit`].
    pub async fn delete(&self, seq: i64) -> Result<Ack> {
        let client_id = new_client_id();
        let frame = json!({"delete": {"room_id": self.id, "seq": seq, "client_id": client_id}});
        self.call(client_id, frame).await
    }

    /// Adds a reaction to message `seq`, or takes it back with `remove`.
    ///
    /// # Errors
    /// INVALID_ARGUMENT past 20 distinct emoji or 64 bytes; NOT_FOUND.
    pub async fn react(&self, seq: i64, emoji: &str, remove: bool) -> Result<Ack> {
        let client_id = new_client_id();
        let frame = json!({"react": {"room_id": self.id, "seq": seq, "emoji": emoji, "remove": remove, "client_id": client_id}});
        self.call(client_id, frame).await
    }

    /// Tells the other members the user is typing; dropped while
    /// disconnected (it means nothing later).
    pub fn typing(&self) {
        self.notify(json!({"typing": {"room_id": self.id}}));
    }

    /// Moves the user's read marker to `seq`; dropped while disconnected.
    pub fn read(&self, seq: i64) {
        self.notify(json!({"read": {"room_id": self.id, "seq": seq}}));
    }

    fn notify(&self, frame: Value) {
        let _ = self.commands.send(Command::Notify {
            room_id: self.id.clone(),
            frame,
        });
    }

    async fn call(&self, client_id: String, frame: Value) -> Result<Ack> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Call(PendingSend {
                room_id: self.id.clone(),
                client_id,
                frame: frame.to_string(),
                reply,
            }))
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        // Empty after `leave`, which said so already.
        if !self.sender.id.is_empty() {
            let _ = self.sender.commands.send(Command::Forget {
                room_id: std::mem::take(&mut self.sender.id),
            });
        }
    }
}

/// A room as the task keeps it.
#[derive(Debug)]
struct RoomState {
    /// The newest timeline `seq` delivered: a rejoin replays after it.
    last_seq: i64,
    events: mpsc::UnboundedSender<Event>,
    /// The join's answer and the events it hands over, until `joined`.
    joining: Option<(oneshot::Sender<Result<Events>>, Events)>,
    /// Joined on the current socket: sends go out at once.
    live: bool,
    /// Timeline events held while history fills what a rejoin missed.
    held: Option<Vec<TimelineEvent>>,
    /// A private room's password, for rejoins.
    password: Option<String>,
}

/// A call (send, edit, delete, react) not acknowledged yet; its frame
/// goes out again after every rejoin until the answer comes.
#[derive(Debug)]
struct PendingSend {
    room_id: String,
    client_id: String,
    frame: String,
    reply: oneshot::Sender<Result<Ack>>,
}

/// Why serving a socket ended.
enum Ended {
    /// Every handle is gone.
    Stopped,
    /// The connection broke: reconnect.
    Lost(String),
    /// The credentials were refused: nothing to retry.
    Refused(Error),
}

struct Task {
    client: Client,
    commands: mpsc::UnboundedReceiver<Command>,
    state: watch::Sender<ConnectionState>,
    rooms: HashMap<String, RoomState>,
    sends: VecDeque<PendingSend>,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Task {
    async fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            let ended = match self.open().await {
                Ok(socket) => {
                    attempt = 0;
                    self.state.send_replace(ConnectionState::Connected);
                    self.serve(socket).await
                }
                Err(err) if err.action() == Action::SignIn => Ended::Refused(err),
                Err(err) => Ended::Lost(err.to_string()),
            };
            let reason = match ended {
                Ended::Stopped => return,
                Ended::Refused(err) => {
                    self.state
                        .send_replace(ConnectionState::Failed(err.to_string()));
                    self.fail_all(&err);
                    return;
                }
                Ended::Lost(reason) => reason,
            };
            attempt = attempt.saturating_add(1);
            self.state
                .send_replace(ConnectionState::Reconnecting { attempt, reason });
            let wait = tokio::time::sleep(backoff(attempt));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => break,
                    command = self.commands.recv() => match command {
                        Some(command) => self.take(command),
                        None => return,
                    },
                }
            }
        }
    }

    async fn open(&mut self) -> Result<Socket> {
        let token = self.client.bearer().await?;
        let mut request = self
            .client
            .ws_url()
            .into_client_request()
            .map_err(|err| Error::Url(err.to_string()))?;
        let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|err| Error::Transport(err.to_string()))?;
        request.headers_mut().insert("authorization", bearer);
        let connecting = tokio_tungstenite::connect_async(request);
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Err(_) => Err(Error::Transport("timed out opening the WebSocket".into())),
            Ok(Ok((socket, _))) => Ok(socket),
            Ok(Err(tungstenite::Error::Http(response))) if response.status() == 401 => {
                Err(Error::Server {
                    status: Some(401),
                    code: "UNAUTHENTICATED".into(),
                    message: "the server refused the credentials".into(),
                })
            }
            Ok(Err(err)) => Err(Error::Transport(err.to_string())),
        }
    }

    /// Serves one socket until it ends.
    async fn serve(&mut self, socket: Socket) -> Ended {
        let (mut sink, mut stream) = socket.split();
        // Every room again, from where it was; sends go out once joined.
        let mut rejoins = Vec::new();
        for (room_id, room) in &mut self.rooms {
            room.live = false;
            rejoins.push(join_frame(room_id, room.last_seq, room.password.as_deref()));
        }
        for frame in rejoins {
            if let Err(reason) = send(&mut sink, frame).await {
                return Ended::Lost(reason);
            }
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut heard = Instant::now();
        loop {
            let renew_at = self.client.renew_at().await;
            let renewal = async {
                match renew_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let step = tokio::select! {
                message = stream.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        heard = Instant::now();
                        self.on_frame(text.as_str(), &mut sink).await
                    }
                    Some(Ok(Message::Close(frame))) => Err(match frame {
                        Some(frame) => format!("closed by the server ({}: {})", u16::from(frame.code), frame.reason),
                        None => "closed by the server".to_owned(),
                    }),
                    Some(Ok(_)) => {
                        heard = Instant::now();
                        Ok(())
                    }
                    Some(Err(err)) => Err(err.to_string()),
                    None => Err("connection closed".to_owned()),
                },
                command = self.commands.recv() => match command {
                    Some(command) => self.command(command, &mut sink).await,
                    None => {
                        let _ = sink.send(Message::Close(None)).await;
                        return Ended::Stopped;
                    }
                },
                () = renewal => match self.client.bearer().await {
                    Ok(token) => send(&mut sink, json!({"refresh": {"token": token}})).await,
                    Err(err) if err.action() == Action::SignIn => return Ended::Refused(err),
                    Err(err) => Err(err.to_string()),
                },
                _ = ping.tick() => {
                    if heard.elapsed() > PING_EVERY * 3 {
                        Err("the server stopped answering".to_owned())
                    } else {
                        send(&mut sink, json!({"ping": {"nonce": "keepalive"}})).await
                    }
                }
            };
            if let Err(reason) = step {
                return Ended::Lost(reason);
            }
        }
    }

    /// Takes a command while there is no socket: it is carried out when
    /// the next one opens.
    fn take(&mut self, command: Command) {
        match command {
            Command::Join {
                room_id,
                password,
                reply,
            } => {
                self.add_room(room_id, password, reply);
            }
            Command::Call(call) => {
                if let Some(call) = self.known_room(call) {
                    self.sends.push_back(call);
                }
            }
            Command::Notify { .. } => {}
            // Not a member once the next socket opens: it never rejoins.
            Command::Leave { room_id } | Command::Forget { room_id } => {
                self.remove_room(&room_id);
            }
        }
    }

    async fn command(
        &mut self,
        command: Command,
        sink: &mut (impl Sink<Message, Error = tungstenite::Error> + Unpin),
    ) -> std::result::Result<(), String> {
        match command {
            Command::Join {
                room_id,
                password,
                reply,
            } => {
                let frame = join_frame(&room_id, 0, password.as_deref());
                if self.add_room(room_id, password, reply) {
                    send(sink, frame).await?;
                }
            }
            Command::Call(call) => {
                let Some(call) = self.known_room(call) else {
                    return Ok(());
                };
                if self.rooms.get(&call.room_id).is_some_and(|room| room.live) {
                    sink.send(Message::Text(call.frame.clone().into()))
                        .await
                        .map_err(|err| err.to_string())?;
                }
                self.sends.push_back(call);
            }
            Command::Notify { room_id, frame } => {
                if self.rooms.get(&room_id).is_some_and(|room| room.live) {
                    send(sink, frame).await?;
                }
            }
            Command::Leave { room_id } => {
                if self.rooms.contains_key(&room_id) {
                    self.remove_room(&room_id);
                    send(sink, json!({"leave": {"room_id": room_id}})).await?;
                }
            }
            Command::Forget { room_id } => self.remove_room(&room_id),
        }
        Ok(())
    }

    /// The call, if its room is still followed here; a call from a
    /// [`RoomSender`] that outlived its [`Room`] is answered at once, as
    /// nothing would ever send it.
    fn known_room(&self, call: PendingSend) -> Option<PendingSend> {
        if self.rooms.contains_key(&call.room_id) {
            return Some(call);
        }
        let _ = call.reply.send(Err(Error::Closed));
        None
    }

    /// Adds a room to join; false (and the join refused) when this
    /// connection has it already.
    fn add_room(
        &mut self,
        room_id: String,
        password: Option<String>,
        reply: oneshot::Sender<Result<Events>>,
    ) -> bool {
        if self.rooms.contains_key(&room_id) {
            let _ = reply.send(Err(Error::Server {
                status: None,
                code: "FAILED_PRECONDITION".into(),
                message: format!("{room_id} is joined on this connection already"),
            }));
            return false;
        }
        let (events, events_rx) = mpsc::unbounded_channel();
        self.rooms.insert(
            room_id,
            RoomState {
                last_seq: 0,
                events,
                joining: Some((reply, events_rx)),
                live: false,
                held: None,
                password,
            },
        );
        true
    }

    fn remove_room(&mut self, room_id: &str) {
        self.rooms.remove(room_id);
        let (gone, kept) = std::mem::take(&mut self.sends)
            .into_iter()
            .partition(|send| send.room_id == room_id);
        self.sends = kept;
        for send in gone {
            let _ = send.reply.send(Err(Error::Closed));
        }
    }

    fn fail_all(&mut self, err: &Error) {
        for send in self.sends.drain(..) {
            let _ = send.reply.send(Err(err.clone()));
        }
        for (_, room) in self.rooms.drain() {
            if let Some((reply, _)) = room.joining {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }

    async fn on_frame(
        &mut self,
        text: &str,
        sink: &mut (impl Sink<Message, Error = tungstenite::Error> + Unpin),
    ) -> std::result::Result<(), String> {
        let Some((kind, frame)) = split(text) else {
            return Ok(());
        };
        let room_id = frame["room_id"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "joined" => return self.joined(&room_id, &frame, sink).await,
            "ack" => {
                let client_id = frame["client_id"].as_str().unwrap_or_default();
                if let Some(at) = self.sends.iter().position(|s| s.client_id == client_id)
                    && let Some(send) = self.sends.remove(at)
                {
                    let _ = send.reply.send(Ok(Ack {
                        message_id: frame["message_id"].as_str().unwrap_or_default().to_owned(),
                        seq: frame["seq"].as_i64().unwrap_or_default(),
                        client_id: send.client_id,
                    }));
                }
            }
            "error" => self.error(&room_id, &frame),
            "left" => {
                if let Some(room) = self.rooms.get(&room_id) {
                    let _ = room.events.send(Event::Left);
                }
                self.remove_room(&room_id);
            }
            "history" => self.history(&room_id, &frame),
            "typing" | "presence" | "read" => {
                if let Some(room) = self.rooms.get(&room_id) {
                    let _ = room.events.send(Event::Ephemeral { kind, frame });
                }
            }
            kind if TIMELINE.contains(&kind) => {
                let seq = frame["seq"].as_i64().unwrap_or_default();
                let event = TimelineEvent {
                    kind: kind.to_owned(),
                    seq,
                    frame,
                };
                if let Some(room) = self.rooms.get_mut(&room_id) {
                    match &mut room.held {
                        Some(held) => held.push(event),
                        None => deliver(room, event),
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn joined(
        &mut self,
        room_id: &str,
        frame: &Value,
        sink: &mut (impl Sink<Message, Error = tungstenite::Error> + Unpin),
    ) -> std::result::Result<(), String> {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return Ok(());
        };
        room.live = true;
        let last_seq = frame["last_seq"].as_i64().unwrap_or_default();
        let truncated = frame["replay_truncated"].as_bool() == Some(true);
        // Members online, role, name: first, so they come before events.
        let _ = room.events.send(Event::Joined(frame.clone()));
        if let Some((reply, events)) = room.joining.take() {
            // The first join: events start after what the room holds now.
            room.last_seq = last_seq;
            let _ = reply.send(Ok(events));
        } else if last_seq > room.last_seq && (truncated || room.last_seq == 0) {
            // The replay cannot cover what was missed: more than the
            // server replays, or nothing to replay after (the room was
            // empty at the first join). History fills it, and what arrives
            // meanwhile waits so the order holds.
            let missed = last_seq - room.last_seq;
            if missed > HISTORY_LIMIT {
                let _ = room.events.send(Event::ReplayTruncated);
            }
            room.held = Some(Vec::new());
            let request = json!({"get_chat_history": {
                "room_id": room_id,
                "limit": missed.min(HISTORY_LIMIT),
                "before_seq": last_seq + 1,
            }});
            send(sink, request).await?;
        }
        for pending in self.sends.iter().filter(|s| s.room_id == room_id) {
            sink.send(Message::Text(pending.frame.clone().into()))
                .await
                .map_err(|err| err.to_string())?;
        }
        Ok(())
    }

    fn history(&mut self, room_id: &str, frame: &Value) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        let Some(held) = room.held.take() else {
            return;
        };
        let mut messages: Vec<TimelineEvent> = frame["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|message| TimelineEvent {
                kind: "message".to_owned(),
                seq: message["seq"].as_i64().unwrap_or_default(),
                frame: message.clone(),
            })
            .collect();
        messages.sort_by_key(|event| event.seq);
        for event in messages.into_iter().chain(held) {
            deliver(room, event);
        }
    }

    fn error(&mut self, room_id: &str, frame: &Value) {
        let code = frame["code"].as_str().unwrap_or("UNKNOWN").to_owned();
        let message = frame["message"].as_str().unwrap_or_default().to_owned();
        let client_id = frame["client_id"].as_str().unwrap_or_default();
        if !client_id.is_empty()
            && let Some(at) = self.sends.iter().position(|s| s.client_id == client_id)
            && let Some(send) = self.sends.remove(at)
        {
            let _ = send.reply.send(Err(Error::Server {
                status: None,
                code,
                message,
            }));
            return;
        }
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        if let Some((reply, _)) = room.joining.take() {
            let _ = reply.send(Err(Error::Server {
                status: None,
                code,
                message,
            }));
            self.remove_room(room_id);
        } else {
            let _ = room.events.send(Event::Error { code, message });
        }
    }
}

/// Hands a timeline event to the room once: what was delivered already
/// (a replay overlapping what arrived live) is dropped.
fn deliver(room: &mut RoomState, event: TimelineEvent) {
    if event.seq <= room.last_seq {
        return;
    }
    room.last_seq = event.seq;
    let _ = room.events.send(Event::Timeline(event));
}

fn join_frame(room_id: &str, since_seq: i64, password: Option<&str>) -> Value {
    let mut join = json!({"room_id": room_id, "since_seq": since_seq});
    if let Some(password) = password {
        join["password"] = json!(password);
    }
    json!({ "join": join })
}

/// A fresh idempotency key.
fn new_client_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn send(
    sink: &mut (impl Sink<Message, Error = tungstenite::Error> + Unpin),
    frame: Value,
) -> std::result::Result<(), String> {
    sink.send(Message::Text(frame.to_string().into()))
        .await
        .map_err(|err| err.to_string())
}

/// The wait before reconnect `attempt` (from 1): doubling, capped, and
/// between half and all of that at random, so clients cut off together do
/// not come back together.
fn backoff(attempt: u32) -> Duration {
    let full = BACKOFF_FIRST
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MOST);
    let random = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
    full / 2 + full / 2 * random / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_most_with_jitter() {
        for attempt in 1..40 {
            let full = (BACKOFF_FIRST * 2u32.pow((attempt - 1).min(16))).min(BACKOFF_MOST);
            let wait = backoff(attempt);
            assert!(wait >= full / 2 && wait <= full, "{attempt}: {wait:?}");
        }
    }

    #[test]
    fn a_timeline_event_is_delivered_once() {
        let (events, mut seen) = mpsc::unbounded_channel();
        let mut room = RoomState {
            last_seq: 4,
            events,
            joining: None,
            live: true,
            held: None,
            password: None,
        };
        for seq in [3, 5, 5, 6, 4] {
            deliver(
                &mut room,
                TimelineEvent {
                    kind: "message".into(),
                    seq,
                    frame: Value::Null,
                },
            );
        }
        let mut seqs = Vec::new();
        while let Ok(Event::Timeline(event)) = seen.try_recv() {
            seqs.push(event.seq);
        }
        assert_eq!(seqs, [5, 6]);
    }
}
