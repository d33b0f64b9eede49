//! Rooms and messages: the rules every entry point (unary RPCs, `Chat`
//! streams, gateway sessions) checks the same way.

use std::{borrow::Borrow, fmt, ops::Deref, sync::Arc};

use parley_proto::chat::v1::{ChatMessage, Room as RoomProto};
use parley_runtime::storage::timestamp;

use crate::error::Error;

/// Longest room id.
pub(crate) const MAX_ROOM_ID_LEN: usize = 64;
/// Longest room name, in characters.
pub(crate) const MAX_ROOM_NAME_CHARS: usize = 100;
/// Longest `client_id`, in bytes.
pub(crate) const MAX_CLIENT_ID_BYTES: usize = 128;
/// Longest private-room password, in bytes.
pub(crate) const MAX_PASSWORD_BYTES: usize = 1024;
/// Shortest password a private room may be given: a room password is
/// guessed online, one join at a time, so it needs some length.
pub(crate) const MIN_PASSWORD_BYTES: usize = 8;
/// History page size when none is asked for.
pub(crate) const DEFAULT_HISTORY_LIMIT: i64 = 50;
/// Largest history page.
pub(crate) const MAX_HISTORY_LIMIT: i64 = 200;
/// The alphabet of short join codes: no `0`/`O`, `1`/`I`, easy to read out.
pub(crate) const SHORT_CODE_ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// Length of a short join code.
pub(crate) const SHORT_CODE_LEN: usize = 6;

/// A stored room.
#[derive(Debug, Clone)]
pub(crate) struct Room {
    /// Its id.
    pub(crate) id: RoomId,
    /// Its name.
    pub(crate) name: String,
    /// Its join code, "" for public rooms created by a join.
    pub(crate) short_code: String,
    /// The Argon2id hash of its password, for private rooms.
    pub(crate) password_hash: Option<String>,
    /// Who created it: its owner.
    pub(crate) created_by: String,
    /// Creation time, Unix milliseconds.
    pub(crate) created_at: i64,
    /// Its newest seq.
    pub(crate) last_seq: i64,
    /// Whether it is the direct room of two users.
    pub(crate) direct: bool,
}

impl Room {
    /// Whether it is closed to the public: a password or direct room.
    pub(crate) fn is_private(&self) -> bool {
        self.password_hash.is_some() || self.direct
    }

    /// The room as the API shows it.
    pub(crate) fn to_proto(&self) -> RoomProto {
        RoomProto {
            id: self.id.to_string(),
            name: self.name.clone(),
            short_code: self.short_code.clone(),
            private: self.is_private(),
            created_at: Some(timestamp(self.created_at)),
            last_seq: self.last_seq,
            direct: self.direct,
        }
    }
}

/// A message accepted for storage: validated, with its sender from the
/// token.
#[derive(Debug, Clone)]
pub(crate) struct NewMessage {
    /// The room.
    pub(crate) room_id: RoomId,
    /// The sender's user id.
    pub(crate) sender_id: Arc<str>,
    /// The sender's username.
    pub(crate) sender_name: Arc<str>,
    /// The text.
    pub(crate) content: String,
    /// The idempotency key, "" for none.
    pub(crate) client_id: String,
    /// The seq of the message it replies to, 0 for none.
    pub(crate) reply_to: i64,
    /// The files it carries: only their ids until
    /// [`crate::engine::Engine::check_send`] fills in the rest from media.
    pub(crate) attachments: Vec<parley_proto::chat::v1::MessageAttachment>,
}

/// A stored message, shared by every delivery of it.
pub(crate) type StoredMessage = Arc<ChatMessage>;

/// A valid room id: 1-64 characters of `[A-Za-z0-9_.-]`.
///
/// Built once where a request enters (a gRPC handler or a stream frame) by
/// [`RoomId::parse`]; everything past the edge takes a `RoomId` and never
/// checks again. Shared cheaply between sessions, the hub and the bus.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RoomId(Arc<str>);

impl RoomId {
    /// Checks `room_id`, naming `field` in the error.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming `field`.
    pub(crate) fn parse(field: &'static str, room_id: &str) -> Result<Self, Error> {
        if room_id.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if room_id.len() > MAX_ROOM_ID_LEN {
            return Err(Error::invalid(
                field,
                format!("must be at most {MAX_ROOM_ID_LEN} characters"),
            ));
        }
        if !room_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(Error::invalid(
                field,
                "may only contain letters, digits, '_', '.' and '-'",
            ));
        }
        Ok(Self(Arc::from(room_id)))
    }

    /// An id that was checked before it was stored or published: read back
    /// from storage, or from another replica's event.
    pub(crate) fn trusted(room_id: &str) -> Self {
        Self(Arc::from(room_id))
    }

    /// The id as text.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The id's shared text, for lists that outlive a lock.
    pub(crate) fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl Deref for RoomId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for RoomId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A join code as users may type it, trimmed and upper-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShortCode(String);

impl ShortCode {
    /// Checks and normalizes a typed code.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming `short_code` when it cannot be a code.
    pub(crate) fn parse(code: &str) -> Result<Self, Error> {
        let code = code.trim().to_ascii_uppercase();
        if code.len() != SHORT_CODE_LEN || !code.bytes().all(|b| SHORT_CODE_ALPHABET.contains(&b)) {
            return Err(Error::invalid(
                "short_code",
                format!("must be {SHORT_CODE_LEN} characters of {}", alphabet()),
            ));
        }
        Ok(Self(code))
    }

    /// The code as text.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ShortCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which room a join names.
#[derive(Debug, Clone)]
pub(crate) enum JoinTarget {
    /// A room id: a public room is created by its first join.
    Id(RoomId),
    /// The short code of a room made by `CreateRoom`.
    Code(ShortCode),
}

/// A join, checked: the room it names and the password it gives ("" for
/// none).
#[derive(Debug, Clone)]
pub(crate) struct JoinRequest {
    /// The room.
    pub(crate) target: JoinTarget,
    /// The private room's password, or "".
    pub(crate) password: String,
}

impl JoinRequest {
    /// Checks a join that gives a room id or a short code (exactly one)
    /// and maybe a password.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a long password, a bad id or code, or unless
    /// exactly one of id and code is given.
    pub(crate) fn parse(room_id: &str, short_code: &str, password: String) -> Result<Self, Error> {
        validate_password(&password)?;
        let target = match (room_id.is_empty(), short_code.is_empty()) {
            (false, true) => JoinTarget::Id(RoomId::parse("room_id", room_id)?),
            (true, false) => JoinTarget::Code(ShortCode::parse(short_code)?),
            (true, true) => {
                return Err(Error::invalid(
                    "room_id",
                    "must not be empty (or give a short_code instead)",
                ));
            }
            (false, false) => {
                return Err(Error::invalid(
                    "short_code",
                    "give either room_id or short_code, not both",
                ));
            }
        };
        Ok(Self { target, password })
    }
}

/// A page of history asked for, checked.
#[derive(Debug, Clone)]
pub(crate) struct HistoryQuery {
    /// The room.
    pub(crate) room_id: RoomId,
    /// Messages below this seq; 0 for the newest.
    pub(crate) before_seq: i64,
    /// The page size.
    pub(crate) limit: i64,
}

impl HistoryQuery {
    /// Checks a history request: 0 means 50 messages, above 200 is 200.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a negative limit or seq, or a bad room id.
    pub(crate) fn parse(room_id: &str, before_seq: i64, limit: i32) -> Result<Self, Error> {
        let limit = history_limit(limit)?;
        validate_seq("before_seq", before_seq)?;
        Ok(Self {
            room_id: RoomId::parse("room_id", room_id)?,
            before_seq,
            limit,
        })
    }
}

/// Checks message content: 1 to `max_bytes` bytes, not only whitespace.
///
/// # Errors
/// INVALID_ARGUMENT naming `content`.
pub(crate) fn validate_content(content: &str, max_bytes: usize) -> Result<(), Error> {
    if content.trim().is_empty() {
        return Err(Error::invalid(
            "content",
            "must not be empty or only whitespace",
        ));
    }
    if content.len() > max_bytes {
        return Err(Error::invalid(
            "content",
            format!(
                "is {} bytes; at most {max_bytes} are allowed",
                content.len()
            ),
        ));
    }
    storable("content", content)
}

/// Refuses text Postgres cannot store: a NUL character. Checked up front,
/// because a message is stored in a batch with others, and one that the
/// database refuses would fail the whole batch.
fn storable(field: &'static str, text: &str) -> Result<(), Error> {
    if text.contains('\0') {
        return Err(Error::invalid(field, "must not contain NUL characters"));
    }
    Ok(())
}

/// Checks an idempotency key: at most 128 bytes.
///
/// # Errors
/// INVALID_ARGUMENT naming `client_id`.
pub(crate) fn validate_client_id(client_id: &str) -> Result<(), Error> {
    if client_id.len() > MAX_CLIENT_ID_BYTES {
        return Err(Error::invalid(
            "client_id",
            format!("must be at most {MAX_CLIENT_ID_BYTES} bytes"),
        ));
    }
    storable("client_id", client_id)
}

/// Checks and trims a room name: 1 to 100 characters.
///
/// # Errors
/// INVALID_ARGUMENT naming `name`.
pub(crate) fn room_name(name: &str) -> Result<String, Error> {
    let name = name.trim();
    if name.is_empty() {
        return Err(Error::invalid("name", "must not be empty"));
    }
    if name.chars().count() > MAX_ROOM_NAME_CHARS {
        return Err(Error::invalid(
            "name",
            format!("must be at most {MAX_ROOM_NAME_CHARS} characters"),
        ));
    }
    storable("name", name)?;
    Ok(name.to_owned())
}

/// Checks a password's length.
///
/// # Errors
/// INVALID_ARGUMENT naming `password`.
pub(crate) fn validate_password(password: &str) -> Result<(), Error> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::invalid(
            "password",
            format!("must be at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Checks a password a room is given (created or changed): empty (public)
/// or at least [`MIN_PASSWORD_BYTES`].
///
/// # Errors
/// INVALID_ARGUMENT naming `password`.
pub(crate) fn validate_new_password(password: &str) -> Result<(), Error> {
    validate_password(password)?;
    if !password.is_empty() && password.len() < MIN_PASSWORD_BYTES {
        return Err(Error::invalid(
            "password",
            format!("must be at least {MIN_PASSWORD_BYTES} bytes (or empty for a public room)"),
        ));
    }
    Ok(())
}

fn alphabet() -> &'static str {
    std::str::from_utf8(SHORT_CODE_ALPHABET).unwrap_or_default()
}

/// A fresh random short join code.
///
/// # Errors
/// Fails when the system has no randomness.
pub(crate) fn new_short_code() -> Result<String, Error> {
    let mut bytes = [0u8; SHORT_CODE_LEN];
    getrandom::fill(&mut bytes).map_err(|err| anyhow::anyhow!("no randomness: {err}"))?;
    Ok(bytes
        .iter()
        .map(|b| char::from(SHORT_CODE_ALPHABET[usize::from(b % 32)]))
        .collect())
}

/// A fresh room id for rooms made by `CreateRoom`.
pub(crate) fn new_room_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// The page size a history request asks for: 0 means 50, above 200 is 200.
///
/// # Errors
/// INVALID_ARGUMENT for a negative limit.
pub(crate) fn history_limit(limit: i32) -> Result<i64, Error> {
    match limit {
        0 => Ok(DEFAULT_HISTORY_LIMIT),
        limit if limit < 0 => Err(Error::invalid("limit", "must not be negative")),
        limit => Ok(i64::from(limit).min(MAX_HISTORY_LIMIT)),
    }
}

/// Checks a `before_seq` or `since_seq`.
///
/// # Errors
/// INVALID_ARGUMENT naming `field` for a negative seq.
pub(crate) fn validate_seq(field: &'static str, seq: i64) -> Result<(), Error> {
    if seq < 0 {
        return Err(Error::invalid(field, "must not be negative"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_follow_the_rules() {
        for good in ["general", "a", "Room_1.b-c", &"x".repeat(64)] {
            assert!(RoomId::parse("room_id", good).is_ok(), "{good}");
        }
        for bad in ["", "has space", "émoji", "a/b", &"x".repeat(65)] {
            assert!(RoomId::parse("room_id", bad).is_err(), "{bad}");
        }
        assert!(RoomId::parse("room_id", &new_room_id()).is_ok());
    }

    #[test]
    fn content_must_have_text_and_fit() {
        assert!(validate_content("hi", 4096).is_ok());
        assert!(validate_content(&"é".repeat(2048), 4096).is_ok());
        assert!(validate_content(&"é".repeat(2049), 4096).is_err());
        assert!(validate_content("", 4096).is_err());
        assert!(validate_content(" \n\t", 4096).is_err());
        assert!(validate_content("a\0b", 4096).is_err());
        assert!(validate_client_id("c-\0").is_err());
        assert!(validate_client_id("c-17").is_ok());
        assert!(room_name("lobby\0").is_err());
    }

    #[test]
    fn short_codes_use_the_alphabet() {
        for _ in 0..100 {
            let code = new_short_code().unwrap();
            assert_eq!(ShortCode::parse(&code).unwrap().as_str(), code);
        }
        assert_eq!(ShortCode::parse(" k7qx2m ").unwrap().as_str(), "K7QX2M");
        assert!(ShortCode::parse("K7QX2").is_err());
        assert!(
            ShortCode::parse("K7QX20").is_err(),
            "0 is not in the alphabet"
        );
    }

    #[test]
    fn joins_name_exactly_one_room() {
        let by_id = JoinRequest::parse("general", "", String::new()).unwrap();
        assert!(matches!(by_id.target, JoinTarget::Id(ref id) if id.as_str() == "general"));
        let by_code = JoinRequest::parse("", " k7qx2m", String::new()).unwrap();
        assert!(matches!(by_code.target, JoinTarget::Code(ref code) if code.as_str() == "K7QX2M"));
        assert!(JoinRequest::parse("", "", String::new()).is_err());
        assert!(JoinRequest::parse("general", "K7QX2M", String::new()).is_err());
        assert!(JoinRequest::parse("bad id", "", String::new()).is_err());
        assert!(JoinRequest::parse("general", "", "x".repeat(1025)).is_err());
    }

    #[test]
    fn history_limits_default_and_cap() {
        assert_eq!(history_limit(0).unwrap(), 50);
        assert_eq!(history_limit(7).unwrap(), 7);
        assert_eq!(history_limit(1000).unwrap(), 200);
        assert!(history_limit(-1).is_err());
    }
}
