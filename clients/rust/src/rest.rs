//! The gateway's REST API (README: "REST API"), and the credentials every
//! call and the WebSocket share.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::json;

use crate::{
    connection::Connection,
    error::{Action, Error, Result},
};

/// How often a read is tried before its error is returned, and the
/// backoff between tries (README: "Client libraries").
const READ_TRIES: u32 = 6;
const READ_RETRY_FIRST: Duration = Duration::from_millis(250);
const READ_RETRY_MOST: Duration = Duration::from_secs(2);

/// A signed-in user's tokens.
#[derive(Debug, Clone)]
struct Tokens {
    access_token: String,
    refresh_token: String,
    /// When the access token was issued, and how long it lives.
    issued: Instant,
    lifetime: Duration,
}

impl Tokens {
    /// Renewed once two thirds of its life are gone, so a renewal has time
    /// to complete before the server would refuse the old token.
    fn renew_at(&self) -> Instant {
        self.issued + self.lifetime * 2 / 3
    }
}

#[derive(Debug, Clone)]
enum Credentials {
    None,
    Tokens(Tokens),
    /// An API key works wherever a token does; the gateway renews what it
    /// exchanges it for.
    ApiKey(String),
}

/// A client of one Parley server. Cheap to clone: clones share the
/// credentials, so a refresh by one serves all.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) http: reqwest::Client,
    /// `http(s)://host:port`, without a trailing slash.
    pub(crate) base: Arc<str>,
    credentials: Arc<tokio::sync::Mutex<Credentials>>,
}

/// A user, as the server shows it to the caller.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct User {
    /// Stable id.
    pub id: String,
    /// Sign-in name.
    pub username: String,
    /// Shown name.
    pub display_name: String,
}

/// A room made over REST.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct RoomInfo {
    /// The server-made id, to join it by.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The 6-character join code; `""` for a direct room.
    #[serde(default)]
    pub short_code: String,
    /// Whether it needs a password.
    pub private: bool,
}

/// What a program keeps to sign in again without the password: the
/// refresh token, which rotates at every use (save the new one each time).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Session {
    /// The current refresh token: a secret, keep it private.
    pub refresh_token: String,
}

/// One page of a room's history, newest last.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct HistoryPage {
    /// Messages in their current state, oldest first.
    pub messages: Vec<serde_json::Value>,
    /// Whether older messages exist (ask with `before_seq` set to the
    /// first message's `seq`).
    pub has_more: bool,
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    access_token: String,
    refresh_token: String,
    expires_in: u64,
}

#[derive(Debug, Deserialize)]
struct ErrorAnswer {
    error: ErrorBody,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
}

impl Client {
    /// A client of the server at `server` (`http://localhost:8080`), not
    /// signed in yet.
    ///
    /// # Errors
    /// [`Error::Url`] for a URL that is not `http://` or `https://`.
    pub fn new(server: &str) -> Result<Self> {
        let base = server.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Url(server.to_owned()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|err| Error::Transport(err.to_string()))?;
        Ok(Self {
            http,
            base: Arc::from(base),
            credentials: Arc::new(tokio::sync::Mutex::new(Credentials::None)),
        })
    }

    /// A client that acts with an API key (a bot's, usually).
    ///
    /// # Errors
    /// As [`Client::new`].
    pub fn with_api_key(server: &str, key: &str) -> Result<Self> {
        let client = Self::new(server)?;
        *client.credentials.try_lock().map_err(|_| Error::Closed)? =
            Credentials::ApiKey(key.to_owned());
        Ok(client)
    }

    /// Creates an account.
    ///
    /// # Errors
    /// ALREADY_EXISTS for a taken username, INVALID_ARGUMENT for a bad
    /// one or a short password.
    pub async fn register(&self, username: &str, password: &str) -> Result<User> {
        self.call(
            reqwest::Method::POST,
            "/api/v1/auth/register",
            Some(json!({"username": username, "password": password})),
            false,
        )
        .await
    }

    /// Signs in and keeps the tokens, renewing them before they expire.
    ///
    /// # Errors
    /// UNAUTHENTICATED for a wrong username or password.
    pub async fn login(&self, username: &str, password: &str) -> Result<()> {
        let body = json!({"username": username, "password": password});
        let tokens = self.token_request("/api/v1/auth/login", body).await?;
        *self.credentials.lock().await = Credentials::Tokens(tokens);
        Ok(())
    }

    /// Signs in with a saved [`Session`]: its refresh token is spent and
    /// a new one kept (read it with [`Client::session`]).
    ///
    /// # Errors
    /// UNAUTHENTICATED for a spent, revoked or unknown refresh token.
    pub async fn resume(&self, session: &Session) -> Result<()> {
        let body = json!({"refresh_token": session.refresh_token});
        let tokens = self.token_request("/api/v1/auth/refresh", body).await?;
        *self.credentials.lock().await = Credentials::Tokens(tokens);
        Ok(())
    }

    /// The session to save, when signed in with a password or a session.
    pub async fn session(&self) -> Option<Session> {
        match &*self.credentials.lock().await {
            Credentials::Tokens(tokens) => Some(Session {
                refresh_token: tokens.refresh_token.clone(),
            }),
            _ => None,
        }
    }

    /// Signs out: the refresh token is revoked and the client forgets it.
    ///
    /// # Errors
    /// Transport failures.
    pub async fn logout(&self) -> Result<()> {
        let previous = std::mem::replace(&mut *self.credentials.lock().await, Credentials::None);
        if let Credentials::Tokens(tokens) = previous {
            let response = self
                .http
                .post(format!("{}/api/v1/auth/logout", self.base))
                .json(&json!({"refresh_token": tokens.refresh_token}))
                .send()
                .await
                .map_err(transport)?;
            answer::<serde_json::Value>(response, true).await?;
        }
        Ok(())
    }

    /// The signed-in user.
    ///
    /// # Errors
    /// UNAUTHENTICATED when the credentials are refused.
    pub async fn me(&self) -> Result<User> {
        self.call(reqwest::Method::GET, "/api/v1/me", None, true)
            .await
    }

    /// Creates a room with a server-made id; with a password it is private.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a bad name or a short password.
    pub async fn create_room(&self, name: &str, password: Option<&str>) -> Result<RoomInfo> {
        let mut body = json!({"name": name});
        if let Some(password) = password {
            body["password"] = json!(password);
        }
        self.call(reqwest::Method::POST, "/api/v1/rooms", Some(body), true)
            .await
    }

    /// The caller's rooms, latest activity first, with unread counts
    /// (README: "REST API"), as the server sends them.
    ///
    /// # Errors
    /// UNAUTHENTICATED when the credentials are refused.
    pub async fn my_rooms(&self) -> Result<Vec<serde_json::Value>> {
        let answer: serde_json::Value = self
            .call(reqwest::Method::GET, "/api/v1/rooms", None, true)
            .await?;
        Ok(answer["rooms"].as_array().cloned().unwrap_or_default())
    }

    /// Up to `limit` messages before `before_seq` (0: the latest).
    ///
    /// # Errors
    /// PERMISSION_DENIED for a private room the caller is not in.
    pub async fn history(&self, room_id: &str, before_seq: i64, limit: u32) -> Result<HistoryPage> {
        let path =
            format!("/api/v1/rooms/{room_id}/messages?limit={limit}&before_seq={before_seq}");
        self.call(reqwest::Method::GET, &path, None, true).await
    }

    /// The direct room of the caller and `user_id` (made on first use):
    /// private to the two, no password.
    ///
    /// # Errors
    /// NOT_FOUND for an unknown user, INVALID_ARGUMENT for oneself.
    pub async fn open_direct(&self, user_id: &str) -> Result<RoomInfo> {
        let body = json!({ "user_id": user_id });
        self.call(reqwest::Method::POST, "/api/v1/dms", Some(body), true)
            .await
    }

    /// Opens the WebSocket: a [`Connection`] that reconnects and resumes by
    /// itself until its last handle is dropped.
    ///
    /// # Errors
    /// [`Error::NotSignedIn`] without credentials.
    pub async fn connect(&self) -> Result<Connection> {
        self.bearer().await?;
        Ok(Connection::spawn(self.clone()))
    }

    /// The WebSocket URL of the server.
    pub(crate) fn ws_url(&self) -> String {
        let rest = self.base.trim_start_matches("http");
        format!("ws{rest}/ws")
    }

    /// The credential for a request, renewing a signed-in user's tokens
    /// when two thirds of their life are gone.
    ///
    /// # Errors
    /// [`Error::NotSignedIn`], or the refresh's failure.
    pub(crate) async fn bearer(&self) -> Result<String> {
        let mut credentials = self.credentials.lock().await;
        match &*credentials {
            Credentials::None => Err(Error::NotSignedIn),
            Credentials::ApiKey(key) => Ok(key.clone()),
            Credentials::Tokens(tokens) if Instant::now() < tokens.renew_at() => {
                Ok(tokens.access_token.clone())
            }
            Credentials::Tokens(tokens) => {
                // Under the lock: a refresh token is spent by its first
                // use, so two renewals at once would sign the user out.
                let body = json!({"refresh_token": tokens.refresh_token});
                let renewed = self.token_request("/api/v1/auth/refresh", body).await?;
                let access = renewed.access_token.clone();
                *credentials = Credentials::Tokens(renewed);
                Ok(access)
            }
        }
    }

    /// When the access token should be renewed; `None` for API keys.
    pub(crate) async fn renew_at(&self) -> Option<Instant> {
        match &*self.credentials.lock().await {
            Credentials::Tokens(tokens) => Some(tokens.renew_at()),
            _ => None,
        }
    }

    /// Tokens from a sign-in (`login` or `refresh`), timed from before
    /// the request so a renewal is never late. Never authorized, so the
    /// renewal in [`Client::bearer`] can use it.
    async fn token_request(&self, path: &str, body: serde_json::Value) -> Result<Tokens> {
        let issued = Instant::now();
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .map_err(transport)?;
        let answer: TokenAnswer = answer(response, false).await?;
        Ok(tokens(answer, issued))
    }

    /// One REST call. A read (GET) the server could not serve for a
    /// passing reason (a replica restarting, a busy service) is tried
    /// again with backoff: it changes nothing, so repeating it is safe.
    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        authorized: bool,
    ) -> Result<T> {
        let mut wait = READ_RETRY_FIRST;
        let mut tries = 1;
        loop {
            match self
                .call_once(method.clone(), path, body.clone(), authorized)
                .await
            {
                Err(err)
                    if method == reqwest::Method::GET
                        && err.action() == Action::Retry
                        && tries < READ_TRIES =>
                {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(READ_RETRY_MOST);
                    tries += 1;
                }
                result => return result,
            }
        }
    }

    async fn call_once<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        authorized: bool,
    ) -> Result<T> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if authorized {
            request = request.bearer_auth(self.bearer().await?);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(transport)?;
        answer(response, false).await
    }
}

fn tokens(answer: TokenAnswer, issued: Instant) -> Tokens {
    Tokens {
        access_token: answer.access_token,
        refresh_token: answer.refresh_token,
        issued,
        lifetime: Duration::from_secs(answer.expires_in.max(1)),
    }
}

pub(crate) fn transport(err: reqwest::Error) -> Error {
    Error::Transport(err.to_string())
}

/// The body of a successful answer, or the server's error. `empty`
/// answers (204) read as `null`.
pub(crate) async fn answer<T: DeserializeOwned>(
    response: reqwest::Response,
    empty: bool,
) -> Result<T> {
    let status = response.status();
    let bytes = response.bytes().await.map_err(transport)?;
    if status.is_success() {
        let bytes: &[u8] = if empty && bytes.is_empty() {
            b"null"
        } else {
            &bytes
        };
        return serde_json::from_slice(bytes)
            .map_err(|err| Error::Transport(format!("unexpected answer: {err}")));
    }
    match serde_json::from_slice::<ErrorAnswer>(&bytes) {
        Ok(ErrorAnswer { error }) => Err(Error::Server {
            status: Some(status.as_u16()),
            code: error.code,
            message: error.message,
        }),
        Err(_) => Err(Error::Server {
            status: Some(status.as_u16()),
            code: if status.is_server_error() {
                "UNAVAILABLE".into()
            } else {
                "UNKNOWN".into()
            },
            message: String::from_utf8_lossy(&bytes).into_owned(),
        }),
    }
}
