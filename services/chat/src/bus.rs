//! Fan-out between replicas.
//!
//! Two implementations behind one type: in-process (a single replica: its
//! own deliveries are all there is) and Redis pub/sub, one channel per
//! room. Publishing never waits: events go to an outbox that a task pipelines
//! to Redis, keeping them (in order) through a reconnect. Subscribing goes
//! through one subscriber connection per replica, which holds exactly the
//! rooms that have local members; after every (re)connect the hub is told to
//! heal, so whatever was published meanwhile is backfilled from storage by
//! `seq`.

use std::{collections::HashSet, time::Duration};

use bytes::{BufMut as _, Bytes, BytesMut};
use futures_util::StreamExt as _;
use parley_proto::chat::v1::RoomEvent;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{domain::RoomId, hub::Hub};

/// Prefix of every room channel.
pub const CHANNEL_PREFIX: &str = "parley:chat:room:";
/// Events waiting to be published before new ones are dropped (storage
/// and the gap check still deliver dropped messages).
const OUTBOX_CAPACITY: usize = 65_536;
/// Events per pipelined publish.
const PUBLISH_BATCH: usize = 512;
/// Channels per SUBSCRIBE command when resubscribing.
const SUBSCRIBE_BATCH: usize = 500;

/// A replica's id on the bus, so it can skip its own events.
pub type Origin = [u8; 16];

/// The bus of one replica. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Bus {
    /// One process: nothing to send anywhere.
    Local,
    /// Redis pub/sub.
    Redis(RedisBus),
}

/// The handle of the Redis bus.
#[derive(Debug, Clone)]
pub struct RedisBus {
    origin: Origin,
    outbox: mpsc::Sender<Outgoing>,
    subscriptions: mpsc::UnboundedSender<Subscription>,
}

#[derive(Debug)]
enum Subscription {
    Add(RoomId),
    Remove(RoomId),
}

/// The tasks behind a [`RedisBus`], started once the hub exists.
#[derive(Debug)]
pub struct RedisBusTasks {
    client: redis::Client,
    origin: Origin,
    outbox: mpsc::Receiver<Outgoing>,
    subscriptions: mpsc::UnboundedReceiver<Subscription>,
}

impl Bus {
    /// A Redis bus for `url`, and the tasks to start with
    /// [`RedisBusTasks::spawn`].
    ///
    /// # Errors
    /// When the URL is unusable.
    pub fn redis(url: &str, origin: Origin) -> anyhow::Result<(Self, RedisBusTasks)> {
        let client = redis::Client::open(url)
            .map_err(|err| anyhow::anyhow!("CHAT_REDIS_URL is unusable: {err}"))?;
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
        let (subscriptions, subscriptions_rx) = mpsc::unbounded_channel();
        Ok((
            Self::Redis(RedisBus {
                origin,
                outbox,
                subscriptions,
            }),
            RedisBusTasks {
                client,
                origin,
                outbox: outbox_rx,
                subscriptions: subscriptions_rx,
            },
        ))
    }

    /// Sends `event` to the other replicas with members in its room.
    pub fn publish(&self, event: &RoomEvent) {
        self.publish_traced(event, &tracing::Span::none());
    }

    /// [`publish`](Self::publish), traced as a child of `parent` (when it
    /// is enabled) until Redis has taken the event.
    pub fn publish_traced(&self, event: &RoomEvent, parent: &tracing::Span) {
        let Self::Redis(bus) = self else { return };
        let span = if parent.is_disabled() {
            tracing::Span::none()
        } else {
            tracing::info_span!(parent: parent, "redis.publish", otel.kind = "producer", db.system = "redis")
        };
        let mut payload = BytesMut::with_capacity(16 + event.encoded_len());
        payload.put_slice(&bus.origin);
        // Encoding into a buffer sized for it cannot fail.
        let _ = event.encode(&mut payload);
        if bus
            .outbox
            .try_send((RoomId::from(event.room_id.as_str()), payload.freeze(), span))
            .is_err()
        {
            metrics::counter!("parley_chat_bus_dropped_total").increment(1);
        }
    }

    /// Starts receiving the room's events.
    pub fn subscribe(&self, room_id: RoomId) {
        if let Self::Redis(bus) = self {
            let _ = bus.subscriptions.send(Subscription::Add(room_id));
        }
    }

    /// Stops receiving the room's events.
    pub fn unsubscribe(&self, room_id: RoomId) {
        if let Self::Redis(bus) = self {
            let _ = bus.subscriptions.send(Subscription::Remove(room_id));
        }
    }
}

/// Splits a bus payload into its origin and event.
pub fn decode(payload: &[u8]) -> Option<(Origin, RoomEvent)> {
    let origin: Origin = payload.get(..16)?.try_into().ok()?;
    let event = RoomEvent::decode(payload.get(16..)?).ok()?;
    Some((origin, event))
}

/// An event waiting to be published, with its span (ended once Redis has
/// taken it).
type Outgoing = (RoomId, Bytes, tracing::Span);

fn channel(room_id: &str) -> String {
    format!("{CHANNEL_PREFIX}{room_id}")
}

impl RedisBusTasks {
    /// Starts the publisher and the subscriber, until `shutdown`.
    pub fn spawn(self, hub: Hub, shutdown: CancellationToken) {
        let Self {
            client,
            origin,
            outbox,
            subscriptions,
        } = self;
        tokio::spawn(publish(client.clone(), outbox, shutdown.clone()));
        tokio::spawn(subscribe(client, origin, subscriptions, hub, shutdown));
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100 * u64::from(failures.clamp(1, 20)))
}

/// Pipelines the outbox to Redis, in order; a failed batch is retried
/// after a reconnect rather than dropped.
async fn publish(
    client: redis::Client,
    mut outbox: mpsc::Receiver<Outgoing>,
    shutdown: CancellationToken,
) {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1);
    let mut connection = match redis::aio::ConnectionManager::new_lazy_with_config(client, config) {
        Ok(connection) => connection,
        Err(err) => {
            tracing::error!(error = %err, "cannot create the Redis publisher; events stay local");
            return;
        }
    };
    let mut batch: Vec<Outgoing> = Vec::with_capacity(PUBLISH_BATCH);
    let mut failures = 0u32;
    loop {
        if batch.is_empty() {
            tokio::select! {
                received = outbox.recv_many(&mut batch, PUBLISH_BATCH) => {
                    if received == 0 { return; }
                }
                () = shutdown.cancelled() => return,
            }
        }
        let mut pipeline = redis::pipe();
        for (room_id, payload, _) in &batch {
            pipeline
                .publish(channel(room_id), payload.as_ref())
                .ignore();
        }
        match pipeline.query_async::<()>(&mut connection).await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!("Redis publisher reconnected");
                }
                failures = 0;
                batch.clear();
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                if failures == 1 {
                    tracing::warn!(error = %err, "cannot publish to Redis; retrying");
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff(failures)) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// Holds the subscriber connection: (re)connects, subscribes the rooms
/// with local members, and hands every event to the hub.
async fn subscribe(
    client: redis::Client,
    origin: Origin,
    mut changes: mpsc::UnboundedReceiver<Subscription>,
    hub: Hub,
    shutdown: CancellationToken,
) {
    let mut wanted: HashSet<RoomId> = HashSet::new();
    let mut failures = 0u32;
    let mut ever_connected = false;
    metrics::gauge!("parley_chat_bus_connected").set(0.0);
    loop {
        let connected = tokio::select! {
            connected = connect(&client, &wanted) => connected,
            () = shutdown.cancelled() => return,
        };
        let (mut sink, mut messages) = match connected {
            Ok(parts) => parts,
            Err(err) => {
                failures = failures.saturating_add(1);
                if failures == 1 {
                    tracing::warn!(error = %err, "cannot subscribe to Redis; serving local members and retrying");
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff(failures)) => {}
                    () = shutdown.cancelled() => return,
                }
                continue;
            }
        };
        if ever_connected {
            metrics::counter!("parley_chat_bus_reconnects_total").increment(1);
            tracing::info!(rooms = wanted.len(), "Redis subscriber reconnected");
        }
        ever_connected = true;
        failures = 0;
        metrics::gauge!("parley_chat_bus_connected").set(1.0);
        // Whatever was published while we were away comes from storage.
        hub.heal_all();

        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let payload = message.get_payload_bytes();
                    // This replica's own events were delivered here when
                    // they were stored: skipped before they are decoded.
                    if payload.starts_with(&origin) {
                        continue;
                    }
                    if let Some((_, event)) = decode(payload) {
                        hub.on_bus_event(event);
                    } else {
                        tracing::warn!(channel = message.get_channel_name(), "skipping a malformed bus event");
                    }
                }
                change = changes.recv() => {
                    let Some(change) = change else { return };
                    let result = match change {
                        Subscription::Add(room_id) => {
                            let added = wanted.insert(room_id.clone());
                            let result = if added { sink.subscribe(channel(&room_id)).await } else { Ok(()) };
                            if result.is_ok() && added {
                                // Closes the window between the room's first
                                // local join and this subscription.
                                hub.heal(room_id);
                            }
                            result
                        }
                        Subscription::Remove(room_id) => {
                            if wanted.remove(&room_id) {
                                sink.unsubscribe(channel(&room_id)).await
                            } else {
                                Ok(())
                            }
                        }
                    };
                    if let Err(err) = result {
                        tracing::warn!(error = %err, "Redis subscription change failed; reconnecting");
                        break;
                    }
                }
                () = shutdown.cancelled() => return,
            }
        }
        metrics::gauge!("parley_chat_bus_connected").set(0.0);
        tracing::warn!("lost the Redis subscriber connection; reconnecting");
    }
}

async fn connect(
    client: &redis::Client,
    wanted: &HashSet<RoomId>,
) -> redis::RedisResult<(redis::aio::PubSubSink, redis::aio::PubSubStream)> {
    let pubsub = tokio::time::timeout(Duration::from_secs(3), client.get_async_pubsub())
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))??;
    let (mut sink, stream) = pubsub.split();
    let channels: Vec<String> = wanted.iter().map(|room| channel(room)).collect();
    for chunk in channels.chunks(SUBSCRIBE_BATCH) {
        sink.subscribe(chunk).await?;
    }
    Ok((sink, stream))
}

/// Counts the bus as connected (the in-process bus always is).
pub fn report_local_bus() {
    metrics::gauge!("parley_chat_bus_connected").set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_their_origin() {
        let (bus, _tasks) = Bus::redis("redis://127.0.0.1:1", [7; 16]).unwrap();
        let Bus::Redis(redis_bus) = &bus else {
            panic!("a Redis bus")
        };
        let event = RoomEvent {
            room_id: "general".into(),
            response: None,
            except_user_id: "u".into(),
        };
        let mut payload = redis_bus.origin.to_vec();
        event.encode(&mut payload).unwrap();
        let (origin, decoded) = decode(&payload).unwrap();
        assert_eq!(origin, [7; 16]);
        assert_eq!(decoded, event);
        assert!(decode(&[1, 2, 3]).is_none());
    }
}
