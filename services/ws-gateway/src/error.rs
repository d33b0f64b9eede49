//! REST errors: one mapping from gRPC codes to HTTP statuses and the
//! `{"error":{"code","message"}}` body (README: "REST API").

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use parley_runtime::{grpc::status::code_name, token::TokenError};
use serde_json::json;
use tonic::{Code, Status};

/// A failed REST call, answered with the status of its gRPC code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    code: Code,
    message: String,
    /// A status other than the code's, where a route's contract says so.
    status: Option<StatusCode>,
}

impl ApiError {
    /// An error with `code` and a message for people.
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            status: None,
        }
    }

    /// The same error answered with `status` instead of its code's.
    pub(crate) fn with_status(self, status: StatusCode) -> Self {
        Self {
            status: Some(status),
            ..self
        }
    }

    /// The gRPC code.
    pub(crate) fn code(&self) -> Code {
        self.code
    }

    /// INVALID_ARGUMENT (400).
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// The HTTP status of the code.
    pub(crate) fn status(&self) -> StatusCode {
        self.status.unwrap_or_else(|| http_status(self.code))
    }
}

/// The HTTP status that stands for a gRPC code.
pub(crate) fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Internal | Code::Unknown | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> Self {
        // Messages of these codes may describe internals (addresses,
        // transport errors); clients get a plain one and the log the rest.
        let message = match status.code() {
            Code::Unavailable => "a service is unavailable; retry shortly".to_owned(),
            Code::DeadlineExceeded => "a service did not answer in time; retry".to_owned(),
            Code::Internal | Code::Unknown | Code::DataLoss => "internal error".to_owned(),
            _ => status.message().to_owned(),
        };
        if matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Internal
                | Code::Unknown
                | Code::DataLoss
        ) {
            tracing::warn!(code = ?status.code(), error = %status.message(), "REST call failed");
        }
        Self::new(status.code(), message)
    }
}

impl From<TokenError> for ApiError {
    fn from(err: TokenError) -> Self {
        Self::new(Code::Unauthenticated, err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (
            status,
            Json(json!({ "error": { "code": code_name(self.code), "message": self.message } })),
        )
            .into_response();
        // A limit says when to try again; a second is the granularity of
        // every Parley limit.
        if status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(retry_after(&self.message)),
            );
        }
        response
    }
}

/// Seconds until a limited caller may retry: what the service said ("...
/// retry in N s"), else one.
fn retry_after(message: &str) -> u64 {
    message
        .rsplit_once("retry in ")
        .and_then(|(_, rest)| rest.split(' ').next()?.parse().ok())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_follows_the_message() {
        assert_eq!(
            retry_after("too many sign-in attempts; retry in 1800 s"),
            1800
        );
        assert_eq!(retry_after("over the send rate"), 1);
    }

    #[test]
    fn codes_map_to_the_statuses_of_the_design() {
        for (code, status) in [
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::Internal, 500),
        ] {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
    }

    #[test]
    fn internal_details_stay_out_of_messages() {
        let error = ApiError::from(Status::unavailable(
            "chat is unavailable: tcp connect error 10.0.0.3",
        ));
        assert!(!error.message.contains("10.0.0.3"));
        let error = ApiError::from(Status::invalid_argument("username: too short"));
        assert_eq!(error.message, "username: too short");
    }
}
