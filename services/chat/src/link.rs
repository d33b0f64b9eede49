//! A link is the sending half of one server stream: a `Chat` stream (one
//! session) or a gateway stream (many sessions). Everything a replica sends
//! goes through a link's bounded queue, so memory stays bounded whatever
//! the reader does: a reader that lets the queue fill is cut off with
//! RESOURCE_EXHAUSTED (it resumes by rejoining with `since_seq`), and never
//! slows down the other links of a room.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use futures_util::Stream;
use parley_proto::chat::v1::{ChatResponse, RoomEvent};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;

/// Identifies a client session within its link.
pub(crate) type SessionId = u64;

/// What a link carries to its stream. A session frame is kept inline
/// rather than boxed: acks go this way, one per message, and a box would
/// cost each an allocation; the queue is per stream, not per session.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Outbound {
    /// A room event, built once per replica and shared by every link.
    Room(Arc<RoomEvent>),
    /// A frame for one session.
    Session(SessionId, ChatResponse),
    /// Chat ends a session (its token expired, for instance).
    Close(SessionId, Status),
}

/// What the hub tells a stream's actor about its sessions: their standing
/// in a room changed (a `member_update` event), or the room is gone. The
/// actor owns the sessions' memberships, so only it can end them.
#[derive(Debug, Clone)]
pub(crate) enum Control {
    /// A moderator acted on `user_id` in the room.
    Member {
        /// The room.
        room_id: String,
        /// The member.
        user_id: String,
        /// What was done.
        action: crate::moderation::Action,
        /// When a ban or mute ends.
        until: crate::moderation::Until,
    },
    /// The room was deleted: every session leaves it.
    RoomGone {
        /// The room.
        room_id: String,
    },
}

/// Controls queued per stream before the stream is cut as a slow consumer.
const CONTROL_QUEUE: usize = 1024;

/// Whether a dropped item is worth cutting the link over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Importance {
    /// Messages, acks, answers: never dropped silently; a full queue cuts
    /// the link.
    Essential,
    /// Typing and presence: dropped when the queue is full.
    Droppable,
}

/// The sending half of a stream. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    inner: Arc<LinkInner>,
}

#[derive(Debug)]
struct LinkInner {
    id: u64,
    queue: mpsc::Sender<Outbound>,
    control: mpsc::Sender<Control>,
    cut: CancellationToken,
    /// A `Chat` stream's user: room events addressed away from them
    /// (typing, presence about themselves) are skipped before queueing.
    /// `None` for gateway links, whose gateway filters per session.
    user_id: Option<Arc<str>>,
    kind: &'static str,
}

static NEXT_LINK_ID: AtomicU64 = AtomicU64::new(1);

impl Link {
    /// A link with a queue of `capacity` items, the stream that drains it,
    /// and the controls for its actor. `user_id` is set for
    /// single-session links.
    pub(crate) fn new(
        capacity: usize,
        user_id: Option<Arc<str>>,
        kind: &'static str,
    ) -> (
        Self,
        mpsc::Receiver<Outbound>,
        CancellationToken,
        mpsc::Receiver<Control>,
    ) {
        let (queue, receiver) = mpsc::channel(capacity);
        let (control, controls) = mpsc::channel(CONTROL_QUEUE);
        let cut = CancellationToken::new();
        let link = Self {
            inner: Arc::new(LinkInner {
                id: NEXT_LINK_ID.fetch_add(1, Ordering::Relaxed),
                queue,
                control,
                cut: cut.clone(),
                user_id,
                kind,
            }),
        };
        (link, receiver, cut, controls)
    }

    /// Tells the stream's actor about its sessions; a stream that lets its
    /// controls pile up is cut (its sessions rejoin, and joins check bans).
    pub(crate) fn control(&self, control: Control) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.inner.control.try_send(control) {
            self.cut_slow_consumer();
        }
    }

    /// Unique within the process.
    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    /// Whether the stream is gone (reader dropped or link cut).
    #[cfg(test)]
    pub(crate) fn is_closed(&self) -> bool {
        self.inner.queue.is_closed() || self.inner.cut.is_cancelled()
    }

    /// Resolves when the stream's reader has gone away or the link was
    /// cut.
    pub(crate) async fn closed(&self) {
        tokio::select! {
            () = self.inner.queue.closed() => {}
            () = self.inner.cut.cancelled() => {}
        }
    }

    /// Whether this link's single user is `user_id`.
    pub(crate) fn belongs_to(&self, user_id: &str) -> bool {
        self.inner.user_id.as_deref() == Some(user_id)
    }

    /// Queues `item` without waiting. Returns whether it was queued; an
    /// essential item that does not fit cuts the link.
    pub(crate) fn push(&self, item: Outbound, importance: Importance) -> bool {
        match self.inner.queue.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(_)) => {
                match importance {
                    Importance::Droppable => {
                        metrics::counter!("parley_chat_stream_dropped_total", "reason" => "queue_full")
                            .increment(1);
                    }
                    Importance::Essential => self.cut_slow_consumer(),
                }
                false
            }
        }
    }

    /// Queues a frame for one session: essential.
    pub(crate) fn send_to(&self, session: SessionId, response: ChatResponse) -> bool {
        self.push(Outbound::Session(session, response), Importance::Essential)
    }

    /// Queues a room event, unless it is addressed away from this link's
    /// single user.
    pub(crate) fn send_room_event(&self, event: &Arc<RoomEvent>, importance: Importance) -> bool {
        if !event.except_user_id.is_empty() && self.belongs_to(&event.except_user_id) {
            return false;
        }
        self.push(Outbound::Room(Arc::clone(event)), importance)
    }

    fn cut_slow_consumer(&self) {
        if !self.inner.cut.is_cancelled() {
            tracing::warn!(
                link = self.inner.id,
                kind = self.inner.kind,
                "stream cannot keep up; cutting it"
            );
            metrics::counter!("parley_chat_slow_consumer_disconnects_total", "stream" => self.inner.kind)
                .increment(1);
            self.inner.cut.cancel();
        }
    }
}

/// The status a cut stream ends with.
pub(crate) fn slow_consumer_status() -> Status {
    Status::resource_exhausted(
        "slow consumer: the stream's queue is full; reconnect and rejoin with since_seq",
    )
}

/// Turns a link's queue into a response stream, converting each item with
/// `convert` (which returns `None` to skip an item, or an error to end the
/// stream). A cut link ends the stream with RESOURCE_EXHAUSTED at once,
/// dropping whatever was queued.
pub(crate) struct OutboundStream<T> {
    receiver: mpsc::Receiver<Outbound>,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    convert: fn(Outbound) -> Option<Result<T, Status>>,
    finished: bool,
}

impl<T> std::fmt::Debug for OutboundStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundStream")
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl<T> OutboundStream<T> {
    /// The stream of `receiver`, ended early by `cut`.
    pub(crate) fn new(
        receiver: mpsc::Receiver<Outbound>,
        cut: CancellationToken,
        convert: fn(Outbound) -> Option<Result<T, Status>>,
    ) -> Self {
        Self {
            receiver,
            cut: Box::pin(cut.cancelled_owned()),
            convert,
            finished: false,
        }
    }
}

impl<T> Stream for OutboundStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        if self.cut.as_mut().poll(cx).is_ready() {
            self.finished = true;
            self.receiver.close();
            return Poll::Ready(Some(Err(slow_consumer_status())));
        }
        loop {
            match self.receiver.poll_recv(cx) {
                Poll::Ready(Some(item)) => match (self.convert)(item) {
                    Some(Ok(value)) => return Poll::Ready(Some(Ok(value))),
                    Some(Err(status)) => {
                        self.finished = true;
                        self.receiver.close();
                        return Poll::Ready(Some(Err(status)));
                    }
                    None => {}
                },
                Poll::Ready(None) => {
                    self.finished = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T> Drop for OutboundStream<T> {
    fn drop(&mut self) {
        // Wakes the session task through `Link::closed`.
        self.receiver.close();
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;

    use super::*;

    fn pong() -> ChatResponse {
        ChatResponse {
            frame: Some(parley_proto::chat::v1::chat_response::Frame::Pong(
                parley_proto::chat::v1::Pong { nonce: "n".into() },
            )),
        }
    }

    fn keep(item: Outbound) -> Option<Result<ChatResponse, Status>> {
        match item {
            Outbound::Session(_, response) => Some(Ok(response)),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_droppable_items_and_cuts_on_essential_ones() {
        let (link, receiver, cut, _controls) = Link::new(2, None, "test");
        let mut stream = OutboundStream::new(receiver, cut, keep);
        assert!(link.send_to(1, pong()));
        assert!(link.send_to(1, pong()));
        assert!(!link.push(Outbound::Session(1, pong()), Importance::Droppable));
        assert!(!link.is_closed(), "dropping typing does not cut");
        assert!(!link.send_to(1, pong()));
        assert!(link.is_closed(), "an essential item that does not fit cuts");
        let ended = stream.next().await.expect("an item");
        assert_eq!(ended.unwrap_err().code(), tonic::Code::ResourceExhausted);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn dropping_the_stream_closes_the_link() {
        let (link, receiver, cut, _controls) = Link::new(2, None, "test");
        drop(OutboundStream::new(receiver, cut, keep));
        link.closed().await;
        assert!(!link.send_to(1, pong()));
    }
}
