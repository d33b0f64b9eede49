//! Everything the chat service can fail with, and the one place it becomes
//! a gRPC status (or, on a stream, an `error` frame carrying that status).

use parley_proto::chat::v1::{ChatResponse, Error as ErrorFrame, chat_response::Frame};
use parley_runtime::grpc::status::{code_name, database_error, internal_error, invalid_argument};
use tonic::Status;

/// A failed chat operation.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A request field is invalid.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// No room has this id.
    #[error("room {0} not found")]
    RoomNotFound(String),
    /// No room has this short code.
    #[error("no room has the short code {0}")]
    NoSuchShortCode(String),
    /// A private room joined by a non-member without its password or with
    /// a wrong one: the answer does not say which.
    #[error("room {0} is private: its password is missing or wrong")]
    WrongPassword(String),
    /// A private room's history asked for by a non-member.
    #[error("room {0} is private: only members read its history")]
    MembersOnly(String),
    /// A stream frame about a room its session has not joined.
    #[error("join room {0} before using it")]
    NotJoined(String),
    /// A unary send to a room the caller is not a member of.
    #[error("join room {0} (JoinRoom) before sending to it")]
    NotAMember(String),
    /// A join past the rooms one session may have joined.
    #[error("at most {0} rooms may be joined at once")]
    TooManyRooms(usize),
    /// A session's frames arriving faster than it is served.
    #[error("too many frames waiting; slow down")]
    Backlogged,
    /// No message at a seq.
    #[error("no message {seq} in room {room}")]
    NoSuchMessage {
        /// The room.
        room: String,
        /// The seq asked for.
        seq: i64,
    },
    /// A change to another user's message that the caller may not make.
    #[error("message {0} is not yours")]
    NotYourMessage(i64),
    /// A change to a deleted message.
    #[error("message {0} was deleted")]
    MessageDeleted(i64),
    /// A moderation or room change the caller's role does not allow.
    #[error("{0}")]
    NotAllowed(String),
    /// A send, edit or reaction by a muted member.
    #[error("you are muted in room {0}")]
    Muted(String),
    /// A join of a room the user is banned from.
    #[error("you are banned from room {0}")]
    Banned(String),
    /// A resumed join (`since_seq`) of a room the user was removed from
    /// after that seq.
    #[error(
        "you were removed from room {0} since you last had it: join it again without since_seq"
    )]
    RemovedSince(String),
    /// A moderation of a user who is not a member of the room.
    #[error("user {0} is not a member of this room")]
    NotInRoom(String),
    /// An unban or unmute of a user who is not banned or muted.
    #[error("user {user} is not {what} in this room")]
    NotSanctioned {
        /// The user.
        user: String,
        /// `banned` or `muted`.
        what: &'static str,
    },
    /// Moderation or management of a direct room.
    #[error("room {0} is a direct room: it has no moderators and cannot be changed")]
    DirectRoom(String),
    /// A join of another pair's direct room.
    #[error("room {0} is a direct room of two other users")]
    OthersDirectRoom(String),
    /// A unary call about a room the caller is not a member of.
    #[error("join room {0} (JoinRoom) first")]
    NotAMemberOf(String),
    /// A session that was never opened on its stream.
    #[error("no such session: open it first")]
    NoSuchSession,
    /// A gateway opened a session under an id already open on its stream.
    #[error("session id already open on this stream")]
    SessionIdInUse,
    /// A stream frame with no kind.
    #[error("frame: a frame needs exactly one kind")]
    EmptyFrame,
    /// An access token expired without a refresh.
    #[error("access token expired: send a refresh frame before it does")]
    TokenExpired,
    /// A refresh with another user's token.
    #[error("the new token belongs to another user")]
    OtherUsersToken,
    /// A rate or size limit.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The token's scopes do not allow this (README, "Bots and API keys").
    #[error("this token's scopes do not include {0}")]
    MissingScope(parley_runtime::token::Scope),
    /// A bad or expired token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The service cannot take the request now (shutting down, overloaded).
    #[error("{0}")]
    Unavailable(String),
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// A bug or an unexpected state.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl Error {
    /// An invalid request field.
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            message: message.into(),
        }
    }

    /// The `error` frame of a failed stream frame, echoing the frame's
    /// `client_id` and `room_id` ("" when it had none).
    pub(crate) fn into_frame(self, client_id: &str, room_id: &str) -> ChatResponse {
        error_frame(&Status::from(self), client_id, room_id)
    }
}

/// The `error` frame for `status`.
pub(crate) fn error_frame(status: &Status, client_id: &str, room_id: &str) -> ChatResponse {
    ChatResponse {
        frame: Some(Frame::Error(ErrorFrame {
            code: code_name(status.code()).to_owned(),
            message: status.message().to_owned(),
            client_id: client_id.to_owned(),
            room_id: room_id.to_owned(),
        })),
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument { field, message } => invalid_argument(field, message),
            Error::RoomNotFound(_) | Error::NoSuchShortCode(_) | Error::NoSuchMessage { .. } => {
                Status::not_found(err.to_string())
            }
            Error::WrongPassword(_)
            | Error::MembersOnly(_)
            | Error::NotYourMessage(_)
            | Error::NotAllowed(_)
            | Error::Muted(_)
            | Error::Banned(_)
            | Error::OthersDirectRoom(_)
            | Error::MissingScope(_) => Status::permission_denied(err.to_string()),
            Error::NotJoined(_)
            | Error::NotAMember(_)
            | Error::NotAMemberOf(_)
            | Error::MessageDeleted(_)
            | Error::NotInRoom(_)
            | Error::RemovedSince(_)
            | Error::NotSanctioned { .. }
            | Error::DirectRoom(_)
            | Error::NoSuchSession
            | Error::SessionIdInUse => Status::failed_precondition(err.to_string()),
            Error::TooManyRooms(_) | Error::Backlogged => {
                Status::resource_exhausted(err.to_string())
            }
            Error::EmptyFrame => invalid_argument("frame", "a frame needs exactly one kind"),
            Error::TokenExpired | Error::OtherUsersToken => {
                Status::unauthenticated(err.to_string())
            }
            Error::ResourceExhausted(message) => Status::resource_exhausted(message),
            Error::Unauthenticated(message) => Status::unauthenticated(message),
            Error::Unavailable(message) => Status::unavailable(message),
            Error::Database(err) => database_error(&err, "chat database"),
            Error::Internal(err) => internal_error(&err),
        }
    }
}

impl From<parley_runtime::password::PasswordError> for Error {
    fn from(err: parley_runtime::password::PasswordError) -> Self {
        use parley_runtime::password::PasswordError;
        match err {
            PasswordError::Busy => Self::ResourceExhausted(err.to_string()),
            PasswordError::Internal(err) => Self::Internal(err),
        }
    }
}

impl From<parley_runtime::token::TokenError> for Error {
    fn from(err: parley_runtime::token::TokenError) -> Self {
        Self::Unauthenticated(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn each_error_has_its_code() {
        let cases = [
            (Error::invalid("content", "empty"), Code::InvalidArgument),
            (Error::RoomNotFound("x".into()), Code::NotFound),
            (Error::NoSuchShortCode("ABCDEF".into()), Code::NotFound),
            (Error::WrongPassword("x".into()), Code::PermissionDenied),
            (Error::MembersOnly("x".into()), Code::PermissionDenied),
            (Error::NotJoined("x".into()), Code::FailedPrecondition),
            (Error::NotAMember("x".into()), Code::FailedPrecondition),
            (Error::NoSuchSession, Code::FailedPrecondition),
            (
                Error::NoSuchMessage {
                    room: "r".into(),
                    seq: 4,
                },
                Code::NotFound,
            ),
            (Error::NotYourMessage(4), Code::PermissionDenied),
            (Error::MessageDeleted(4), Code::FailedPrecondition),
            (Error::NotAllowed("no".into()), Code::PermissionDenied),
            (Error::Muted("r".into()), Code::PermissionDenied),
            (Error::Banned("r".into()), Code::PermissionDenied),
            (Error::OthersDirectRoom("r".into()), Code::PermissionDenied),
            (
                Error::MissingScope(parley_runtime::token::Scope::ChatWrite),
                Code::PermissionDenied,
            ),
            (Error::NotInRoom("u".into()), Code::FailedPrecondition),
            (Error::RemovedSince("r".into()), Code::FailedPrecondition),
            (
                Error::NotSanctioned {
                    user: "u".into(),
                    what: "banned",
                },
                Code::FailedPrecondition,
            ),
            (Error::DirectRoom("r".into()), Code::FailedPrecondition),
            (Error::NotAMemberOf("r".into()), Code::FailedPrecondition),
            (Error::TooManyRooms(3), Code::ResourceExhausted),
            (Error::Backlogged, Code::ResourceExhausted),
            (Error::EmptyFrame, Code::InvalidArgument),
            (Error::TokenExpired, Code::Unauthenticated),
            (Error::OtherUsersToken, Code::Unauthenticated),
            (
                Error::ResourceExhausted("slow down".into()),
                Code::ResourceExhausted,
            ),
            (
                Error::Unauthenticated("expired".into()),
                Code::Unauthenticated,
            ),
            (Error::Unavailable("draining".into()), Code::Unavailable),
            (
                Error::Database(sqlx::Error::PoolTimedOut),
                Code::Unavailable,
            ),
            (Error::Internal(anyhow::anyhow!("boom")), Code::Internal),
        ];
        for (err, code) in cases {
            assert_eq!(Status::from(err).code(), code);
        }
    }

    #[test]
    fn error_frames_name_the_code_and_echo_the_frame() {
        let frame = Error::invalid("content", "must not be empty").into_frame("c-1", "general");
        let Some(Frame::Error(error)) = frame.frame else {
            panic!("an error frame");
        };
        assert_eq!(error.code, "INVALID_ARGUMENT");
        assert_eq!(error.client_id, "c-1");
        assert_eq!(error.room_id, "general");
        assert!(error.message.contains("content"), "{}", error.message);
    }
}
