//! Everything the auth service can fail with, and the one place it becomes
//! a gRPC status.

use parley_runtime::grpc::status::{database_error, internal_error, invalid_argument};
use tonic::{Code, Status};

/// A failed auth operation.
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
    /// Wrong password or unknown user: deliberately the same answer.
    #[error("invalid username or password")]
    InvalidCredentials,
    /// A refresh token that is unknown, spent, expired or revoked.
    #[error("refresh token is invalid, expired or revoked; log in again")]
    InvalidRefreshToken,
    /// The account is suspended.
    #[error("account is suspended")]
    Suspended,
    /// A bad or missing access token where one is needed.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(&'static str),
    /// The username is taken.
    #[error("username is already taken")]
    UsernameTaken,
    /// An API key that is unknown, revoked or expired, or whose user is
    /// gone.
    #[error("API key is invalid, revoked or expired")]
    InvalidApiKey,
    /// Nothing the caller may see has this id.
    #[error("{0}")]
    NotFound(String),
    /// A per-user limit is reached.
    #[error("{0}")]
    LimitReached(String),
    /// A status decided elsewhere (a token's scopes), passed on as it is.
    #[error("{0}")]
    Status(Status),
    /// Password hashing is saturated; retry shortly.
    #[error("{0}")]
    Busy(String),
    /// Too many sign-in attempts for one username.
    #[error("too many sign-in attempts for this username; {0}")]
    TooManyAttempts(String),
    /// The user service refused or failed a call.
    #[error("user service: {0}")]
    UserService(Status),
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

impl From<parley_runtime::password::PasswordError> for Error {
    fn from(err: parley_runtime::password::PasswordError) -> Self {
        use parley_runtime::password::PasswordError;
        match err {
            PasswordError::Busy => Self::Busy(err.to_string()),
            PasswordError::Internal(err) => Self::Internal(err),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument { field, message } => invalid_argument(field, message),
            Error::InvalidCredentials | Error::InvalidRefreshToken | Error::InvalidApiKey => {
                Status::unauthenticated(err.to_string())
            }
            Error::Suspended | Error::PermissionDenied(_) => {
                Status::permission_denied(err.to_string())
            }
            Error::Unauthenticated(message) => Status::unauthenticated(message),
            Error::UsernameTaken => Status::already_exists(err.to_string()),
            Error::NotFound(message) => Status::not_found(message),
            Error::Status(status) => status,
            Error::LimitReached(message) => Status::resource_exhausted(message),
            Error::Busy(message) => Status::resource_exhausted(message),
            Error::TooManyAttempts(_) => Status::resource_exhausted(err.to_string()),
            // The user service's answers about the request itself reach the
            // client as they are (with their BadRequest details); its
            // outages are ours too; anything else is a bug between us.
            Error::UserService(status) => match status.code() {
                Code::InvalidArgument | Code::AlreadyExists => status,
                Code::Unavailable | Code::DeadlineExceeded => {
                    tracing::warn!(error = %status.message(), "user service unavailable");
                    Status::unavailable("user service unavailable; retry later")
                }
                _ => {
                    tracing::error!(code = ?status.code(), error = %status.message(), "user service call failed");
                    Status::internal("internal error")
                }
            },
            Error::Database(err) => database_error(&err, "auth database"),
            Error::Internal(err) => internal_error(&err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_code() {
        let cases = [
            (
                Error::invalid("password", "too short"),
                Code::InvalidArgument,
            ),
            (Error::InvalidCredentials, Code::Unauthenticated),
            (Error::InvalidRefreshToken, Code::Unauthenticated),
            (Error::Suspended, Code::PermissionDenied),
            (Error::UsernameTaken, Code::AlreadyExists),
            (Error::InvalidApiKey, Code::Unauthenticated),
            (Error::NotFound("no such key".into()), Code::NotFound),
            (
                Error::LimitReached("too many".into()),
                Code::ResourceExhausted,
            ),
            (
                Error::UserService(Status::already_exists("username")),
                Code::AlreadyExists,
            ),
            (
                Error::UserService(Status::unavailable("down")),
                Code::Unavailable,
            ),
            (
                Error::UserService(Status::permission_denied("no")),
                Code::Internal,
            ),
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
}
