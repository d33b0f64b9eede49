//! Stores timeline events in batches.
//!
//! Writes (messages, edits, deletions, reaction changes) are queued to a
//! few writer lanes, a room always to the same lane, so a room's events
//! are stored in the order they were queued (which is the order each
//! connection sent them). A lane takes everything queued while its
//! previous write ran and stores it at once: each run of messages in one
//! statement on Postgres or one transaction on SQLite (see
//! [`ChatStore::write_batch`]), so throughput grows with load instead of
//! paying a commit per message; each other event in its own transaction
//! (see [`ChatStore::write_event`]), in queue order between the runs. Only
//! after the commit is an event acknowledged, published and delivered.

use std::{
    hash::{BuildHasher as _, RandomState},
    sync::Arc,
    time::Instant,
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

/// The writer lanes. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    lanes: Arc<[mpsc::Sender<Submission>]>,
    hasher: RandomState,
}

impl Writer {
    /// Starts `lanes` lanes, each queueing up to `capacity` writes.
    pub(crate) fn spawn(
        store: ChatStore,
        hub: Hub,
        bus: Bus,
        limiter: Arc<SendLimiter>,
        lanes: usize,
        capacity: usize,
    ) -> Self {
        let senders = (0..lanes.max(1))
            .map(|_| {
                let (sender, receiver) = mpsc::channel(capacity);
                let lane = Lane {
                    store: store.clone(),
                    hub: hub.clone(),
                    bus: bus.clone(),
                    limiter: limiter.clone(),
                };
                tokio::spawn(lane.run(receiver));
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

struct Lane {
    store: ChatStore,
    hub: Hub,
    bus: Bus,
    limiter: Arc<SendLimiter>,
}

impl Lane {
    async fn run(self, mut queue: mpsc::Receiver<Submission>) {
        let mut batch: Vec<Submission> = Vec::with_capacity(MAX_BATCH);
        let mut messages: Vec<Submission> = Vec::with_capacity(MAX_BATCH);
        while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
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
