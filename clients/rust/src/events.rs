//! What a room's stream yields: the server frames of README "WebSocket
//! protocol", sorted into timeline events (numbered by `seq`) and the rest.

use serde_json::Value;

/// Server frames that are timeline events: each takes the room's next
/// `seq`, and a reconnect replays what was missed of them.
pub(crate) const TIMELINE: [&str; 6] = [
    "message",
    "message_edited",
    "message_deleted",
    "reaction",
    "member_update",
    "room_updated",
];

/// Something that happened in a room.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A timeline event, each exactly once and in `seq` order.
    Timeline(TimelineEvent),
    /// The server's answer to a join, again after every rejoin: the
    /// members online now (`members`), the user's `role`, the room's
    /// `name`, `last_seq` and `read_seq`.
    Joined(Value),
    /// Typing, presence or a read marker: live only, never replayed.
    Ephemeral {
        /// The frame's name: `typing`, `presence` or `read`.
        kind: String,
        /// The frame's object.
        frame: Value,
    },
    /// More was missed while disconnected than the server replays and one
    /// history page (200 messages) holds: older ones must be read with
    /// history. What was missed within those is delivered as `message`
    /// events in their current state (edits and reactions applied).
    ReplayTruncated,
    /// The server took this connection out of the room (kicked, banned, or
    /// the room was deleted); no more events follow.
    Left,
    /// The server refused something about the room.
    Error {
        /// gRPC status name.
        code: String,
        /// The server's explanation.
        message: String,
    },
}

/// A timeline event: a message, an edit, a deletion, a reaction, a member
/// update or a room update.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEvent {
    /// The frame's name, e.g. `message` or `reaction`.
    pub kind: String,
    /// Its place in the room's timeline.
    pub seq: i64,
    /// The frame's object, as the server sent it.
    pub frame: Value,
}

impl TimelineEvent {
    /// A message's text; `""` for other events.
    pub fn content(&self) -> &str {
        self.frame["content"].as_str().unwrap_or_default()
    }

    /// Who sent a message; `""` for other events.
    pub fn sender_name(&self) -> &str {
        self.frame["sender_name"].as_str().unwrap_or_default()
    }

    /// The `client_id` a message was sent with.
    pub fn client_id(&self) -> &str {
        self.frame["client_id"].as_str().unwrap_or_default()
    }
}

/// What the server acknowledged of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The stored message's id.
    pub message_id: String,
    /// Its place in the room's timeline.
    pub seq: i64,
    /// The id it was sent with (a retry with it returns the same message).
    pub client_id: String,
}

/// A server frame: its one top-level key and that key's object.
pub(crate) fn split(text: &str) -> Option<(String, Value)> {
    let Value::Object(map) = serde_json::from_str::<Value>(text).ok()? else {
        return None;
    };
    let mut entries = map.into_iter();
    let (kind, frame) = entries.next()?;
    entries.next().is_none().then_some((kind, frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_into_their_kind_and_object() {
        let (kind, frame) = split(r#"{"ack":{"seq":3}}"#).expect("a frame");
        assert_eq!((kind.as_str(), frame["seq"].as_i64()), ("ack", Some(3)));
        assert!(split(r#"{"a":{},"b":{}}"#).is_none());
        assert!(split("[1]").is_none());
        assert!(split("not json").is_none());
    }
}
