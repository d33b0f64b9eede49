//! Status codes by name, and the errors every service answers alike.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// The code as go-grpc-prometheus labels it (`OK`, `InvalidArgument`, ...),
/// which dashboards and alert rules match on. tonic's `Debug` spells some
/// differently (`Ok`, `Cancelled`), hence the explicit table.
pub fn metric_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The code as the gRPC spec names it (`INVALID_ARGUMENT`), for in-band
/// errors such as WebSocket `error` frames and batch results.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The code named as [`code_name`] spells it, as it arrives in-band (a
/// closed gateway session, an `error` frame); `None` for any other text.
pub fn code_from_name(name: &str) -> Option<Code> {
    const CODES: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];
    CODES.into_iter().find(|&code| code_name(code) == name)
}

/// INVALID_ARGUMENT naming `field`, with the standard `google.rpc.BadRequest`
/// detail so clients can point at the field programmatically.
pub fn invalid_argument(field: &str, description: impl Into<String>) -> Status {
    let description = description.into();
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// The field a status names through its `google.rpc.BadRequest` detail.
pub fn invalid_field(status: &Status) -> Option<String> {
    status
        .get_details_bad_request()
        .and_then(|bad_request| bad_request.field_violations.into_iter().next())
        .map(|violation| violation.field)
}

/// The status for a database failure: UNAVAILABLE when `database` cannot
/// be reached (clients may retry), otherwise INTERNAL. Either way the detail
/// is logged, never sent.
pub fn database_error(err: &sqlx::Error, database: &str) -> Status {
    if crate::storage::is_unavailable(err) {
        tracing::warn!(error = %err, database, "database unavailable");
        Status::unavailable(format!("{database} unavailable; retry later"))
    } else {
        tracing::error!(error = ?err, database, "database error");
        Status::internal("internal error")
    }
}

/// The status for a bug or an unexpected state: INTERNAL, with the full
/// error chain logged and nothing of it sent.
pub fn internal_error(err: &anyhow::Error) -> Status {
    tracing::error!(error = ?err, "internal error");
    Status::internal("internal error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_read_back() {
        for code in [Code::Ok, Code::Unauthenticated, Code::ResourceExhausted] {
            assert_eq!(code_from_name(code_name(code)), Some(code));
        }
        assert_eq!(code_from_name("Unauthenticated"), None);
        assert_eq!(code_from_name(""), None);
    }

    #[test]
    fn invalid_argument_carries_the_field() {
        let status = invalid_argument("email", "is not an email address");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "email: is not an email address");
        assert_eq!(invalid_field(&status).as_deref(), Some("email"));
    }

    #[test]
    fn code_names_follow_the_conventions() {
        assert_eq!(metric_label(Code::Cancelled), "Canceled");
        assert_eq!(metric_label(Code::Ok), "OK");
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
    }
}
