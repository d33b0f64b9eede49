//! Everything the user service can fail with, and the one place it becomes
//! a gRPC status.

use parley_runtime::grpc::status::{database_error, internal_error, invalid_argument};
use tonic::{Code, Status};

/// A failed user-service operation.
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
    /// No user has the id.
    #[error("user {0} not found")]
    NotFound(String),
    /// The username or email is taken.
    #[error("{field} is already taken")]
    AlreadyExists {
        /// `username` or `email`.
        field: &'static str,
    },
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(&'static str),
    /// The auth service failed a call (deleting a user's credentials).
    #[error("auth service: {0}")]
    AuthService(Status),
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
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument { field, message } => invalid_argument(field, message),
            Error::NotFound(id) => Status::not_found(format!("user {id} not found")),
            Error::AlreadyExists { field } => {
                Status::already_exists(format!("{field} is already taken"))
            }
            Error::PermissionDenied(message) => Status::permission_denied(message),
            // Auth's refusals of the caller reach them as they are; its
            // outages are ours too.
            Error::AuthService(status) => match status.code() {
                Code::Unauthenticated | Code::PermissionDenied => status,
                Code::Unavailable | Code::DeadlineExceeded => {
                    tracing::warn!(error = %status.message(), "auth service unavailable");
                    Status::unavailable("auth service unavailable; retry later")
                }
                _ => {
                    tracing::error!(code = ?status.code(), error = %status.message(), "auth service call failed");
                    Status::internal("internal error")
                }
            },
            Error::Database(err) => database_error(&err, "user database"),
            Error::Internal(err) => internal_error(&err),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn each_error_has_its_code() {
        let cases = [
            (Error::invalid("email", "bad"), Code::InvalidArgument),
            (Error::NotFound("x".into()), Code::NotFound),
            (
                Error::AlreadyExists { field: "username" },
                Code::AlreadyExists,
            ),
            (Error::PermissionDenied("no"), Code::PermissionDenied),
            (
                Error::AuthService(Status::unavailable("down")),
                Code::Unavailable,
            ),
            (
                Error::Database(sqlx::Error::PoolTimedOut),
                Code::Unavailable,
            ),
            (Error::Database(sqlx::Error::RowNotFound), Code::Internal),
            (Error::Internal(anyhow::anyhow!("boom")), Code::Internal),
        ];
        for (err, code) in cases {
            assert_eq!(Status::from(err).code(), code);
        }
    }

    #[test]
    fn internal_details_do_not_leak() {
        let status = Status::from(Error::Internal(anyhow::anyhow!("secret table name")));
        assert!(!status.message().contains("secret"));
    }
}
