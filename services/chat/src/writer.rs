//! Stores timeline events in batches.
//!
//! Writes (messages, edits, deletions, reaction changes) are queued to a
//! few writer lanes, a room always to the same lane, so a room's events
//! are stored in the order they were queued (which is the order each
//! connection sent them). A lane takes everything queued while its
//! previous write ran, and while sends keep coming it waits a little longer
//! for more (see [`Linger`]), then stores the batch: each run of messages in one
//! statement on Postgres or one transaction on SQLite (see
//! [`ChatStore::write_batch`]), so throughput grows with load instead of
//! paying a commit per message; each other event in its own transaction
//! (see [`ChatStore::write_event`]), in queue order between the runs. Only
//! after the commit is an event acknowledged, published and delivered.

use std::{
    hash::{BuildHasher as _, RandomState},
    sync::Arc,
    time::{Duration, Instant},
};

use parley_proto::chat::v1::{Ack, ChatResponse, chat_response::Frame};
use tokio::sync::{mpsc, oneshot};

use crate::{
    bus::Bus,
    domain::NewMessage,
    error::Error,
    hub::Hub,
    limiter::SendLimiter,
    link::{Link, SessionId},
    store::{ChatStore, EventOutcome, WriteOutcome},
    timeline::{NewEvent, StoredEvent},
};

/// Most writes taken from a lane's queue at once.
const MAX_BATCH: usize = 512;

/// What a write made, as the one who asked hears it.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    /// The write's idempotency key.
    pub(crate) client_id: String,
    /// The message stored, or the one the event changed.
    pub(crate) message_id: String,
    /// The event's seq; for a reaction that changed nothing, the
    /// message's.
    pub(crate) seq: i64,
    /// The event members received (or, for a retry, the one they received
    /// the first time); `None` when nothing changed.
    pub(crate) event: Option<StoredEvent>,
}

/// Where the outcome of a write goes.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A unary call waiting for what was stored.
    Unary(oneshot::Sender<Result<Stored, Error>>),
    /// A session: an `ack` or an `error` frame on its link.
    Session {
        /// The session's link.
        link: Link,
        /// The session.
        session: SessionId,
    },
}

/// What to store.
#[derive(Debug)]
pub(crate) enum Write {
    /// A new message.
    Message(NewMessage),
    /// An edit, deletion or reaction change.
    Event(NewEvent),
}

impl Write {
    fn room_id(&self) -> &str {
        match self {
            Self::Message(message) => &message.room_id,
            Self::Event(event) => &event.room_id,
        }
    }

    /// Who writes: the sender or the actor, whose rate token it holds.
    pub(crate) fn actor(&self) -> &str {
        match self {
            Self::Message(message) => &message.sender_id,
            Self::Event(event) => &event.actor_id,
        }
    }

    fn client_id(&self) -> &str {
        match self {
            Self::Message(message) => &message.client_id,
            Self::Event(event) => &event.client_id,
        }
    }
}

/// One write waiting to be stored.
#[derive(Debug)]
pub(crate) struct Submission {
    /// What to store.
    pub(crate) write: Write,
    /// Who hears back.
    pub(crate) reply: Reply,
    /// The write's span, parent of its storage and publish spans; disabled
    /// when traces are not exported.
    pub(crate) span: tracing::Span,
}

/// How the writer lanes are laid out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lanes {
    /// How many.
    pub(crate) count: usize,
    /// Writes each queues before refusing more.
    pub(crate) capacity: usize,
    /// How long a lane waits for more writes once the first of a batch
    /// has arrived (`CHAT_WRITE_LINGER`).
    pub(crate) linger: Duration,
}

/// The writer lanes. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    lanes: Arc<[mpsc::Sender<Submission>]>,
    hasher: RandomState,
}

impl Writer {
    /// Starts the lanes.
    pub(crate) fn spawn(
        store: ChatStore,
        hub: Hub,
        bus: Bus,
        limiter: Arc<SendLimiter>,
        lanes: Lanes,
    ) -> Self {
        let senders = (0..lanes.count.max(1))
            .map(|_| {
                let (sender, receiver) = mpsc::channel(lanes.capacity);
                let lane = Lane {
                    store: store.clone(),
                    hub: hub.clone(),
                    bus: bus.clone(),
                    limiter: limiter.clone(),
                };
                let linger = Linger::new(lanes.linger);
                tokio::spawn(lane.run(receiver, linger));
                sender
            })
            .collect();
        Self {
            lanes: senders,
            hasher: RandomState::new(),
        }
    }

    /// Queues a write without waiting.
    ///
    /// # Errors
    /// UNAVAILABLE when the lane is full (storage cannot keep up) or gone;
    /// the submission is handed back.
    pub(crate) fn submit(&self, submission: Submission) -> Result<(), Box<(Submission, Error)>> {
        let index = usize::try_from(
            self.hasher.hash_one(submission.write.room_id()) % self.lanes.len() as u64,
        )
        .unwrap_or(0);
        self.lanes[index].try_send(submission).map_err(|err| {
            let error = Error::Unavailable(
                "the chat service is overloaded; retry with the same client_id".into(),
            );
            Box::new((err.into_inner(), error))
        })
    }
}

/// Group commit: once the first write of a batch has arrived, waits up to
/// `wait` for more to join it, since one commit of several messages costs
/// the database little more than a commit of one (BENCHMARKS.md, "Group
/// commit"). Returns early when the batch is full or the queue closed.
async fn gather(
    queue: &mut mpsc::Receiver<Submission>,
    batch: &mut Vec<Submission>,
    wait: Duration,
) {
    let deadline = tokio::time::Instant::now() + wait;
    while batch.len() < MAX_BATCH {
        let room = MAX_BATCH - batch.len();
        match tokio::time::timeout_at(deadline, queue.recv_many(batch, room)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Whether a lane lingers before storing a batch (`CHAT_WRITE_LINGER`).
///
/// Waiting pays only while writes keep coming: a lane lingers when its
/// previous batch began at most [`Linger::BUSY`] lingers ago. A lone
/// sender in a quiet replica is stored at once; at a steady rate every
/// batch waits, and gathers what arrives meanwhile.
#[derive(Debug)]
struct Linger {
    wait: Duration,
    previous: Option<Instant>,
}

impl Linger {
    /// How many lingers apart two batches may begin for the lane to count
    /// as busy.
    const BUSY: u32 = 4;

    fn new(wait: Duration) -> Self {
        Self {
            wait,
            previous: None,
        }
    }

    /// A batch begins at `now`: how long to wait for more, if at all.
    fn on_batch(&mut self, now: Instant) -> Option<Duration> {
        let previous = self.previous.replace(now);
        if self.wait.is_zero() {
            return None;
        }
        let since = now.saturating_duration_since(previous?);
        (since <= self.wait * Self::BUSY).then_some(self.wait)
    }
}

struct Lane {
    store: ChatStore,
    hub: Hub,
    bus: Bus,
    limiter: Arc<SendLimiter>,
}

impl Lane {
    async fn run(self, mut queue: mpsc::Receiver<Submission>, mut linger: Linger) {
        let mut batch: Vec<Submission> = Vec::with_capacity(MAX_BATCH);
        let mut messages: Vec<Submission> = Vec::with_capacity(MAX_BATCH);
        while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            if let Some(wait) = linger.on_batch(Instant::now()) {
                gather(&mut queue, &mut batch, wait).await;
            }
            metrics::histogram!("parley_chat_write_batch_size").record(batch.len() as f64);
            for submission in batch.drain(..) {
                if matches!(submission.write, Write::Message(_)) {
                    messages.push(submission);
                    continue;
                }
                // An event waits for the messages queued before it.
                if !messages.is_empty() {
                    self.store_messages(&mut messages).await;
                }
                self.store_event(submission).await;
            }
            if !messages.is_empty() {
                self.store_messages(&mut messages).await;
            }
        }
    }

    /// Stores a run of messages at once, and answers each.
    async fn store_messages(&self, batch: &mut Vec<Submission>) {
        let messages: Vec<&NewMessage> = batch
            .iter()
            .filter_map(|s| match &s.write {
                Write::Message(message) => Some(message),
                Write::Event(_) => None,
            })
            .collect();
        // Each traced send gets a span for the transaction that stores it,
        // however many others share that transaction.
        let size = batch.len();
        let store_spans: Vec<tracing::Span> = batch
            .iter()
            .filter(|s| !s.span.is_disabled())
            .map(|s| {
                tracing::info_span!(parent: &s.span, "chat.store", db.system = self.store.system(), db.batch_size = size)
            })
            .collect();
        let written = self.store.write_batch(&messages).await;
        drop(store_spans);
        match written {
            Ok(outcomes) => {
                let stored_at = Instant::now();
                for (submission, outcome) in batch.drain(..).zip(outcomes) {
                    self.finish_message(submission, outcome, stored_at);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, messages = batch.len(), "storing messages failed");
                let status = tonic::Status::from(err);
                for submission in batch.drain(..) {
                    let error =
                        Error::Unavailable(format!("message not stored: {}", status.message()));
                    self.fail(submission, error);
                }
            }
        }
    }

    fn finish_message(&self, submission: Submission, outcome: WriteOutcome, stored_at: Instant) {
        match outcome {
            WriteOutcome::Stored(event) => {
                metrics::counter!("parley_chat_messages_stored_total").increment(1);
                self.bus
                    .publish_traced(event.room_event(), &submission.span);
                reply_stored(submission, stored_message(&event));
                self.hub.deliver(event, Some(stored_at));
            }
            WriteOutcome::Duplicate(event) => {
                self.limiter.refund(submission.write.actor());
                reply_stored(submission, stored_message(&event));
            }
            WriteOutcome::NoRoom => {
                let room = submission.write.room_id().to_owned();
                self.fail(submission, Error::RoomNotFound(room));
            }
        }
    }

    /// Stores one edit, deletion or reaction change, and answers it.
    async fn store_event(&self, submission: Submission) {
        let Write::Event(event) = &submission.write else {
            return;
        };
        let span = if submission.span.is_disabled() {
            tracing::Span::none()
        } else {
            tracing::info_span!(parent: &submission.span, "chat.store", db.system = self.store.system(), db.batch_size = 1)
        };
        let written = self.store.write_event(event).await;
        drop(span);
        let client_id = event.client_id.clone();
        match written {
            Ok(EventOutcome::Stored { event, message_id }) => {
                metrics::counter!("parley_chat_events_stored_total").increment(1);
                self.bus
                    .publish_traced(event.room_event(), &submission.span);
                let seq = event.seq();
                reply_stored(
                    submission,
                    Stored {
                        client_id,
                        message_id,
                        seq,
                        event: Some(event.clone()),
                    },
                );
                self.hub.deliver(event, Some(Instant::now()));
            }
            Ok(EventOutcome::Duplicate { event, message_id }) => {
                self.limiter.refund(submission.write.actor());
                let seq = event.seq();
                reply_stored(
                    submission,
                    Stored {
                        client_id,
                        message_id,
                        seq,
                        event: Some(event),
                    },
                );
            }
            Ok(EventOutcome::Unchanged {
                target_seq,
                message_id,
            }) => {
                self.limiter.refund(submission.write.actor());
                reply_stored(
                    submission,
                    Stored {
                        client_id,
                        message_id,
                        seq: target_seq,
                        event: None,
                    },
                );
            }
            Err(err @ Error::Database(_)) => {
                tracing::warn!(error = %err, "storing an event failed");
                let status = tonic::Status::from(err);
                let error = Error::Unavailable(format!("not stored: {}", status.message()));
                self.fail(submission, error);
            }
            Err(err) => self.fail(submission, err),
        }
    }

    /// Answers a write that was not stored, giving its rate token back.
    fn fail(&self, submission: Submission, error: Error) {
        self.limiter.refund(submission.write.actor());
        reply_error(submission, error);
    }
}

/// What a stored (or retried) message answers.
fn stored_message(event: &StoredEvent) -> Stored {
    let (client_id, message_id) = event
        .as_message()
        .map(|m| (m.client_id.clone(), m.id.clone()))
        .unwrap_or_default();
    Stored {
        client_id,
        message_id,
        seq: event.seq(),
        event: Some(event.clone()),
    }
}

fn reply_stored(submission: Submission, stored: Stored) {
    let is_message = matches!(submission.write, Write::Message(_));
    match submission.reply {
        Reply::Unary(sender) => {
            let _ = sender.send(Ok(stored));
        }
        // A message is always acknowledged; another event when it asked
        // to be, with a client_id.
        Reply::Session { link, session } if is_message || !stored.client_id.is_empty() => {
            link.send_to(
                session,
                ChatResponse {
                    frame: Some(Frame::Ack(Ack {
                        client_id: stored.client_id,
                        message_id: stored.message_id,
                        seq: stored.seq,
                    })),
                },
            );
        }
        Reply::Session { .. } => {}
    }
}

/// Answers a write that was not stored.
pub(crate) fn reply_error(submission: Submission, error: Error) {
    match submission.reply {
        Reply::Unary(sender) => {
            let _ = sender.send(Err(error));
        }
        Reply::Session { link, session } => {
            link.send_to(
                session,
                error.into_frame(submission.write.client_id(), submission.write.room_id()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_quiet_lane_stores_at_once_and_a_busy_one_lingers() {
        let start = Instant::now();
        let mut linger = Linger::new(MS);
        // The first batch ever, and one long after it: nothing to wait for.
        assert_eq!(linger.on_batch(start), None);
        assert_eq!(linger.on_batch(start + 100 * MS), None);
        // Batches beginning within four lingers of each other: busy.
        assert_eq!(linger.on_batch(start + 102 * MS), Some(MS));
        assert_eq!(linger.on_batch(start + 106 * MS), Some(MS));
        // A pause longer than that: quiet again.
        assert_eq!(linger.on_batch(start + 111 * MS), None);
        assert_eq!(linger.on_batch(start + 112 * MS), Some(MS));
    }

    #[test]
    fn a_zero_linger_never_waits() {
        let start = Instant::now();
        let mut linger = Linger::new(Duration::ZERO);
        for step in 0..5 {
            assert_eq!(linger.on_batch(start + step * MS / 10), None);
        }
    }

    #[tokio::test]
    async fn gathering_takes_what_arrives_within_the_wait() {
        let (sender, mut queue) = mpsc::channel(16);
        let submission = |n: usize| Submission {
            write: Write::Message(NewMessage {
                room_id: crate::domain::RoomId::trusted("lobby"),
                sender_id: Arc::from("u1"),
                sender_name: Arc::from("ann"),
                content: "hi".to_owned(),
                client_id: format!("c{n}"),
                reply_to: 0,
                attachments: Vec::new(),
            }),
            reply: Reply::Unary(oneshot::channel().0),
            span: tracing::Span::none(),
        };
        let mut batch = vec![submission(0)];
        let late = sender.clone();
        tokio::spawn(async move {
            tokio::time::sleep(10 * MS).await;
            let _ = late.send(submission(1)).await;
        });
        let started = Instant::now();
        gather(&mut queue, &mut batch, 500 * MS).await;
        assert_eq!(
            batch.len(),
            2,
            "the write sent within the wait joins the batch"
        );
        assert!(
            started.elapsed() >= 500 * MS,
            "a batch that is not full waits the whole linger"
        );
        // A closed queue ends the wait at once.
        drop(sender);
        let started = Instant::now();
        gather(&mut queue, &mut batch, 60 * 1000 * MS).await;
        assert!(started.elapsed() < 30 * 1000 * MS);
    }
}
