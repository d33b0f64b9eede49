//! Everything the chat service can fail with, and the one place it becomes
//! a gRPC status (or, on a stream, an `error` frame carrying that status).

use parley_proto::chat::v1::{ChatResponse, Error as ErrorFrame, chat_response::Frame};
use parley_runtime::grpc::status::{code_name, database_error, internal_error, invalid_argument};
use tonic::Status;

/// A failed chat operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is invalid.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// No such room (or short code).
    #[error("{0}")]
    NotFound(String),
    /// A wrong or missing private-room password, or no membership.
    #[error("{0}")]
    PermissionDenied(String),
    /// The request does not fit the session's state, such as sending to a
    /// room not joined.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A rate or size limit.
    #[error("{0}")]
    ResourceExhausted(String),
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
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            message: message.into(),
        }
    }

    /// The `error` frame of a failed stream frame, echoing the frame's
    /// `client_id` and `room_id` ("" when it had none).
    pub fn into_frame(self, client_id: &str, room_id: &str) -> ChatResponse {
        error_frame(&Status::from(self), client_id, room_id)
    }
}

/// The `error` frame for `status`.
pub fn error_frame(status: &Status, client_id: &str, room_id: &str) -> ChatResponse {
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
            Error::NotFound(message) => Status::not_found(message),
            Error::PermissionDenied(message) => Status::permission_denied(message),
            Error::FailedPrecondition(message) => Status::failed_precondition(message),
            Error::ResourceExhausted(message) => Status::resource_exhausted(message),
            Error::Unauthenticated(message) => Status::unauthenticated(message),
            Error::Unavailable(message) => Status::unavailable(message),
            Error::Database(err) => database_error(&err, "chat database"),
            Error::Internal(err) => internal_error(&err),
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
            (Error::NotFound("x".into()), Code::NotFound),
            (Error::PermissionDenied("no".into()), Code::PermissionDenied),
            (
                Error::FailedPrecondition("join first".into()),
                Code::FailedPrecondition,
            ),
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
