//! What went wrong, and what the caller should do about it.

/// An error of the client, REST or WebSocket alike.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server refused the request: `code` is a gRPC status name
    /// (README: "WebSocket protocol"), `status` the HTTP status over REST.
    #[error("{code}: {message}")]
    Server {
        /// HTTP status for a REST answer, `None` for a WebSocket frame.
        status: Option<u16>,
        /// gRPC status name, e.g. `INVALID_ARGUMENT`.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// No credentials: call `login` or use an API key first.
    #[error("not signed in")]
    NotSignedIn,
    /// The server could not be reached or the connection broke.
    #[error("transport: {0}")]
    Transport(String),
    /// The connection task has stopped (its last handle was dropped).
    #[error("the connection is closed")]
    Closed,
    /// The server URL cannot be used.
    #[error("unusable server URL {0}")]
    Url(String),
}

/// What a caller should do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Try again later: the server is busy, unreachable or restarting.
    Retry,
    /// Sign in again: the credentials were refused.
    SignIn,
    /// Change the request: it is invalid, forbidden or names nothing.
    FixInput,
}

impl Error {
    /// What to do about this error.
    pub fn action(&self) -> Action {
        match self {
            Self::Server { code, .. } => match code.as_str() {
                "UNAUTHENTICATED" => Action::SignIn,
                "UNAVAILABLE" | "RESOURCE_EXHAUSTED" | "DEADLINE_EXCEEDED" | "ABORTED"
                | "INTERNAL" | "UNKNOWN" => Action::Retry,
                _ => Action::FixInput,
            },
            Self::NotSignedIn => Action::SignIn,
            Self::Transport(_) | Self::Closed => Action::Retry,
            Self::Url(_) => Action::FixInput,
        }
    }
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_to_do() {
        let server = |code: &str| Error::Server {
            status: None,
            code: code.into(),
            message: String::new(),
        };
        assert_eq!(server("UNAUTHENTICATED").action(), Action::SignIn);
        assert_eq!(server("RESOURCE_EXHAUSTED").action(), Action::Retry);
        assert_eq!(server("INVALID_ARGUMENT").action(), Action::FixInput);
        assert_eq!(Error::Transport("reset".into()).action(), Action::Retry);
    }
}
