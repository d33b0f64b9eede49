//! One WebSocket connection: authentication at the upgrade, then a single
//! task that reads client frames, writes queued server frames in batches,
//! and closes with the code the situation calls for.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    extract::{
        Query, State,
        ws::{
            CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade,
            rejection::WebSocketUpgradeRejection,
        },
    },
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use futures_util::{SinkExt as _, StreamExt as _};
use parley_proto::chat::v1::{ChatRequest, chat_request::Frame as In};
use parley_runtime::token::{Caller, TokenError, chat_frame_scope};
use serde::Deserialize;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tonic::Code;

use crate::{
    AppState,
    api_keys::KeyTokens,
    error::ApiError,
    frames::{self, FrameError},
    metrics::{self, FrameKind},
    session::{CloseReason, Grant, Outgoing, SessionHandle},
    upstream::NoStream,
};

/// Most queued frames written before one flush.
const MAX_BATCH: usize = 64;
/// How long a close frame, and the client's answer to it, may take before
/// the TCP connection is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The `token` query parameter of an upgrade.
#[derive(Debug, Deserialize)]
pub(crate) struct UpgradeQuery {
    token: Option<String>,
}

/// `GET /ws`: checks that it is an upgrade (400 otherwise) and the token
/// before upgrading (401 and the REST error body otherwise), enforces the per-user connection limit (429), then
/// hands the socket to its task.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<UpgradeQuery>, axum::extract::rejection::QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let shared = &state.shared;
    if shared.drain.is_cancelled() {
        metrics::upgrade("draining");
        return ApiError::new(
            Code::Unavailable,
            "this gateway is shutting down; reconnect",
        )
        .into_response();
    }
    // A request that is no WebSocket upgrade is malformed whatever its
    // token: 400 (README: "WebSocket protocol").
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            metrics::upgrade("bad_request");
            return ApiError::new(
                Code::InvalidArgument,
                format!("not a WebSocket upgrade: {}", rejection.body_text()),
            )
            .into_response();
        }
    };
    let header = |name: http::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if !crate::origins::allowed(
        header(http::header::ORIGIN),
        header(http::header::HOST),
        &shared.allowed_origins,
    ) {
        metrics::upgrade("forbidden_origin");
        return ApiError::new(
            Code::PermissionDenied,
            "this page's origin may not open WebSockets here (GATEWAY_ALLOWED_ORIGINS)",
        )
        .into_response();
    }
    let query_token = query.ok().and_then(|Query(query)| query.token);
    let protocol_token = upgrade
        .requested_protocols()
        .filter_map(|value| value.to_str().ok())
        .find_map(|value| value.strip_prefix("bearer."))
        .map(str::to_owned);
    let header_token = crate::rest::bearer_token(&headers);
    let (token, via_protocol) = match (query_token, header_token, protocol_token) {
        (Some(token), _, _) | (None, Some(token), _) => (token, false),
        (None, None, Some(token)) => (token, true),
        (None, None, None) => {
            metrics::upgrade("unauthenticated");
            return ApiError::from(TokenError::Missing).into_response();
        }
    };
    // An API key is exchanged for a token here; the connection then lives
    // on tokens the gateway renews (README, "Bots and API keys").
    // The key cache hands back the token's claims, verified.
    let verified = if crate::api_keys::is_api_key(&token) {
        shared.keys.token_for(&token).await.map(|(jwt, claims)| {
            (
                jwt.to_string(),
                claims,
                Some(Arc::<str>::from(token.as_str())),
            )
        })
    } else {
        shared
            .verifier
            .verify(&token)
            .map(|claims| (token.clone(), claims, None))
            .map_err(ApiError::from)
    };
    let (jwt, caller, api_key): (String, Caller, _) = match verified {
        Ok((jwt, claims, api_key)) => (jwt, claims.into(), api_key),
        Err(err) => {
            metrics::upgrade("unauthenticated");
            return err.into_response();
        }
    };
    if !shared.upstream.is_available() {
        metrics::upgrade("unavailable");
        return ApiError::new(
            Code::Unavailable,
            "no chat replica is reachable; retry shortly",
        )
        .into_response();
    }
    let Some(slot) = shared
        .per_user
        .acquire(&caller.user_id, shared.limits.max_connections_per_user)
    else {
        metrics::upgrade("too_many");
        return ApiError::new(
            Code::ResourceExhausted,
            format!(
                "at most {} connections per user on one gateway",
                shared.limits.max_connections_per_user
            ),
        )
        .into_response();
    };
    // The user's connections share one copy of the id.
    let user_id = slot.user_id.clone();
    metrics::upgrade("ok");
    let max = shared.limits.max_frame_bytes;
    let mut upgrade = upgrade
        .max_message_size(max)
        .max_frame_size(max)
        // A small read buffer keeps idle connections cheap (it grows for a
        // large frame); a batch of frames is written to the socket once the
        // write buffer holds 16 KiB, or at the flush that ends the batch.
        .read_buffer_size(256)
        .write_buffer_size(16 * 1024);
    if via_protocol {
        upgrade = upgrade.protocols([format!("bearer.{token}")]);
    }
    let in_flight = shared.tracker.token();
    let state = state.clone();
    // Only the id, the expiry and the grant are needed from here on.
    let expires_at = caller.expires_at;
    let grant = Grant::of(&caller, api_key);
    drop(caller);
    upgrade.on_upgrade(move |socket| {
        // The connection gets a task of its own rather than living inside
        // axum's upgrade task, whose future would also hold the socket and
        // everything the closure captured for as long as the connection
        // lasts. What only the start needs (the grant, the token) goes into
        // the handle and the boxed opening here, so the task, which lives
        // as long as the connection, does not keep room for it.
        let shared = state.shared.clone();
        let handle = SessionHandle::new(
            shared.next_session(),
            user_id,
            shared.limits.send_queue as usize,
            expires_at,
            grant,
        );
        let opening = Box::pin({
            let handle = handle.clone();
            async move { shared.upstream.open(handle, jwt).await }
        });
        tokio::spawn(serve(socket, state, handle, opening, (in_flight, slot)));
        std::future::ready(())
    })
}

/// What a connection's task acts on next, most urgent first.
enum Event {
    /// The gateway asked for the connection to close.
    Close(CloseReason),
    /// Frames are queued for the socket.
    Frames(VecDeque<Outgoing>),
    /// The client sent something, or went away.
    Received(Option<Result<Message, axum::Error>>),
}

/// Polls the handle and the socket directly: an idle connection waits
/// with no future of its own, just a registered waker.
fn next_event(handle: &SessionHandle, socket: &mut WebSocket, cx: &mut Context<'_>) -> Poll<Event> {
    handle.register(cx.waker());
    if let Some(reason) = handle.closing() {
        return Poll::Ready(Event::Close(reason));
    }
    if let Some(batch) = handle.take_frames(MAX_BATCH) {
        return Poll::Ready(Event::Frames(batch));
    }
    socket.poll_next_unpin(cx).map(Event::Received)
}

/// How a connection ended.
enum Ending {
    /// The client closed it or went away.
    Client,
    /// The socket failed.
    Error,
    /// The gateway closes it.
    Close(CloseReason),
}

/// The connection's task: `opening` places the session on a chat stream,
/// then the task serves the socket. A plain function returning an `async
/// move` block rather than an `async fn`: the block uses the moved-in
/// socket in place, where an `async fn` would keep a second copy of it for
/// its `mut` binding, in every idle connection.
#[allow(clippy::manual_async_fn)]
fn serve<O>(
    mut socket: WebSocket,
    state: AppState,
    handle: Arc<SessionHandle>,
    opening: Pin<Box<O>>,
    held: (TaskTrackerToken, UserSlot),
) -> impl Future<Output = ()>
where
    O: Future<Output = Result<(), NoStream>>,
{
    async move {
        let shared = state.shared.clone();
        let id = handle.id;
        if opening.await.is_err() {
            metrics::closed(CloseReason::TryAgainLater.label());
            Box::pin(close(&mut socket, CloseReason::TryAgainLater)).await;
            return;
        }
        ::metrics::gauge!("parley_ws_connections").increment(1.0);
        // Token expiry and the drain close the connection through the handle,
        // from one task for all connections: no timers here.
        shared.live.insert(handle.clone());
        let connection = Connection {
            handle: handle.clone(),
            state,
        };

        let ending = loop {
            match std::future::poll_fn(|cx| next_event(&handle, &mut socket, cx)).await {
                Event::Close(reason) => break Ending::Close(reason),
                Event::Frames(batch) => {
                    // Boxed, like the other rare or busy paths below, so an idle
                    // connection's task stays small.
                    let mut write = Box::pin(write_batch(&mut socket, batch));
                    // A client that stops reading stalls the write; its filling
                    // queue then asks for a close, which must not wait for it.
                    let written = std::future::poll_fn(|cx| {
                        handle.register(cx.waker());
                        if let Some(reason) = handle.closing() {
                            return Poll::Ready(Err(reason));
                        }
                        write.as_mut().poll(cx).map(Ok)
                    })
                    .await;
                    match written {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break Ending::Error,
                        Err(reason) => break Ending::Close(reason),
                    }
                }
                Event::Received(message) => match message {
                    None | Some(Ok(Message::Close(_))) => break Ending::Client,
                    Some(Err(err)) => {
                        break if is_too_big(&err) {
                            Ending::Close(CloseReason::TooBig)
                        } else {
                            Ending::Error
                        };
                    }
                    Some(Ok(Message::Text(text))) => Box::pin(connection.on_text(&text)).await,
                    Some(Ok(Message::Binary(_))) => {
                        metrics::frame_received(FrameKind::Binary);
                        let error = FrameError::invalid(
                            "binary frames are not accepted; send JSON text frames",
                        );
                        handle.deliver(FrameKind::Error, error.to_frame());
                    }
                    // Pings are answered by the WebSocket layer.
                    Some(Ok(_)) => {}
                },
            }
        };

        handle.end();
        shared.live.remove(id);
        Box::pin(handle.close_upstream()).await;
        ::metrics::gauge!("parley_ws_connections").decrement(1.0);
        match ending {
            Ending::Client => metrics::closed("client"),
            Ending::Error => metrics::closed("error"),
            Ending::Close(reason) => {
                metrics::closed(reason.label());
                Box::pin(close(&mut socket, reason)).await;
            }
        }
        // The connection's place in the drain and in its user's count are
        // given back only now.
        drop(held);
    }
}

struct Connection {
    handle: Arc<SessionHandle>,
    state: AppState,
}

impl Connection {
    /// Handles one text frame.
    async fn on_text(&self, text: &Utf8Bytes) {
        let request = match frames::parse(text.as_str()) {
            Ok(request) => request,
            Err(error) => {
                metrics::frame_received(FrameKind::Invalid);
                self.handle.deliver(FrameKind::Error, error.to_frame());
                return;
            }
        };
        let Some(frame) = &request.frame else {
            return;
        };
        metrics::frame_received(FrameKind::of_request(frame));
        match frame {
            In::Ping(ping) => {
                self.handle
                    .deliver(FrameKind::Pong, frames::pong(&ping.nonce));
            }
            In::Refresh(refresh) => {
                let verified = self.state.shared.verifier.verify(&refresh.token);
                match verified {
                    Ok(claims) if *claims.sub == *self.handle.user_id => {
                        self.handle.extend(claims.exp);
                        self.handle
                            .set_grant(Grant::of(&Caller::from(claims.clone()), None));
                        self.handle
                            .deliver(FrameKind::Refreshed, frames::refreshed(claims.exp));
                        // Chat extends its session too, and a move reopens
                        // it with the new token.
                        self.forward(request).await;
                    }
                    Ok(_) => {
                        let error = FrameError {
                            code: Code::Unauthenticated,
                            ..FrameError::invalid("the new token belongs to another user")
                        };
                        self.handle.deliver(FrameKind::Error, error.to_frame());
                    }
                    Err(err) => {
                        let error = FrameError {
                            code: Code::Unauthenticated,
                            ..FrameError::invalid(err.to_string())
                        };
                        self.handle.deliver(FrameKind::Error, error.to_frame());
                    }
                }
            }
            other => {
                // A token narrowed to scopes is held to them here too, so a
                // refused frame never reaches chat.
                if let Some(scope) = chat_frame_scope(other)
                    && !self.handle.allows(scope)
                {
                    let (client_id, room_id) = other.echo();
                    let error = FrameError {
                        code: Code::PermissionDenied,
                        message: format!("this token's scopes do not include {scope}"),
                        client_id: client_id.to_owned(),
                        room_id: room_id.to_owned(),
                    };
                    self.handle.deliver(FrameKind::Error, error.to_frame());
                    return;
                }
                self.forward(request).await;
            }
        }
    }

    async fn forward(&self, request: ChatRequest) {
        self.handle.forward(request).await;
    }
}

/// Renews the token of a connection opened with an API key: a fresh token
/// for the key goes to chat as a `refresh` (the client sees `refreshed`).
/// A key auth refuses now ends the connection with 4001; an unreachable
/// auth is tried again at the next sweep, while the token lasts.
pub(crate) async fn renew(keys: KeyTokens, handle: Arc<SessionHandle>, key: Arc<str>) {
    match keys.token_for(&key).await {
        Ok((token, claims)) => {
            handle.set_grant(Grant::of(&Caller::from(claims.clone()), None));
            let refresh = ChatRequest {
                frame: Some(In::Refresh(parley_proto::chat::v1::Refresh {
                    token: token.to_string(),
                })),
            };
            handle.forward(refresh).await;
            handle.extend(claims.exp);
            // As for a client's own `refresh`: it learns the new expiry.
            handle.deliver(FrameKind::Refreshed, frames::refreshed(claims.exp));
        }
        Err(err) if matches!(err.code(), Code::Unauthenticated | Code::PermissionDenied) => {
            handle.close(CloseReason::TokenRevoked);
        }
        Err(err) => tracing::debug!(code = ?err.code(), "cannot renew an API key's token yet"),
    }
    handle.renewed();
}

/// Writes a batch of queued frames, then flushes once.
async fn write_batch(socket: &mut WebSocket, batch: VecDeque<Outgoing>) -> Result<(), axum::Error> {
    for frame in batch {
        metrics::frames_sent(frame.kind, 1);
        socket.feed(Message::Text(frame.text)).await?;
    }
    socket.flush().await
}

/// Sends the close frame and waits briefly for the client's answer, so the
/// frame is not lost to a reset; then the socket is dropped.
async fn close(socket: &mut WebSocket, reason: CloseReason) {
    let frame = Message::Close(Some(CloseFrame {
        code: reason.code(),
        reason: Utf8Bytes::from_static(reason.text()),
    }));
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        if socket.send(frame).await.is_ok() {
            while let Some(Ok(_)) = socket.recv().await {}
        }
    })
    .await;
}

fn is_too_big(err: &axum::Error) -> bool {
    use std::error::Error as _;
    let mut source: Option<&(dyn std::error::Error + 'static)> = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if text.contains("Space limit exceeded")
            || text.contains("too long")
            || text.contains("too big")
        {
            return true;
        }
        source = cause.source();
    }
    let text = err.to_string();
    text.contains("Space limit exceeded") || text.contains("too long") || text.contains("too big")
}

/// WebSocket connections per user on this gateway.
#[derive(Debug, Default)]
pub(crate) struct UserConnections {
    counts: Mutex<HashMap<Arc<str>, u32>>,
}

/// One of a user's connections; gives its place back when dropped.
#[derive(Debug)]
pub(crate) struct UserSlot {
    owner: Arc<UserConnections>,
    user_id: Arc<str>,
}

impl UserConnections {
    /// Takes one of `user_id`'s `max` places, if one is free.
    pub(crate) fn acquire(self: &Arc<Self>, user_id: &str, max: u32) -> Option<UserSlot> {
        let mut counts = self.lock();
        let user_id: Arc<str> = match counts.get_key_value(user_id) {
            Some((known, _)) => known.clone(),
            None => Arc::from(user_id),
        };
        let count = counts.entry(user_id.clone()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(UserSlot {
            owner: self.clone(),
            user_id,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, u32>> {
        // Counts are updated in one step, so a poisoned map is consistent.
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.lock();
        if let Some(count) = counts.get_mut(&self.user_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Opening = std::future::Ready<Result<(), NoStream>>;

    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(
            WebSocket,
            AppState,
            Arc<SessionHandle>,
            Pin<Box<Opening>>,
            (TaskTrackerToken, UserSlot),
        ) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every idle connection holds one of these: its size is most of what
    /// a connection costs the gateway, so it must not creep up unnoticed.
    /// (The opening is boxed, so its type does not change the size.)
    #[test]
    fn an_idle_connection_task_stays_small() {
        let size = future_size(serve::<Opening>);
        assert!(size <= 640, "the connection task grew to {size} bytes");
    }
}
