//! What a WebSocket connection and the chat stream carrying its session
//! share: the connection's bounded outgoing queue, the way to close it,
//! and where its frames go now.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Notify, mpsc};

use crate::{metrics::FrameKind, upstream::Command};

/// Identifies a session on its chat stream; unique within the gateway.
pub type SessionId = u64;

/// Why the gateway closes a WebSocket, with the close code clients act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// 1001: the gateway is draining.
    GoingAway,
    /// 1009: a frame or message over `GATEWAY_MAX_FRAME_BYTES`.
    TooBig,
    /// 1011: chat ended the session for a reason other than its token.
    ServerError,
    /// 1013: no chat replica could take the session.
    TryAgainLater,
    /// 4001: the access token expired without a `refresh`.
    TokenExpired,
    /// 4008: the client did not read fast enough.
    SlowConsumer,
}

impl CloseReason {
    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            Self::GoingAway => 1001,
            Self::TooBig => 1009,
            Self::ServerError => 1011,
            Self::TryAgainLater => 1013,
            Self::TokenExpired => 4001,
            Self::SlowConsumer => 4008,
        }
    }

    /// The close frame's reason text.
    pub fn text(self) -> &'static str {
        match self {
            Self::GoingAway => "server going away",
            Self::TooBig => "message too big",
            Self::ServerError => "chat ended the session",
            Self::TryAgainLater => "no chat replica available; try again later",
            Self::TokenExpired => "access token expired",
            Self::SlowConsumer => "too slow: reconnect and rejoin with since_seq",
        }
    }

    /// The `reason` label of `parley_ws_closed_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::GoingAway => "drain",
            Self::TooBig => "too_big",
            Self::ServerError => "chat_closed",
            Self::TryAgainLater => "unavailable",
            Self::TokenExpired => "token_expired",
            Self::SlowConsumer => "slow_consumer",
        }
    }
}

/// One frame on its way to a socket.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The frame's name, for `parley_ws_frames_sent_total`.
    pub kind: FrameKind,
    /// The JSON text, shared by every recipient of the same frame.
    pub text: Utf8Bytes,
}

/// The half of a connection that chat streams hold.
#[derive(Debug)]
pub struct SessionHandle {
    /// The session's id.
    pub id: SessionId,
    /// The connection's user, to skip their own typing and presence.
    pub user_id: Arc<str>,
    /// Frames waiting for the socket. A plain deque rather than a channel:
    /// it holds no memory while empty, which most connections are.
    outbox: Mutex<VecDeque<Outgoing>>,
    capacity: usize,
    /// Wakes the connection when frames arrive.
    ready: Notify,
    closing: OnceLock<CloseReason>,
    wake: Notify,
    /// The command queue of the stream carrying the session now; `None`
    /// while it moves between chat replicas.
    route: Mutex<Option<mpsc::Sender<Command>>>,
    ended: AtomicBool,
}

impl SessionHandle {
    /// A handle whose outgoing queue holds up to `capacity` frames.
    pub fn new(id: SessionId, user_id: Arc<str>, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            id,
            user_id,
            outbox: Mutex::new(VecDeque::new()),
            capacity,
            ready: Notify::new(),
            closing: OnceLock::new(),
            wake: Notify::new(),
            route: Mutex::new(None),
            ended: AtomicBool::new(false),
        })
    }

    /// Queues a frame; false when the queue is full.
    fn push(&self, kind: FrameKind, text: Utf8Bytes) -> bool {
        {
            let mut outbox = self.lock_outbox();
            if outbox.len() >= self.capacity {
                return false;
            }
            if self.has_ended() {
                return true;
            }
            outbox.push_back(Outgoing { kind, text });
        }
        self.ready.notify_one();
        true
    }

    /// Queues a frame that must arrive: a full queue makes the client a
    /// slow consumer.
    pub fn deliver(&self, kind: FrameKind, text: Utf8Bytes) {
        if !self.push(kind, text) {
            crate::metrics::queue_dropped("slow_consumer");
            self.close(CloseReason::SlowConsumer);
        }
    }

    /// Queues a frame that may be lost (typing, presence): a full queue
    /// drops it.
    pub fn offer(&self, kind: FrameKind, text: Utf8Bytes) {
        if !self.push(kind, text) {
            crate::metrics::queue_dropped(kind.name());
        }
    }

    /// Waits for queued frames and moves up to `max` of them into `batch`.
    /// Cancel-safe: frames are only taken when it returns.
    pub async fn next_frames(&self, batch: &mut Vec<Outgoing>, max: usize) {
        loop {
            {
                let mut outbox = self.lock_outbox();
                if !outbox.is_empty() {
                    let count = outbox.len().min(max);
                    batch.extend(outbox.drain(..count));
                    // A burst's memory goes back once it is written.
                    if outbox.is_empty() && outbox.capacity() > 64 {
                        outbox.shrink_to_fit();
                    }
                    return;
                }
            }
            self.ready.notified().await;
        }
    }

    /// Asks the connection to close; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        if self.closing.set(reason).is_ok() {
            self.wake.notify_one();
        }
    }

    /// The reason the connection was asked to close, if it was.
    pub fn closing(&self) -> Option<CloseReason> {
        self.closing.get().copied()
    }

    /// Resolves when a close was asked for (possibly before the call).
    pub async fn close_requested(&self) {
        if self.closing().is_some() {
            return;
        }
        self.wake.notified().await;
    }

    /// Where to send the session's frames now.
    pub fn route(&self) -> Option<mpsc::Sender<Command>> {
        self.lock_route().clone()
    }

    /// Records where the session lives now.
    pub fn set_route(&self, route: Option<mpsc::Sender<Command>>) {
        *self.lock_route() = route;
    }

    /// Marks the connection gone, so a moving session is not placed again,
    /// and drops what it had queued.
    pub fn end(&self) {
        self.ended.store(true, Ordering::Release);
        let dropped = std::mem::take(&mut *self.lock_outbox());
        drop(dropped);
    }

    /// Whether the connection is gone.
    pub fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    fn lock_outbox(&self) -> std::sync::MutexGuard<'_, VecDeque<Outgoing>> {
        // Frames are pushed and drained whole: a poisoned queue is intact.
        self.outbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_route(&self) -> std::sync::MutexGuard<'_, Option<mpsc::Sender<Command>>> {
        // The value is replaced whole, so a poisoned lock still holds a
        // consistent one.
        self.route
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
