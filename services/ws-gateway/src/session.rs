//! What a WebSocket connection and the chat stream carrying its session
//! share: the connection's bounded outgoing queue, the way to close it,
//! and where its frames go now.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    task::Waker,
    time::Duration,
};

use axum::extract::ws::Utf8Bytes;
use futures_util::task::AtomicWaker;
use parley_runtime::CancellationToken;
use tokio::time::{Instant, MissedTickBehavior};

use parley_runtime::{
    revocations::{Revoked, TokenFacts},
    token::{Caller, Scope},
};
use tokio::sync::broadcast;

use crate::{metrics::FrameKind, upstream::Route};

/// Identifies a session on its chat stream; unique within the gateway.
pub(crate) type SessionId = u64;

/// Why the gateway closes a WebSocket, with the close code clients act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
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
    /// 4001: the access token was revoked (its user suspended or deleted,
    /// its login logged out, its API key revoked).
    TokenRevoked,
    /// 4008: the client did not read fast enough.
    SlowConsumer,
}

impl CloseReason {
    /// The WebSocket close code.
    pub(crate) fn code(self) -> u16 {
        match self {
            Self::GoingAway => 1001,
            Self::TooBig => 1009,
            Self::ServerError => 1011,
            Self::TryAgainLater => 1013,
            Self::TokenExpired | Self::TokenRevoked => 4001,
            Self::SlowConsumer => 4008,
        }
    }

    /// The close frame's reason text.
    pub(crate) fn text(self) -> &'static str {
        match self {
            Self::GoingAway => "server going away",
            Self::TooBig => "message too big",
            Self::ServerError => "chat ended the session",
            Self::TryAgainLater => "no chat replica available; try again later",
            Self::TokenExpired => "access token expired",
            Self::TokenRevoked => "access token revoked",
            Self::SlowConsumer => "too slow: reconnect and rejoin with since_seq",
        }
    }

    /// The `reason` label of `parley_ws_closed_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::GoingAway => "drain",
            Self::TooBig => "too_big",
            Self::ServerError => "chat_closed",
            Self::TryAgainLater => "unavailable",
            Self::TokenExpired => "token_expired",
            Self::TokenRevoked => "token_revoked",
            Self::SlowConsumer => "slow_consumer",
        }
    }
}

/// One frame on its way to a socket.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    /// The frame's name, for `parley_ws_frames_sent_total`.
    pub kind: FrameKind,
    /// The JSON text, shared by every recipient of the same frame.
    pub text: Utf8Bytes,
}

/// The half of a connection that chat streams hold.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    /// The session's id.
    pub id: SessionId,
    /// The connection's user, to skip their own typing and presence.
    pub user_id: Arc<str>,
    /// Frames waiting for the socket. A plain deque rather than a channel:
    /// it holds no memory while empty, which most connections are.
    outbox: Mutex<VecDeque<Outgoing>>,
    capacity: usize,
    /// Wakes the connection's task when frames arrive or a close is asked
    /// for. The task polls the handle directly instead of holding a
    /// waiting future for each, which keeps an idle connection small.
    waker: AtomicWaker,
    closing: OnceLock<CloseReason>,
    /// The command queue of the stream carrying the session now; `None`
    /// while it moves between chat replicas.
    route: Mutex<Option<Route>>,
    ended: AtomicBool,
    /// When the access token runs out (Unix seconds); a `refresh` moves it.
    expires_at: AtomicI64,
    /// What the token grants and what revokes it; a `refresh` replaces it.
    grant: Mutex<Grant>,
}

/// What a connection's token grants, and what would revoke it (README,
/// "Bots and API keys").
#[derive(Debug, Clone, Default)]
pub(crate) struct Grant {
    /// `iat`, seconds.
    pub issued_at: i64,
    /// The login's refresh-token family.
    pub family: Option<Arc<str>>,
    /// The API key the token came from.
    pub key_id: Option<Arc<str>>,
    /// What the token may do; `None`: everything.
    pub scopes: Option<Arc<[Scope]>>,
    /// The API key the connection was opened with: the gateway renews the
    /// token itself before it runs out.
    pub api_key: Option<Arc<str>>,
    /// A renewal is under way.
    pub renewing: bool,
}

impl Grant {
    /// The grant of `caller`'s token; `api_key` when the client gave one.
    pub(crate) fn of(caller: &Caller, api_key: Option<Arc<str>>) -> Self {
        Self {
            issued_at: caller.issued_at,
            family: caller.family.as_deref().map(Arc::from),
            key_id: caller.key_id.as_deref().map(Arc::from),
            scopes: caller.scopes.as_deref().map(Arc::from),
            api_key,
            renewing: false,
        }
    }
}

impl SessionHandle {
    /// A handle whose outgoing queue holds up to `capacity` frames.
    pub(crate) fn new(
        id: SessionId,
        user_id: Arc<str>,
        capacity: usize,
        expires_at: i64,
        grant: Grant,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            user_id,
            outbox: Mutex::new(VecDeque::new()),
            capacity,
            waker: AtomicWaker::new(),
            closing: OnceLock::new(),
            route: Mutex::new(None),
            ended: AtomicBool::new(false),
            expires_at: AtomicI64::new(expires_at),
            grant: Mutex::new(grant),
        })
    }

    /// Replaces the grant after a `refresh`, keeping the API key.
    pub(crate) fn set_grant(&self, grant: Grant) {
        let mut current = self.lock_grant();
        let api_key = current.api_key.take();
        *current = Grant { api_key, ..grant };
    }

    /// Whether the token allows `scope`.
    pub(crate) fn allows(&self, scope: Scope) -> bool {
        self.lock_grant()
            .scopes
            .as_ref()
            .is_none_or(|scopes| scopes.contains(&scope))
    }

    /// Whether `revoked` names the session's token.
    fn revoked_by(&self, revoked: &Revoked) -> bool {
        let grant = self.lock_grant();
        revoked.covers(&TokenFacts {
            user_id: &self.user_id,
            issued_at: grant.issued_at,
            family: grant.family.as_deref(),
            key_id: grant.key_id.as_deref(),
        })
    }

    /// The API key to renew the token with, when a third of the token's
    /// life is left and no renewal runs; marks one as running. The key
    /// cache hands out only tokens with more than half their life left, so
    /// a renewal always brings a newer token.
    fn due_for_renewal(&self, now_ms: i64) -> Option<Arc<str>> {
        let mut grant = self.lock_grant();
        let expires_at = self.expires_at().saturating_mul(1000);
        let lifetime = expires_at - grant.issued_at.saturating_mul(1000);
        let due = expires_at - now_ms < lifetime / 3;
        if !due || grant.renewing {
            return None;
        }
        let key = grant.api_key.clone()?;
        grant.renewing = true;
        Some(key)
    }

    /// A renewal ended.
    pub(crate) fn renewed(&self) {
        self.lock_grant().renewing = false;
    }

    fn lock_grant(&self) -> std::sync::MutexGuard<'_, Grant> {
        // Replaced whole: a poisoned lock still holds a consistent grant.
        self.grant
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// When the session's access token runs out (Unix seconds).
    pub(crate) fn expires_at(&self) -> i64 {
        self.expires_at.load(Ordering::Relaxed)
    }

    /// Records the expiry of a token the client refreshed to.
    pub(crate) fn extend(&self, expires_at: i64) {
        self.expires_at.store(expires_at, Ordering::Relaxed);
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
        self.waker.wake();
        true
    }

    /// Queues a frame that must arrive: a full queue makes the client a
    /// slow consumer.
    pub(crate) fn deliver(&self, kind: FrameKind, text: Utf8Bytes) {
        if !self.push(kind, text) {
            crate::metrics::queue_dropped("slow_consumer");
            self.close(CloseReason::SlowConsumer);
        }
    }

    /// Queues a frame that may be lost (typing, presence): a full queue
    /// drops it.
    pub(crate) fn offer(&self, kind: FrameKind, text: Utf8Bytes) {
        if !self.push(kind, text) {
            crate::metrics::queue_dropped(kind.name());
        }
    }

    /// Makes `waker` the one woken by new frames and close requests. Call
    /// it before checking [`Self::closing`] and [`Self::take_frames`], so
    /// nothing that arrives in between is missed.
    pub(crate) fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// Takes up to `max` queued frames, if there are any.
    ///
    /// Usually the whole queue is taken, allocation and all, so an idle
    /// connection keeps no queue memory once its frames are written.
    pub(crate) fn take_frames(&self, max: usize) -> Option<VecDeque<Outgoing>> {
        let mut outbox = self.lock_outbox();
        if outbox.is_empty() {
            None
        } else if outbox.len() > max {
            Some(outbox.drain(..max).collect())
        } else {
            Some(std::mem::take(&mut *outbox))
        }
    }

    /// Asks the connection to close; the first reason wins.
    pub(crate) fn close(&self, reason: CloseReason) {
        if self.closing.set(reason).is_ok() {
            self.waker.wake();
        }
    }

    /// The reason the connection was asked to close, if it was.
    pub(crate) fn closing(&self) -> Option<CloseReason> {
        self.closing.get().copied()
    }

    /// Where to send the session's frames now.
    pub(crate) fn route(&self) -> Option<Route> {
        self.lock_route().clone()
    }

    /// Records where the session lives now.
    pub(crate) fn set_route(&self, route: Option<Route>) {
        *self.lock_route() = route;
    }

    /// Marks the connection gone, so a moving session is not placed again,
    /// and drops what it had queued.
    pub(crate) fn end(&self) {
        self.ended.store(true, Ordering::Release);
        let dropped = std::mem::take(&mut *self.lock_outbox());
        drop(dropped);
    }

    /// Whether the connection is gone.
    pub(crate) fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    fn lock_outbox(&self) -> std::sync::MutexGuard<'_, VecDeque<Outgoing>> {
        // Frames are pushed and drained whole: a poisoned queue is intact.
        self.outbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_route(&self) -> std::sync::MutexGuard<'_, Option<Route>> {
        // The value is replaced whole, so a poisoned lock still holds a
        // consistent one.
        self.route
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Every open connection, so that one task can do what would otherwise take
/// two timers in each connection: closing sessions whose token ran out, and
/// spreading the drain's closes. An idle connection is cheaper for it.
#[derive(Debug, Default)]
pub(crate) struct LiveSessions {
    sessions: Mutex<HashMap<SessionId, Arc<SessionHandle>>>,
}

/// How often expiries and drain deadlines are checked.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

impl LiveSessions {
    /// Starts watching a connection.
    pub(crate) fn insert(&self, handle: Arc<SessionHandle>) {
        self.lock().insert(handle.id, handle);
    }

    /// Stops watching a connection that ended.
    pub(crate) fn remove(&self, id: SessionId) {
        self.lock().remove(&id);
    }

    /// Watches the sessions until `stop` fires. A session is closed with
    /// 4001 once its token has expired, or at once when a revocation names
    /// it; one opened with an API key has its token renewed by `renew`
    /// before it runs out. Once `drain` fires, each session is closed with
    /// 1001 at its own random point within `spread`, so clients do not all
    /// reconnect at once; sessions that open during the drain get a point
    /// too.
    pub(crate) async fn supervise(
        self: Arc<Self>,
        drain: CancellationToken,
        spread: Duration,
        stop: CancellationToken,
        mut revocations: broadcast::Receiver<Revoked>,
        renew: impl Fn(Arc<SessionHandle>, Arc<str>),
    ) {
        let mut ticks = tokio::time::interval(SWEEP_EVERY);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut drain_started: Option<Instant> = None;
        let mut drain_deadlines: HashMap<SessionId, Instant> = HashMap::new();
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = drain.cancelled(), if drain_started.is_none() => {
                    drain_started = Some(Instant::now());
                }
                revoked = revocations.recv() => {
                    match revoked {
                        Ok(revoked) => {
                            for handle in self.lock().values() {
                                if handle.revoked_by(&revoked) {
                                    handle.close(CloseReason::TokenRevoked);
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "missed revocations; their sessions close when their tokens expire");
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            revocations = broadcast::channel(1).1;
                        }
                    }
                    continue;
                }
                _ = ticks.tick() => {}
            }
            let now = Instant::now();
            let now_ms = parley_runtime::storage::now_millis();
            let sessions = self.lock();
            for (id, handle) in sessions.iter() {
                if handle.expires_at().saturating_mul(1000) <= now_ms {
                    handle.close(CloseReason::TokenExpired);
                } else if let Some(key) = handle.due_for_renewal(now_ms) {
                    renew(handle.clone(), key);
                } else if let Some(started) = drain_started {
                    let deadline = *drain_deadlines
                        .entry(*id)
                        .or_insert_with(|| started + spread.mul_f64(random_fraction()));
                    if deadline <= now {
                        handle.close(CloseReason::GoingAway);
                    }
                }
            }
            drain_deadlines.retain(|id, _| sessions.contains_key(id));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Arc<SessionHandle>>> {
        // Entries are inserted and removed whole: a poisoned map is intact.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A fraction in [0, 1), evenly spread.
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    // 53 random bits make an evenly spread fraction in [0, 1).
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}
