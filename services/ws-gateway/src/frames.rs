//! The WebSocket protocol's JSON frames (README: "WebSocket protocol") and
//! their protobuf twins on the chat streams.
//!
//! A client frame is one JSON object with exactly one key naming the frame;
//! it becomes a `ChatRequest`. Server frames are `ChatResponse`s written
//! back as JSON with every field present. Message frames are encoded once
//! and the bytes shared by every recipient on this gateway.

use std::time::{Duration, SystemTime};

use axum::extract::ws::Utf8Bytes;
use parley_proto::chat::v1::{
    ChatMessage, ChatRequest, ChatResponse, Delete, Edit, GetChatHistoryRequest, Join, Leave,
    MemberAction, Moderate, Ping, PresenceState, React, ReactionState, Read, Refresh,
    Send as SendFrame, Typing, chat_request::Frame as In, chat_response::Frame as Out,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tonic::Code;

/// Frame names a client may send, for the error about an unknown one.
const CLIENT_FRAMES: &str = "join, leave, send, edit, delete, react, read, moderate, typing, \
     get_chat_history, ping, refresh";
/// Moderation actions as frames spell them, both ways.
const ACTIONS: [(&str, MemberAction); 6] = [
    ("kick", MemberAction::Kick),
    ("ban", MemberAction::Ban),
    ("unban", MemberAction::Unban),
    ("mute", MemberAction::Mute),
    ("unmute", MemberAction::Unmute),
    ("set_role", MemberAction::SetRole),
];

/// A client frame that cannot be used, answered with an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FrameError {
    /// The gRPC status code.
    pub code: Code,
    /// What was wrong, naming the field.
    pub message: String,
    /// The failed frame's `client_id`, when it had one as a string.
    pub client_id: String,
    /// The failed frame's `room_id`, when it had one as a string.
    pub room_id: String,
}

impl FrameError {
    /// INVALID_ARGUMENT with nothing to echo.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: Code::InvalidArgument,
            message: message.into(),
            client_id: String::new(),
            room_id: String::new(),
        }
    }

    /// The same error, echoing what the failed frame named.
    pub(crate) fn echoing(mut self, client_id: &str, room_id: &str) -> Self {
        client_id.clone_into(&mut self.client_id);
        room_id.clone_into(&mut self.room_id);
        self
    }

    /// The `error` frame.
    pub(crate) fn to_frame(&self) -> Utf8Bytes {
        encode(&ServerFrame::Error(ErrorOut {
            code: parley_runtime::grpc::status::code_name(self.code),
            message: &self.message,
            client_id: &self.client_id,
            room_id: &self.room_id,
        }))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct JoinIn {
    room_id: String,
    short_code: String,
    password: String,
    since_seq: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RoomIn {
    room_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SendIn {
    room_id: String,
    content: String,
    client_id: String,
    reply_to: i64,
    attachments: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EditIn {
    room_id: String,
    seq: i64,
    content: String,
    client_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DeleteIn {
    room_id: String,
    seq: i64,
    client_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ReactIn {
    room_id: String,
    seq: i64,
    emoji: String,
    remove: bool,
    client_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ModerateIn {
    room_id: String,
    user_id: String,
    action: String,
    role: String,
    duration: String,
    client_id: String,
}

impl ModerateIn {
    fn into_frame(self) -> Result<Moderate, FrameError> {
        let Some(&(_, action)) = ACTIONS.iter().find(|(name, _)| *name == self.action) else {
            let names: Vec<&str> = ACTIONS.iter().map(|(name, _)| *name).collect();
            return Err(FrameError::invalid(format!(
                "moderate.action: unknown action `{}`; expected one of {}",
                self.action,
                names.join(", ")
            )));
        };
        let duration = if self.duration.trim().is_empty() {
            None
        } else {
            let parsed = humantime::parse_duration(self.duration.trim()).map_err(|err| {
                FrameError::invalid(format!(
                    "moderate.duration: {err}; use a duration such as 10m, 1h or 7d"
                ))
            })?;
            Some(prost_types::Duration {
                seconds: i64::try_from(parsed.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(parsed.subsec_nanos()).unwrap_or(0),
            })
        };
        Ok(Moderate {
            room_id: self.room_id,
            user_id: self.user_id,
            action: action.into(),
            role: self.role,
            duration,
            client_id: self.client_id,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ReadIn {
    room_id: String,
    seq: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HistoryIn {
    room_id: String,
    limit: i64,
    before_seq: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PingIn {
    nonce: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RefreshIn {
    token: String,
}

/// Reads one text frame from a client.
///
/// # Errors
/// INVALID_ARGUMENT for text that is not one JSON object with exactly one
/// known key, or a field of the wrong type (named in the message).
pub(crate) fn parse(text: &str) -> Result<ChatRequest, FrameError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|err| FrameError::invalid(format!("the frame is not valid JSON: {err}")))?;
    let Value::Object(map) = value else {
        return Err(FrameError::invalid(
            "a frame is a JSON object with one key naming it, such as {\"ping\":{}}",
        ));
    };
    if map.len() != 1 {
        return Err(FrameError::invalid(format!(
            "a frame has exactly one top-level key naming it; this one has {}",
            map.len()
        )));
    }
    let Some((name, body)) = map.into_iter().next() else {
        return Err(FrameError::invalid("empty frame"));
    };
    let body = match body {
        Value::Null => Value::Object(Map::new()),
        body => body,
    };
    let client_id = string_field(&body, "client_id");
    let room_id = string_field(&body, "room_id");
    let frame = match name.as_str() {
        "join" => body_of::<JoinIn>(&name, &body).map(|join| {
            In::Join(Join {
                room_id: join.room_id,
                short_code: join.short_code,
                password: join.password,
                since_seq: join.since_seq,
                replay: false,
            })
        }),
        "leave" => body_of::<RoomIn>(&name, &body).map(|leave| {
            In::Leave(Leave {
                room_id: leave.room_id,
            })
        }),
        "send" => body_of::<SendIn>(&name, &body).map(|send| {
            In::Send(SendFrame {
                room_id: send.room_id,
                content: send.content,
                client_id: send.client_id,
                reply_to: send.reply_to,
                attachments: send.attachments,
            })
        }),
        "edit" => body_of::<EditIn>(&name, &body).map(|edit| {
            In::Edit(Edit {
                room_id: edit.room_id,
                seq: edit.seq,
                content: edit.content,
                client_id: edit.client_id,
            })
        }),
        "delete" => body_of::<DeleteIn>(&name, &body).map(|delete| {
            In::Delete(Delete {
                room_id: delete.room_id,
                seq: delete.seq,
                client_id: delete.client_id,
            })
        }),
        "react" => body_of::<ReactIn>(&name, &body).map(|react| {
            In::React(React {
                room_id: react.room_id,
                seq: react.seq,
                emoji: react.emoji,
                remove: react.remove,
                client_id: react.client_id,
            })
        }),
        "read" => body_of::<ReadIn>(&name, &body).map(|read| {
            In::Read(Read {
                room_id: read.room_id,
                seq: read.seq,
            })
        }),
        "moderate" => body_of::<ModerateIn>(&name, &body)
            .and_then(ModerateIn::into_frame)
            .map(In::Moderate),
        "typing" => body_of::<RoomIn>(&name, &body).map(|typing| {
            In::Typing(Typing {
                room_id: typing.room_id,
            })
        }),
        "get_chat_history" => body_of::<HistoryIn>(&name, &body).and_then(|history| {
            if history.limit < 0 {
                return Err(FrameError::invalid(
                    "get_chat_history.limit: must not be negative",
                ));
            }
            Ok(In::GetChatHistory(GetChatHistoryRequest {
                room_id: history.room_id,
                limit: i32::try_from(history.limit).unwrap_or(i32::MAX),
                before_seq: history.before_seq,
            }))
        }),
        "ping" => body_of::<PingIn>(&name, &body).map(|ping| In::Ping(Ping { nonce: ping.nonce })),
        "refresh" => body_of::<RefreshIn>(&name, &body).map(|refresh| {
            In::Refresh(Refresh {
                token: refresh.token,
            })
        }),
        other => Err(FrameError::invalid(format!(
            "unknown frame `{other}`; expected one of {CLIENT_FRAMES}"
        ))),
    };
    frame
        .map(|frame| ChatRequest { frame: Some(frame) })
        .map_err(|err| err.echoing(client_id.unwrap_or(""), room_id.unwrap_or("")))
}

fn string_field<'a>(body: &'a Value, key: &str) -> Option<&'a str> {
    body.get(key).and_then(Value::as_str)
}

fn body_of<T: for<'de> Deserialize<'de>>(name: &str, body: &Value) -> Result<T, FrameError> {
    if !body.is_object() {
        return Err(FrameError::invalid(format!(
            "{name}: the frame's value must be an object"
        )));
    }
    serde_path_to_error::deserialize(body).map_err(|err| {
        let path = err.path().to_string();
        FrameError::invalid(format!("{name}.{path}: {}", err.into_inner()))
    })
}

/// Writes a server frame as JSON text, ready to share between sockets.
pub(crate) fn encode_response(response: &ChatResponse) -> Option<Utf8Bytes> {
    let frame = match response.frame.as_ref()? {
        Out::Joined(joined) => ServerFrame::Joined(JoinedOut {
            room_id: &joined.room_id,
            last_seq: joined.last_seq,
            members: joined
                .members
                .iter()
                .map(|m| MemberOut {
                    user_id: &m.user_id,
                    name: &m.name,
                })
                .collect(),
            replay_truncated: joined.replay_truncated,
            read_seq: joined.read_seq,
            name: &joined.name,
            private: joined.private,
            direct: joined.direct,
            role: &joined.role,
            muted: joined.muted,
            muted_until: rfc3339_millis(joined.muted_until.as_ref()),
            members_truncated: joined.members_truncated,
        }),
        Out::Left(left) => ServerFrame::Left(RoomOut {
            room_id: &left.room_id,
        }),
        Out::Message(message) => ServerFrame::Message(MessageOut::from(message)),
        Out::Ack(ack) => ServerFrame::Ack(AckOut {
            client_id: &ack.client_id,
            message_id: &ack.message_id,
            seq: ack.seq,
        }),
        Out::Typing(typing) => ServerFrame::Typing(TypingOut {
            room_id: &typing.room_id,
            user_id: &typing.user_id,
            name: &typing.name,
        }),
        Out::Presence(presence) => ServerFrame::Presence(PresenceOut {
            room_id: &presence.room_id,
            user_id: &presence.user_id,
            name: &presence.name,
            state: match presence.state() {
                PresenceState::Left => "left",
                _ => "joined",
            },
        }),
        Out::History(history) => ServerFrame::History(HistoryOut {
            room_id: &history.room_id,
            messages: history.messages.iter().map(MessageOut::from).collect(),
            has_more: history.has_more,
        }),
        Out::Pong(pong) => ServerFrame::Pong(PongOut { nonce: &pong.nonce }),
        Out::Refreshed(refreshed) => ServerFrame::Refreshed(RefreshedOut {
            expires_at: rfc3339_millis(refreshed.expires_at.as_ref()),
        }),
        Out::Error(error) => ServerFrame::Error(ErrorOut {
            code: &error.code,
            message: &error.message,
            client_id: &error.client_id,
            room_id: &error.room_id,
        }),
        Out::MessageEdited(edited) => ServerFrame::MessageEdited(EditedOut {
            room_id: &edited.room_id,
            seq: edited.seq,
            target_seq: edited.target_seq,
            content: &edited.content,
            editor_id: &edited.editor_id,
            edited_at: rfc3339_millis(edited.edited_at.as_ref()),
        }),
        Out::MessageDeleted(deleted) => ServerFrame::MessageDeleted(DeletedOut {
            room_id: &deleted.room_id,
            seq: deleted.seq,
            target_seq: deleted.target_seq,
            deleted_by: &deleted.deleted_by,
            deleted_at: rfc3339_millis(deleted.deleted_at.as_ref()),
        }),
        Out::Reaction(reaction) => ServerFrame::Reaction(ReactionOut {
            room_id: &reaction.room_id,
            seq: reaction.seq,
            target_seq: reaction.target_seq,
            user_id: &reaction.user_id,
            name: &reaction.name,
            emoji: &reaction.emoji,
            state: match reaction.state() {
                ReactionState::Removed => "removed",
                _ => "added",
            },
        }),
        Out::MemberUpdate(update) => ServerFrame::MemberUpdate(MemberUpdateOut {
            room_id: &update.room_id,
            seq: update.seq,
            user_id: &update.user_id,
            name: &update.name,
            action: action_name(update.action()),
            role: &update.role,
            until: rfc3339_millis(update.until.as_ref()),
            by: &update.by,
            by_name: &update.by_name,
        }),
        Out::RoomUpdated(update) => ServerFrame::RoomUpdated(RoomUpdatedOut {
            room_id: &update.room_id,
            seq: update.seq,
            name: &update.name,
            private: update.private,
            by: &update.by,
            by_name: &update.by_name,
        }),
        Out::Read(read) => ServerFrame::Read(ReadOut {
            room_id: &read.room_id,
            user_id: &read.user_id,
            name: &read.name,
            seq: read.seq,
        }),
    };
    Some(encode(&frame))
}

/// A moderation action as frames spell it.
fn action_name(action: MemberAction) -> &'static str {
    ACTIONS
        .iter()
        .find(|(_, known)| *known == action)
        .map_or("", |(name, _)| *name)
}

/// A `pong` frame.
pub(crate) fn pong(nonce: &str) -> Utf8Bytes {
    encode(&ServerFrame::Pong(PongOut { nonce }))
}

/// A `refreshed` frame for a token expiring at `expires_at` (Unix seconds).
pub(crate) fn refreshed(expires_at: i64) -> Utf8Bytes {
    encode(&ServerFrame::Refreshed(RefreshedOut {
        expires_at: rfc3339_millis(Some(&prost_types::Timestamp {
            seconds: expires_at,
            nanos: 0,
        })),
    }))
}

fn encode(frame: &ServerFrame<'_>) -> Utf8Bytes {
    // Serializing these plain structs cannot fail: every key is a string.
    serde_json::to_string(frame)
        .unwrap_or_else(|_| String::from(r#"{"error":{"code":"INTERNAL","message":"cannot encode a frame","client_id":"","room_id":""}}"#))
        .into()
}

/// RFC 3339 UTC with milliseconds, as every time in the protocol is.
pub(crate) fn rfc3339_millis(timestamp: Option<&prost_types::Timestamp>) -> String {
    let Some(timestamp) = timestamp else {
        return String::new();
    };
    let since_epoch = Duration::from_secs(timestamp.seconds.max(0).unsigned_abs())
        + Duration::from_nanos(u64::try_from(timestamp.nanos).unwrap_or(0));
    humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + since_epoch).to_string()
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum ServerFrame<'a> {
    Joined(JoinedOut<'a>),
    Left(RoomOut<'a>),
    Message(MessageOut<'a>),
    Ack(AckOut<'a>),
    Typing(TypingOut<'a>),
    Presence(PresenceOut<'a>),
    History(HistoryOut<'a>),
    Pong(PongOut<'a>),
    Refreshed(RefreshedOut),
    Error(ErrorOut<'a>),
    MessageEdited(EditedOut<'a>),
    MessageDeleted(DeletedOut<'a>),
    Reaction(ReactionOut<'a>),
    Read(ReadOut<'a>),
    MemberUpdate(MemberUpdateOut<'a>),
    RoomUpdated(RoomUpdatedOut<'a>),
}

#[derive(Serialize)]
struct MemberUpdateOut<'a> {
    room_id: &'a str,
    seq: i64,
    user_id: &'a str,
    name: &'a str,
    action: &'static str,
    role: &'a str,
    until: String,
    by: &'a str,
    by_name: &'a str,
}

#[derive(Serialize)]
struct RoomUpdatedOut<'a> {
    room_id: &'a str,
    seq: i64,
    name: &'a str,
    private: bool,
    by: &'a str,
    by_name: &'a str,
}

#[derive(Serialize)]
struct EditedOut<'a> {
    room_id: &'a str,
    seq: i64,
    target_seq: i64,
    content: &'a str,
    editor_id: &'a str,
    edited_at: String,
}

#[derive(Serialize)]
struct DeletedOut<'a> {
    room_id: &'a str,
    seq: i64,
    target_seq: i64,
    deleted_by: &'a str,
    deleted_at: String,
}

#[derive(Serialize)]
struct ReactionOut<'a> {
    room_id: &'a str,
    seq: i64,
    target_seq: i64,
    user_id: &'a str,
    name: &'a str,
    emoji: &'a str,
    state: &'static str,
}

#[derive(Serialize)]
struct ReadOut<'a> {
    room_id: &'a str,
    user_id: &'a str,
    name: &'a str,
    seq: i64,
}

#[derive(Serialize)]
struct JoinedOut<'a> {
    room_id: &'a str,
    last_seq: i64,
    members: Vec<MemberOut<'a>>,
    replay_truncated: bool,
    read_seq: i64,
    name: &'a str,
    private: bool,
    direct: bool,
    role: &'a str,
    muted: bool,
    muted_until: String,
    members_truncated: bool,
}

#[derive(Serialize)]
struct MemberOut<'a> {
    user_id: &'a str,
    name: &'a str,
}

#[derive(Serialize)]
struct RoomOut<'a> {
    room_id: &'a str,
}

/// A message as clients see it, in `message` frames and history.
#[derive(Debug, Serialize)]
pub(crate) struct MessageOut<'a> {
    id: &'a str,
    room_id: &'a str,
    seq: i64,
    sender_id: &'a str,
    sender_name: &'a str,
    content: &'a str,
    client_id: &'a str,
    sent_at: String,
    reply_to: i64,
    edited_at: String,
    deleted: bool,
    reactions: Vec<ReactionCountOut<'a>>,
    attachments: Vec<AttachmentOut<'a>>,
}

/// A file a message carries, as clients see it; its bytes are at
/// `GET /api/v1/attachments/{id}`.
#[derive(Debug, Serialize)]
struct AttachmentOut<'a> {
    id: &'a str,
    filename: &'a str,
    content_type: &'a str,
    size: i64,
    width: i32,
    height: i32,
}

/// The reactions with one emoji, as messages carry them.
#[derive(Debug, Serialize)]
struct ReactionCountOut<'a> {
    emoji: &'a str,
    count: i64,
    user_ids: &'a [String],
}

impl<'a> From<&'a ChatMessage> for MessageOut<'a> {
    fn from(message: &'a ChatMessage) -> Self {
        Self {
            id: &message.id,
            room_id: &message.room_id,
            seq: message.seq,
            sender_id: &message.sender_id,
            sender_name: &message.sender_name,
            content: &message.content,
            client_id: &message.client_id,
            sent_at: rfc3339_millis(message.sent_at.as_ref()),
            reply_to: message.reply_to,
            edited_at: rfc3339_millis(message.edited_at.as_ref()),
            deleted: message.deleted,
            reactions: message
                .reactions
                .iter()
                .map(|r| ReactionCountOut {
                    emoji: &r.emoji,
                    count: r.count,
                    user_ids: &r.user_ids,
                })
                .collect(),
            attachments: message
                .attachments
                .iter()
                .map(|a| AttachmentOut {
                    id: &a.id,
                    filename: &a.filename,
                    content_type: &a.content_type,
                    size: a.size,
                    width: a.width,
                    height: a.height,
                })
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct AckOut<'a> {
    client_id: &'a str,
    message_id: &'a str,
    seq: i64,
}

#[derive(Serialize)]
struct TypingOut<'a> {
    room_id: &'a str,
    user_id: &'a str,
    name: &'a str,
}

#[derive(Serialize)]
struct PresenceOut<'a> {
    room_id: &'a str,
    user_id: &'a str,
    name: &'a str,
    state: &'static str,
}

#[derive(Serialize)]
struct HistoryOut<'a> {
    room_id: &'a str,
    messages: Vec<MessageOut<'a>>,
    has_more: bool,
}

#[derive(Serialize)]
struct PongOut<'a> {
    nonce: &'a str,
}

#[derive(Serialize)]
struct RefreshedOut {
    expires_at: String,
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    code: &'a str,
    message: &'a str,
    client_id: &'a str,
    room_id: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(text: &str) -> In {
        parse(text).unwrap().frame.unwrap()
    }

    #[test]
    fn frames_parse_with_defaults_and_ignore_unknown_keys() {
        assert_eq!(
            kind(r#"{"join":{"room_id":"general","since_seq":41,"extra":true}}"#),
            In::Join(Join {
                room_id: "general".into(),
                since_seq: 41,
                ..Join::default()
            })
        );
        assert_eq!(kind(r#"{"ping":null}"#), In::Ping(Ping::default()));
        assert!(matches!(
            kind(r#"{"get_chat_history":{"room_id":"r","limit":9999999999}}"#),
            In::GetChatHistory(GetChatHistoryRequest {
                limit: i32::MAX,
                ..
            })
        ));
    }

    #[test]
    fn bad_frames_are_invalid_and_echo_string_ids() {
        for text in [
            "nope",
            "[]",
            "{}",
            r#"{"ping":{},"join":{}}"#,
            r#"{"dance":{}}"#,
            r#"{"ping":3}"#,
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.code, Code::InvalidArgument, "{text}");
        }
        let err = parse(r#"{"send":{"room_id":"r","client_id":"c-1","content":7}}"#).unwrap_err();
        assert!(err.message.contains("send.content"), "{}", err.message);
        assert_eq!((err.client_id.as_str(), err.room_id.as_str()), ("c-1", "r"));
        let err = parse(r#"{"send":{"room_id":5,"client_id":"c-1","content":7}}"#).unwrap_err();
        assert_eq!(err.room_id, "");
    }

    #[test]
    fn server_frames_carry_every_field() {
        let message = ChatMessage {
            id: "m".into(),
            room_id: "r".into(),
            seq: 3,
            sender_id: "u".into(),
            sender_name: "alice".into(),
            content: "hi".into(),
            client_id: String::new(),
            sent_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5_000_000,
            }),
            reply_to: 2,
            ..ChatMessage::default()
        };
        let text = encode_response(&ChatResponse {
            frame: Some(Out::Message(message)),
        })
        .unwrap();
        let value: Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(value["message"]["sent_at"], "2023-11-14T22:13:20.005Z");
        assert_eq!(value["message"]["client_id"], "");
        assert_eq!(value["message"]["seq"], 3);
        assert_eq!(value["message"]["reply_to"], 2);
        assert_eq!(value["message"]["edited_at"], "");
        assert_eq!(value["message"]["deleted"], false);
        assert_eq!(value["message"]["reactions"], Value::Array(Vec::new()));
    }

    #[test]
    fn conversation_frames_parse() {
        assert_eq!(
            kind(r#"{"react":{"room_id":"r","seq":4,"emoji":"👍","client_id":"c"}}"#),
            In::React(React {
                room_id: "r".into(),
                seq: 4,
                emoji: "👍".into(),
                remove: false,
                client_id: "c".into(),
            })
        );
        assert_eq!(
            kind(r#"{"send":{"room_id":"r","content":"x","reply_to":41}}"#),
            In::Send(SendFrame {
                room_id: "r".into(),
                content: "x".into(),
                client_id: String::new(),
                reply_to: 41,
                attachments: Vec::new(),
            })
        );
        assert!(matches!(
            kind(r#"{"read":{"room_id":"r","seq":9}}"#),
            In::Read(Read { seq: 9, .. })
        ));
        assert!(matches!(
            kind(r#"{"delete":{"room_id":"r","seq":9}}"#),
            In::Delete(_)
        ));
        assert!(matches!(
            kind(r#"{"edit":{"room_id":"r","seq":9,"content":"y"}}"#),
            In::Edit(_)
        ));
        let err = parse(r#"{"react":{"room_id":"r","seq":"four","client_id":"c"}}"#).unwrap_err();
        assert!(err.message.contains("react.seq"), "{}", err.message);
        assert_eq!(err.client_id, "c");
    }
}
