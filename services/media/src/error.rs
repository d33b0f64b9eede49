//! Everything the media service can fail with, and the one place it
//! becomes a gRPC status.

use parley_runtime::grpc::status::{database_error, internal_error, invalid_argument};
use tonic::Status;

/// A failed media operation.
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
    /// No such attachment, upload or thumbnail (the noun).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(&'static str),
    /// Over `MEDIA_MAX_BYTES` or over the uploader's quota.
    #[error("{0}")]
    TooLarge(String),
    /// A download range past the end.
    #[error("{0}")]
    OutOfRange(String),
    /// The client's stream failed or was cut: its status goes back as is.
    #[error("the request stream failed: {0}")]
    Stream(Status),
    /// The object store failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
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
            Error::NotFound(what) => Status::not_found(format!("{what} not found")),
            Error::PermissionDenied(message) => Status::permission_denied(message),
            Error::TooLarge(message) => Status::resource_exhausted(message),
            Error::OutOfRange(message) => Status::out_of_range(message),
            Error::Stream(status) => status,
            // Bytes whose metadata is still there: deleted beside a
            // download, or lost by the store. Either way, nothing to send.
            Error::Store(object_store::Error::NotFound { .. }) => {
                Status::not_found("attachment not found")
            }
            Error::Store(err) => {
                tracing::warn!(error = %err, "object store failed");
                Status::unavailable("media store unavailable; retry later")
            }
            Error::Database(err) => database_error(&err, "media database"),
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
            (Error::invalid("filename", "bad"), Code::InvalidArgument),
            (Error::NotFound("attachment"), Code::NotFound),
            (Error::PermissionDenied("no"), Code::PermissionDenied),
            (Error::TooLarge("big".into()), Code::ResourceExhausted),
            (Error::OutOfRange("past".into()), Code::OutOfRange),
            (
                Error::Store(object_store::Error::NotFound {
                    path: "a/x".into(),
                    source: "gone".into(),
                }),
                Code::NotFound,
            ),
            (
                Error::Store(object_store::Error::Generic {
                    store: "S3",
                    source: "down".into(),
                }),
                Code::Unavailable,
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

    #[test]
    fn store_details_do_not_leak() {
        let status = Status::from(Error::Store(object_store::Error::Generic {
            store: "S3",
            source: "secret-bucket 403".into(),
        }));
        assert!(!status.message().contains("secret"));
    }
}
