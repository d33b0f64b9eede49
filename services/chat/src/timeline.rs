//! A room's timeline: messages, and the events that change them (edits,
//! deletions, reaction changes). Every timeline event takes the room's
//! next `seq` in the transaction that stores it, so ordering, replay,
//! gap repair and idempotency (README: "Behaviour") hold for all of them
//! alike; typing, presence and read notices stay outside.

use std::sync::Arc;

use parley_proto::chat::v1::{
    ChatMessage, ChatResponse, MemberUpdate, MessageDeleted, MessageEdited, Reaction,
    ReactionState, RoomEvent, RoomUpdated, chat_response::Frame,
};
use parley_runtime::storage::timestamp;
use serde::{Deserialize, Serialize};

use crate::{
    domain::{RoomId, validate_client_id, validate_content},
    error::Error,
    moderation::{Action, MAX_USER_ID_LEN, Until},
};

/// Longest emoji string, in bytes.
pub(crate) const MAX_EMOJI_BYTES: usize = 64;
/// Most distinct emoji on one message.
pub(crate) const MAX_EMOJI_PER_MESSAGE: i64 = 20;
/// Users listed per emoji in a message's reactions.
pub(crate) const REACTION_USERS_LISTED: usize = 20;

/// A stored timeline event as members receive it: built once, then shared
/// by the bus publish, every link and every replay.
#[derive(Debug, Clone)]
pub(crate) struct StoredEvent {
    seq: i64,
    /// When it was stored (Unix milliseconds), where the frame says.
    at_ms: Option<i64>,
    event: Arc<RoomEvent>,
}

/// A timestamp in Unix milliseconds.
pub(crate) fn millis(at: Option<&prost_types::Timestamp>) -> Option<i64> {
    at.map(|t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
}

/// The seq and time of a timeline frame; `None` for other frames.
fn position(frame: &Frame) -> Option<(i64, Option<i64>)> {
    match frame {
        Frame::Message(message) => Some((message.seq, millis(message.sent_at.as_ref()))),
        Frame::MessageEdited(edited) => Some((edited.seq, millis(edited.edited_at.as_ref()))),
        Frame::MessageDeleted(deleted) => Some((deleted.seq, millis(deleted.deleted_at.as_ref()))),
        Frame::Reaction(reaction) => Some((reaction.seq, None)),
        Frame::MemberUpdate(update) => Some((update.seq, None)),
        Frame::RoomUpdated(update) => Some((update.seq, None)),
        _ => None,
    }
}

impl StoredEvent {
    /// The event of a timeline frame in `room_id`; `None` for a frame that
    /// is not a timeline event.
    pub(crate) fn new(room_id: &str, frame: Frame) -> Option<Self> {
        let (seq, at_ms) = position(&frame)?;
        Some(Self {
            seq,
            at_ms,
            event: Arc::new(RoomEvent {
                room_id: room_id.to_owned(),
                response: Some(ChatResponse { frame: Some(frame) }),
                except_user_id: String::new(),
            }),
        })
    }

    /// A stored message.
    pub(crate) fn message(message: ChatMessage) -> Self {
        let room_id = message.room_id.clone();
        let seq = message.seq;
        let at_ms = millis(message.sent_at.as_ref());
        Self {
            seq,
            at_ms,
            event: Arc::new(RoomEvent {
                room_id,
                response: Some(ChatResponse {
                    frame: Some(Frame::Message(message)),
                }),
                except_user_id: String::new(),
            }),
        }
    }

    /// Sorts an event another replica published.
    pub(crate) fn from_bus(event: RoomEvent) -> BusEvent {
        let position = event
            .response
            .as_ref()
            .and_then(|response| response.frame.as_ref())
            .and_then(position);
        match position {
            Some((seq, at_ms)) => BusEvent::Timeline(Self {
                seq,
                at_ms,
                event: Arc::new(event),
            }),
            None => BusEvent::Ephemeral(Arc::new(event)),
        }
    }

    /// Its place in the room's timeline.
    pub(crate) fn seq(&self) -> i64 {
        self.seq
    }

    /// When it was stored (Unix milliseconds), when the frame says.
    pub(crate) fn at_ms(&self) -> Option<i64> {
        self.at_ms
    }

    /// The room's id.
    pub(crate) fn room_id(&self) -> &str {
        &self.event.room_id
    }

    /// The event as links carry it.
    pub(crate) fn room_event(&self) -> &Arc<RoomEvent> {
        &self.event
    }

    /// The frame.
    pub(crate) fn frame(&self) -> Option<&Frame> {
        self.event.response.as_ref()?.frame.as_ref()
    }

    /// The message, when the event is one.
    pub(crate) fn as_message(&self) -> Option<&ChatMessage> {
        match self.frame()? {
            Frame::Message(message) => Some(message),
            _ => None,
        }
    }

    /// The frame, for a unary answer.
    pub(crate) fn to_response(&self) -> ChatResponse {
        self.event.response.clone().unwrap_or_default()
    }
}

/// An event from another replica.
#[derive(Debug)]
pub(crate) enum BusEvent {
    /// A timeline event, delivered in seq order.
    Timeline(StoredEvent),
    /// Typing, presence or a read notice: no order, no storage.
    Ephemeral(Arc<RoomEvent>),
}

/// What a timeline event other than a message does to its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// Replace the text.
    Edit {
        /// The new text.
        content: String,
    },
    /// Delete the message.
    Delete,
    /// Add or remove the actor's reaction.
    React {
        /// The emoji.
        emoji: String,
        /// Remove instead of add.
        remove: bool,
    },
    /// Act on a member (the target seq is 0).
    Moderate {
        /// The member acted on.
        user_id: String,
        /// What to do.
        action: Action,
        /// When a ban or mute ends.
        until: Until,
    },
    /// Rename the room, or set or clear its password (the target seq is
    /// 0).
    UpdateRoom {
        /// The new name.
        name: Option<String>,
        /// The new password's hash; `Some(None)` clears it.
        password_hash: Option<Option<String>>,
    },
}

impl Change {
    /// Whether the change is about the room rather than one message.
    pub(crate) fn is_about_room(&self) -> bool {
        matches!(self, Self::Moderate { .. } | Self::UpdateRoom { .. })
    }
}

/// A change to a message, checked and ready for a writer lane.
#[derive(Debug, Clone)]
pub(crate) struct NewEvent {
    /// The room.
    pub(crate) room_id: RoomId,
    /// The message changed.
    pub(crate) target_seq: i64,
    /// Who acts.
    pub(crate) actor_id: Arc<str>,
    /// Their username.
    pub(crate) actor_name: Arc<str>,
    /// Whether they hold the global `admin` role (deletes any message).
    pub(crate) actor_admin: bool,
    /// The idempotency key, "" for none.
    pub(crate) client_id: String,
    /// What it does.
    pub(crate) change: Change,
}

/// Checks the parts of an event every entry point gives.
///
/// # Errors
/// INVALID_ARGUMENT for a seq below 1, a bad text or emoji, or a long
/// `client_id`.
pub(crate) fn check_change(
    target_seq: i64,
    change: &Change,
    client_id: &str,
    max_content_bytes: usize,
) -> Result<(), Error> {
    if target_seq < 1 && !change.is_about_room() {
        return Err(Error::invalid("seq", "must be the seq of a message"));
    }
    match change {
        Change::Edit { content } => validate_content(content, max_content_bytes)?,
        Change::Delete | Change::UpdateRoom { .. } => {}
        Change::React { emoji, .. } => validate_emoji(emoji)?,
        Change::Moderate { user_id, .. } => validate_user_id(user_id)?,
    }
    validate_client_id(client_id)
}

/// Checks an emoji string: 1-64 bytes, no whitespace-only, no NUL.
///
/// # Errors
/// INVALID_ARGUMENT naming `emoji`.
pub(crate) fn validate_emoji(emoji: &str) -> Result<(), Error> {
    if emoji.trim().is_empty() {
        return Err(Error::invalid("emoji", "must not be empty"));
    }
    if emoji.len() > MAX_EMOJI_BYTES {
        return Err(Error::invalid(
            "emoji",
            format!("must be at most {MAX_EMOJI_BYTES} bytes"),
        ));
    }
    if emoji.contains('\0') {
        return Err(Error::invalid("emoji", "must not contain NUL characters"));
    }
    Ok(())
}

/// Checks a user id given as a moderation target or direct-room peer.
///
/// # Errors
/// INVALID_ARGUMENT naming `user_id`.
pub(crate) fn validate_user_id(user_id: &str) -> Result<(), Error> {
    if user_id.is_empty() {
        return Err(Error::invalid("user_id", "must not be empty"));
    }
    if user_id.len() > MAX_USER_ID_LEN || user_id.chars().any(char::is_control) {
        return Err(Error::invalid("user_id", "is not a user id"));
    }
    Ok(())
}

/// What a `member_update` event stores in its row's `detail`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MemberDetail {
    /// The member acted on.
    pub(crate) user_id: String,
    /// Their username.
    pub(crate) name: String,
    /// The action, as [`Action::as_str`] spells it.
    pub(crate) action: String,
    /// Their role afterwards, "" once no longer a member.
    pub(crate) role: String,
    /// When a ban or mute ends (Unix milliseconds); `None` for no end.
    pub(crate) until: Option<i64>,
}

/// What a `room_updated` event stores in its row's `detail`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RoomDetail {
    /// The room's name afterwards.
    pub(crate) name: String,
    /// Whether it is private afterwards.
    pub(crate) private: bool,
}

/// A stored event row, as [`crate::store`] reads it back.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct EventRow {
    pub(crate) room_id: String,
    pub(crate) seq: i64,
    pub(crate) kind: String,
    pub(crate) target_seq: i64,
    pub(crate) actor_id: String,
    pub(crate) actor_name: String,
    pub(crate) detail: String,
    pub(crate) created_at: i64,
}

/// The `kind` column of each change.
pub(crate) fn kind_of(change: &Change) -> &'static str {
    match change {
        Change::Edit { .. } => "edit",
        Change::Delete => "delete",
        Change::React { remove: false, .. } => "reaction_added",
        Change::React { remove: true, .. } => "reaction_removed",
        Change::Moderate { .. } => "member_update",
        Change::UpdateRoom { .. } => "room_updated",
    }
}

impl EventRow {
    /// The frame members received for this event; `None` for a kind this
    /// version does not know.
    pub(crate) fn into_event(self) -> Option<StoredEvent> {
        let frame = match self.kind.as_str() {
            "edit" => Frame::MessageEdited(MessageEdited {
                room_id: self.room_id.clone(),
                seq: self.seq,
                target_seq: self.target_seq,
                content: self.detail,
                editor_id: self.actor_id,
                edited_at: Some(timestamp(self.created_at)),
            }),
            "delete" => Frame::MessageDeleted(MessageDeleted {
                room_id: self.room_id.clone(),
                seq: self.seq,
                target_seq: self.target_seq,
                deleted_by: self.actor_id,
                deleted_at: Some(timestamp(self.created_at)),
            }),
            "reaction_added" | "reaction_removed" => Frame::Reaction(Reaction {
                room_id: self.room_id.clone(),
                seq: self.seq,
                target_seq: self.target_seq,
                user_id: self.actor_id,
                name: self.actor_name,
                emoji: self.detail,
                state: if self.kind == "reaction_added" {
                    ReactionState::Added
                } else {
                    ReactionState::Removed
                }
                .into(),
            }),
            "member_update" => {
                let detail: MemberDetail = serde_json::from_str(&self.detail).ok()?;
                let action = Action::from_stored(&detail.action, &detail.role)?;
                Frame::MemberUpdate(MemberUpdate {
                    room_id: self.room_id.clone(),
                    seq: self.seq,
                    user_id: detail.user_id,
                    name: detail.name,
                    action: action.to_proto().into(),
                    role: detail.role,
                    until: match action {
                        Action::Ban | Action::Mute => detail.until.map(timestamp),
                        _ => None,
                    },
                    by: self.actor_id,
                    by_name: self.actor_name,
                })
            }
            "room_updated" => {
                let detail: RoomDetail = serde_json::from_str(&self.detail).ok()?;
                Frame::RoomUpdated(RoomUpdated {
                    room_id: self.room_id.clone(),
                    seq: self.seq,
                    name: detail.name,
                    private: detail.private,
                    by: self.actor_id,
                    by_name: self.actor_name,
                })
            }
            _ => return None,
        };
        StoredEvent::new(&self.room_id, frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emoji_have_limits() {
        assert!(validate_emoji("👍").is_ok());
        assert!(validate_emoji("👨‍👩‍👧‍👦").is_ok());
        assert!(validate_emoji("").is_err());
        assert!(validate_emoji(" ").is_err());
        assert!(validate_emoji(&"a".repeat(65)).is_err());
        assert!(validate_emoji(&"a".repeat(64)).is_ok());
        assert!(check_change(0, &Change::Delete, "", 10).is_err());
        assert!(check_change(3, &Change::Delete, "", 10).is_ok());
    }

    #[test]
    fn moderation_and_room_rows_become_their_frames() {
        let detail = MemberDetail {
            user_id: "u2".into(),
            name: "bob".into(),
            action: "ban".into(),
            role: String::new(),
            until: Some(5_000),
        };
        let row = EventRow {
            room_id: "r".into(),
            seq: 3,
            kind: "member_update".into(),
            target_seq: 0,
            actor_id: "u1".into(),
            actor_name: "ann".into(),
            detail: serde_json::to_string(&detail).unwrap_or_default(),
            created_at: 1_000,
        };
        let event = row.into_event().expect("a known kind");
        let Some(Frame::MemberUpdate(update)) = event.frame() else {
            panic!("a member_update frame");
        };
        assert_eq!(update.action(), parley_proto::chat::v1::MemberAction::Ban);
        assert_eq!((update.by.as_str(), update.by_name.as_str()), ("u1", "ann"));
        assert_eq!(millis(update.until.as_ref()), Some(5_000));
        let row = EventRow {
            room_id: "r".into(),
            seq: 4,
            kind: "room_updated".into(),
            target_seq: 0,
            actor_id: "u1".into(),
            actor_name: "ann".into(),
            detail: r#"{"name":"Launch","private":true}"#.into(),
            created_at: 1_000,
        };
        let event = row.into_event().expect("a known kind");
        assert_eq!(event.seq(), 4);
        assert!(
            matches!(event.frame(), Some(Frame::RoomUpdated(u)) if u.private && u.name == "Launch")
        );
    }

    #[test]
    fn event_rows_become_the_frames_members_received() {
        let row = EventRow {
            room_id: "r".into(),
            seq: 9,
            kind: "reaction_removed".into(),
            target_seq: 4,
            actor_id: "u1".into(),
            actor_name: "ann".into(),
            detail: "👍".into(),
            created_at: 1_000,
        };
        let event = row.into_event().expect("a known kind");
        assert_eq!(event.seq(), 9);
        let Some(Frame::Reaction(reaction)) = event.frame() else {
            panic!("a reaction frame");
        };
        assert_eq!(reaction.state(), ReactionState::Removed);
        assert_eq!((reaction.target_seq, reaction.emoji.as_str()), (4, "👍"));
        let BusEvent::Timeline(bus) = StoredEvent::from_bus((**event.room_event()).clone()) else {
            panic!("a timeline event");
        };
        assert_eq!(bus.seq(), 9);
        let typing = RoomEvent {
            room_id: "r".into(),
            response: None,
            except_user_id: String::new(),
        };
        assert!(matches!(
            StoredEvent::from_bus(typing),
            BusEvent::Ephemeral(_)
        ));
    }
}
