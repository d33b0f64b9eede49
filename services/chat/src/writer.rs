//! Stores messages in batches.
//!
//! Sends are queued to a few writer lanes, a room always to the same lane,
//! so a room's messages are stored in the order they were queued (which is
//! the order each connection sent them). A lane takes everything queued
//! while its previous write ran and stores it at once (one statement on
//! Postgres, one transaction on SQLite; see [`ChatStore::write_batch`]), so
//! throughput grows with load instead of paying a commit per message. Only
//! after the commit is a message acknowledged, published and delivered.

use std::{
    hash::{BuildHasher as _, RandomState},
    sync::Arc,
    time::Instant,
};

use parley_proto::chat::v1::{Ack, ChatResponse, RoomEvent, chat_response::Frame};
use tokio::sync::{mpsc, oneshot};

use crate::{
    bus::Bus,
    domain::{NewMessage, StoredMessage},
    error::Error,
    hub::{Hub, message_frame},
    limiter::SendLimiter,
    link::{Link, SessionId},
    store::{ChatStore, WriteOutcome},
};

/// Most messages stored in one transaction.
const MAX_BATCH: usize = 512;

/// Where the outcome of a send goes.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A unary `SendMessage` waiting for the stored message.
    Unary(oneshot::Sender<Result<StoredMessage, Error>>),
    /// A session: an `ack` or an `error` frame on its link.
    Session {
        /// The session's link.
        link: Link,
        /// The session.
        session: SessionId,
    },
}

/// One send waiting to be stored.
#[derive(Debug)]
pub(crate) struct Submission {
    /// The message.
    pub(crate) message: NewMessage,
    /// Who hears back.
    pub(crate) reply: Reply,
    /// The send's span, parent of its storage and publish spans; disabled
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
    /// Starts `lanes` lanes, each queueing up to `capacity` sends.
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

    /// Queues a send without waiting.
    ///
    /// # Errors
    /// UNAVAILABLE when the lane is full (storage cannot keep up) or gone;
    /// the submission is handed back.
    pub(crate) fn submit(&self, submission: Submission) -> Result<(), Box<(Submission, Error)>> {
        let index = usize::try_from(
            self.hasher.hash_one(&*submission.message.room_id) % self.lanes.len() as u64,
        )
        .unwrap_or(0);
        self.lanes[index].try_send(submission).map_err(|err| {
            let error = Error::Unavailable(
                "the chat service is overloaded; retry the send with the same client_id".into(),
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
        while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let messages: Vec<&NewMessage> = batch.iter().map(|s| &s.message).collect();
            // Each traced send gets a span for the transaction that stores
            // it, however many others share that transaction.
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
                        self.finish(submission, outcome, stored_at);
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, messages = batch.len(), "storing messages failed");
                    let status = tonic::Status::from(err);
                    for submission in batch.drain(..) {
                        self.limiter.refund(&submission.message.sender_id);
                        reply_error(
                            submission,
                            Error::Unavailable(format!("message not stored: {}", status.message())),
                        );
                    }
                }
            }
        }
    }

    fn finish(&self, submission: Submission, outcome: WriteOutcome, stored_at: Instant) {
        match outcome {
            WriteOutcome::Stored(message) => {
                metrics::counter!("parley_chat_messages_stored_total").increment(1);
                self.bus.publish_traced(
                    &RoomEvent {
                        room_id: message.room_id.clone(),
                        response: Some(message_frame((*message).clone())),
                        except_user_id: String::new(),
                    },
                    &submission.span,
                );
                reply_stored(submission.reply, &message);
                self.hub.deliver(message, Some(stored_at));
            }
            WriteOutcome::Duplicate(message) => {
                self.limiter.refund(&submission.message.sender_id);
                reply_stored(submission.reply, &message);
            }
            WriteOutcome::NoRoom => {
                self.limiter.refund(&submission.message.sender_id);
                let room = submission.message.room_id.to_string();
                reply_error(submission, Error::RoomNotFound(room));
            }
        }
    }
}

fn reply_stored(reply: Reply, message: &StoredMessage) {
    match reply {
        Reply::Unary(sender) => {
            let _ = sender.send(Ok(message.clone()));
        }
        Reply::Session { link, session } => {
            link.send_to(
                session,
                ChatResponse {
                    frame: Some(Frame::Ack(Ack {
                        client_id: message.client_id.clone(),
                        message_id: message.id.clone(),
                        seq: message.seq,
                    })),
                },
            );
        }
    }
}

/// Answers a send that was not stored.
pub(crate) fn reply_error(submission: Submission, error: Error) {
    match submission.reply {
        Reply::Unary(sender) => {
            let _ = sender.send(Err(error));
        }
        Reply::Session { link, session } => {
            link.send_to(
                session,
                error.into_frame(&submission.message.client_id, &submission.message.room_id),
            );
        }
    }
}
