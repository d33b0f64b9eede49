//! Fan-out between replicas.
//!
//! Two implementations behind one type: in-process (a single replica: its
//! own deliveries are all there is) and Redis pub/sub, one channel per
//! room. Publishing never waits: events go to an outbox that a task pipelines
//! to Redis, keeping them (in order) through a reconnect. Subscribing goes
//! through one subscriber connection per replica, which holds exactly the
//! rooms that have local members; after every (re)connect its receiver is
//! asked to resynchronize, so whatever was published meanwhile is
//! backfilled from storage by `seq`.
//!
//! On a Redis Cluster the same happens with sharded pub/sub: a room's
//! channel carries its id as a hash tag, events go out with `SPUBLISH`
//! (one pipeline per slot) and come in through `SSUBSCRIBE` on the shard
//! that owns the slot. Every confirmed subscription resynchronizes its
//! room, and a subscription lost to a failover or a slot migration is
//! asked for again until it is confirmed.
//!
//! The bus knows nothing of what receives its events: the subscriber hands
//! them to a [`Deliveries`] (the hub, in the service; a recorder, in the
//! subscriber's own tests).

use std::{collections::HashSet, time::Duration};

use bytes::{BufMut as _, Bytes, BytesMut};
use futures_util::{StreamExt as _, future::join_all};
use hmac::{Hmac, Mac as _};
use parley_proto::chat::v1::RoomEvent;
use prost::Message as _;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    domain::RoomId,
    redis_target::{Commands, RedisTarget, by_slot},
};

/// Prefix of every room channel.
const CHANNEL_PREFIX: &str = "parley:chat:room:";
/// Events waiting to be published before new ones are dropped (storage
/// and the gap check still deliver dropped messages).
const OUTBOX_CAPACITY: usize = 65_536;
/// Events per pipelined publish.
const PUBLISH_BATCH: usize = 512;
/// Channels per SUBSCRIBE command when resubscribing.
const SUBSCRIBE_BATCH: usize = 500;

/// A replica's id on the bus, so it can skip its own events.
pub(crate) type Origin = [u8; 16];

/// What the subscriber hands its events to.
pub(crate) trait Deliveries: Send + Sync + 'static {
    /// An event another replica published in a subscribed room.
    fn on_event(&self, event: RoomEvent);

    /// Events may have been missed in `rooms`: check them against
    /// storage. Called when a room's subscription starts (closing the
    /// window since its first local join) and, for every room, after each
    /// (re)connect.
    fn resync(&self, rooms: Resync);
}

/// Which rooms a [`Deliveries::resync`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resync {
    /// Every room with local members.
    All,
    /// One room, whose subscription just started.
    Room(RoomId),
}

/// The bus of one replica. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) enum Bus {
    /// One process: nothing to send anywhere.
    Local,
    /// Redis pub/sub.
    Redis(RedisBus),
}

/// The handle of the Redis bus.
#[derive(Debug, Clone)]
pub(crate) struct RedisBus {
    origin: Origin,
    /// Signs what this replica publishes.
    key: BusKey,
    /// Cluster channels carry the room id as a hash tag.
    sharded: bool,
    outbox: mpsc::Sender<Outgoing>,
    subscriptions: mpsc::UnboundedSender<Subscription>,
}

#[derive(Debug)]
pub(crate) enum Subscription {
    Add(RoomId),
    Remove(RoomId),
}

/// The tasks behind a [`RedisBus`]: [`RedisBusTasks::spawn`] starts them
/// with whatever receives the events.
#[derive(Debug)]
pub(crate) struct RedisBusTasks {
    target: RedisTarget,
    origin: Origin,
    /// Checks what other replicas published.
    key: BusKey,
    outbox: mpsc::Receiver<Outgoing>,
    subscriptions: mpsc::UnboundedReceiver<Subscription>,
}

impl Bus {
    /// A Redis bus for `url`, and the tasks to start with
    /// [`RedisBusTasks::spawn`].
    ///
    /// # Errors
    /// When the URL is unusable.
    pub(crate) fn redis(
        url: &str,
        origin: Origin,
        key: BusKey,
    ) -> anyhow::Result<(Self, RedisBusTasks)> {
        let target = RedisTarget::parse(url)
            .map_err(|err| anyhow::anyhow!("CHAT_REDIS_URL is unusable: {err}"))?;
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
        let (subscriptions, subscriptions_rx) = mpsc::unbounded_channel();
        Ok((
            Self::Redis(RedisBus {
                origin,
                key: key.clone(),
                sharded: target.is_cluster(),
                outbox,
                subscriptions,
            }),
            RedisBusTasks {
                target,
                origin,
                key,
                outbox: outbox_rx,
                subscriptions: subscriptions_rx,
            },
        ))
    }

    /// Sends `event` to the other replicas with members in its room.
    pub(crate) fn publish(&self, event: &RoomEvent) {
        self.publish_traced(event, &tracing::Span::none());
    }

    /// [`publish`](Self::publish), traced as a child of `parent` (when it
    /// is enabled) until Redis has taken the event.
    pub(crate) fn publish_traced(&self, event: &RoomEvent, parent: &tracing::Span) {
        let Self::Redis(bus) = self else { return };
        let span = if parent.is_disabled() {
            tracing::Span::none()
        } else {
            tracing::info_span!(parent: parent, "redis.publish", otel.kind = "producer", db.system = "redis")
        };
        let payload = bus.key.encode(&bus.origin, event);
        if bus
            .outbox
            .try_send((channel(&event.room_id, bus.sharded), payload, span))
            .is_err()
        {
            metrics::counter!("parley_chat_bus_dropped_total").increment(1);
        }
    }

    /// Starts receiving the room's events.
    pub(crate) fn subscribe(&self, room_id: RoomId) {
        if let Self::Redis(bus) = self {
            let _ = bus.subscriptions.send(Subscription::Add(room_id));
        }
    }

    /// Stops receiving the room's events.
    pub(crate) fn unsubscribe(&self, room_id: RoomId) {
        if let Self::Redis(bus) = self {
            let _ = bus.subscriptions.send(Subscription::Remove(room_id));
        }
    }
}

/// The secret replicas sign their bus events with (`CHAT_BUS_SECRET`), so
/// whoever can publish to Redis cannot forge a message or a `seq` (README,
/// "Redis outages"). Without one, payloads carry no signature.
#[derive(Clone, Default)]
pub(crate) struct BusKey(Option<std::sync::Arc<Hmac<Sha256>>>);

impl std::fmt::Debug for BusKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "BusKey(set)"
        } else {
            "BusKey(none)"
        })
    }
}

/// Bytes of a payload's signature.
const TAG_BYTES: usize = 32;

impl BusKey {
    /// The key of `secret`; none for none.
    pub(crate) fn new(secret: Option<&str>) -> Self {
        Self(
            secret
                .and_then(|secret| Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok())
                .map(std::sync::Arc::new),
        )
    }

    /// `origin`, the signature (with a key) and `event`.
    pub(crate) fn encode(&self, origin: &Origin, event: &RoomEvent) -> Bytes {
        let tag_bytes = if self.0.is_some() { TAG_BYTES } else { 0 };
        let mut payload = BytesMut::with_capacity(16 + tag_bytes + event.encoded_len());
        payload.put_slice(origin);
        let body = event.encode_to_vec();
        if let Some(mac) = &self.0 {
            let mut mac = Hmac::<Sha256>::clone(mac);
            mac.update(origin);
            mac.update(&body);
            payload.put_slice(&mac.finalize().into_bytes());
        }
        payload.put_slice(&body);
        payload.freeze()
    }
}

/// Splits a bus payload into its origin and event; `None` when it is
/// malformed or, with a key, not signed with it.
pub(crate) fn decode(payload: &[u8], key: &BusKey) -> Option<(Origin, RoomEvent)> {
    let origin: Origin = payload.get(..16)?.try_into().ok()?;
    let body = match &key.0 {
        Some(mac) => {
            let tag = payload.get(16..16 + TAG_BYTES)?;
            let body = payload.get(16 + TAG_BYTES..)?;
            let mut mac = Hmac::<Sha256>::clone(mac);
            mac.update(&origin);
            mac.update(body);
            if mac.verify_slice(tag).is_err() {
                metrics::counter!("parley_chat_bus_rejected_total").increment(1);
                return None;
            }
            body
        }
        None => payload.get(16..)?,
    };
    let event = RoomEvent::decode(body).ok()?;
    Some((origin, event))
}

/// An event waiting to be published, with its span (ended once Redis has
/// taken it).
type Outgoing = (String, Bytes, tracing::Span);

/// A room's channel. On a cluster the room id is a hash tag, so the
/// channel hashes to the room's slot (the same as its presence key's).
pub(crate) fn channel(room_id: &str, sharded: bool) -> String {
    if sharded {
        format!("{CHANNEL_PREFIX}{{{room_id}}}")
    } else {
        format!("{CHANNEL_PREFIX}{room_id}")
    }
}

/// The room a cluster channel belongs to.
pub(crate) fn sharded_room(channel: &str) -> Option<RoomId> {
    let room = channel
        .strip_prefix(CHANNEL_PREFIX)?
        .strip_prefix('{')?
        .strip_suffix('}')?;
    Some(RoomId::trusted(room))
}

impl RedisBusTasks {
    /// Starts the publisher and the subscriber, until `shutdown`.
    pub(crate) fn spawn(self, deliveries: impl Deliveries, shutdown: CancellationToken) {
        let Self {
            target,
            origin,
            key,
            outbox,
            subscriptions,
        } = self;
        tokio::spawn(publish(target.clone(), outbox, shutdown.clone()));
        match target {
            RedisTarget::Single(client) => {
                tokio::spawn(subscribe(
                    client,
                    origin,
                    key,
                    subscriptions,
                    deliveries,
                    shutdown,
                ));
            }
            RedisTarget::Cluster(client) => {
                tokio::spawn(crate::bus_sharded::subscribe(
                    *client,
                    origin,
                    key,
                    subscriptions,
                    deliveries,
                    shutdown,
                ));
            }
        }
    }
}

pub(crate) fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100 * u64::from(failures.clamp(1, 20)))
}

/// Pipelines the outbox to Redis, in order; a failed batch is retried
/// after a reconnect rather than dropped. On a cluster each slot's events
/// go in a pipeline of their own (`SPUBLISH`), all at once.
async fn publish(
    target: RedisTarget,
    mut outbox: mpsc::Receiver<Outgoing>,
    shutdown: CancellationToken,
) {
    let connection = match target.commands(Duration::from_secs(2)) {
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
        match publish_batch(&connection, &batch).await {
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

/// One batch: a single pipeline of `PUBLISH`es, or on a cluster one
/// pipeline of `SPUBLISH`es per slot. A batch that fails is sent again
/// whole; the hubs drop what they already had by `seq`.
async fn publish_batch(connection: &Commands, batch: &[Outgoing]) -> redis::RedisResult<()> {
    if !connection.is_cluster() {
        let mut pipeline = redis::pipe();
        for (channel, payload, _) in batch {
            pipeline.publish(channel, payload.as_ref()).ignore();
        }
        return pipeline.query_async::<()>(&mut connection.clone()).await;
    }
    let groups = by_slot(batch.iter().collect(), |(channel, _, _)| {
        channel.clone().into_bytes()
    });
    let sends = groups.into_iter().map(|group| {
        let mut pipeline = redis::pipe();
        for (channel, payload, _) in group {
            pipeline
                .cmd("SPUBLISH")
                .arg(channel)
                .arg(payload.as_ref())
                .ignore();
        }
        let mut connection = connection.clone();
        async move { pipeline.query_async::<()>(&mut connection).await }
    });
    join_all(sends).await.into_iter().collect()
}

/// Holds the subscriber connection: (re)connects, subscribes the rooms
/// with local members, and hands every event to `deliveries`.
async fn subscribe(
    client: redis::Client,
    origin: Origin,
    key: BusKey,
    mut changes: mpsc::UnboundedReceiver<Subscription>,
    deliveries: impl Deliveries,
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
        deliveries.resync(Resync::All);

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
                    if let Some((_, event)) = decode(payload, &key) {
                        deliveries.on_event(event);
                    } else {
                        tracing::warn!(channel = message.get_channel_name(), "skipping a malformed bus event");
                    }
                }
                change = changes.recv() => {
                    let Some(change) = change else { return };
                    let result = match change {
                        Subscription::Add(room_id) => {
                            let added = wanted.insert(room_id.clone());
                            let result = if added { sink.subscribe(channel(&room_id, false)).await } else { Ok(()) };
                            if result.is_ok() && added {
                                // Closes the window between the room's first
                                // local join and this subscription.
                                deliveries.resync(Resync::Room(room_id));
                            }
                            result
                        }
                        Subscription::Remove(room_id) => {
                            if wanted.remove(&room_id) {
                                sink.unsubscribe(channel(&room_id, false)).await
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
    let channels: Vec<String> = wanted.iter().map(|room| channel(room, false)).collect();
    for chunk in channels.chunks(SUBSCRIBE_BATCH) {
        sink.subscribe(chunk).await?;
    }
    Ok((sink, stream))
}

/// Counts the bus as connected (the in-process bus always is).
pub(crate) fn report_local_bus() {
    metrics::gauge!("parley_chat_bus_connected").set(1.0);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The Redis the test suite runs against.
    const REDIS_URL: &str = "redis://127.0.0.1:6379";
    /// Long enough for anything on loopback; a failing test fails here.
    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn payloads_carry_their_origin() {
        let (bus, _tasks) = Bus::redis("redis://127.0.0.1:1", [7; 16], BusKey::default()).unwrap();
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
        let (origin, decoded) = decode(&payload, &BusKey::default()).unwrap();
        assert_eq!(origin, [7; 16]);
        assert_eq!(decoded, event);
        assert!(decode(&[1, 2, 3], &BusKey::default()).is_none());

        // Signed: only the same secret reads it, and a change breaks it.
        let key = BusKey::new(Some("replicas' secret"));
        let signed = key.encode(&[7; 16], &event);
        assert_eq!(decode(&signed, &key), Some(([7; 16], event.clone())));
        assert_eq!(decode(&signed, &BusKey::new(Some("a guess"))), None);
        assert_eq!(decode(&payload, &key), None, "an unsigned event is refused");
        let mut forged = signed.to_vec();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(decode(&forged, &key), None);
    }

    /// What the subscriber handed over, in order.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Event(String),
        Resync(Resync),
    }

    /// Records what the subscriber hands over, in place of a hub.
    struct Recorder(mpsc::UnboundedSender<Seen>);

    impl Deliveries for Recorder {
        fn on_event(&self, event: RoomEvent) {
            let _ = self.0.send(Seen::Event(event.except_user_id));
        }

        fn resync(&self, rooms: Resync) {
            let _ = self.0.send(Seen::Resync(rooms));
        }
    }

    async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
        tokio::time::timeout(WAIT, seen.recv())
            .await
            .expect("the subscriber to hand something over")
            .expect("the subscriber to be running")
    }

    /// Publishes an event in `room` as the replica `origin`, tagged with
    /// `tag` (carried in `except_user_id`, which the recorder keeps).
    async fn publish_as(
        connection: &mut redis::aio::MultiplexedConnection,
        origin: Origin,
        room: &RoomId,
        tag: &str,
    ) {
        let mut payload = origin.to_vec();
        RoomEvent {
            room_id: room.to_string(),
            response: None,
            except_user_id: tag.into(),
        }
        .encode(&mut payload)
        .expect("encoding into a Vec");
        let () = redis::cmd("PUBLISH")
            .arg(channel(room, false))
            .arg(payload)
            .query_async(connection)
            .await
            .expect("PUBLISH");
    }

    /// The subscriber on its own against a real Redis: it resynchronizes
    /// on connect and on each new room, hands over other replicas' events
    /// and skips its own, and after its connection is killed it
    /// reconnects, resynchronizes everything and is subscribed again.
    #[tokio::test]
    async fn the_subscriber_resubscribes_after_a_reconnect_and_skips_its_own_events() {
        let ours: Origin = *uuid::Uuid::new_v4().as_bytes();
        let theirs: Origin = *uuid::Uuid::new_v4().as_bytes();
        let room = RoomId::trusted(&format!("bus-test-{}", uuid::Uuid::new_v4().simple()));
        let client = redis::Client::open(REDIS_URL).expect("a Redis URL");
        let mut control = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis on 127.0.0.1:6379");
        let before: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut control)
            .await
            .expect("CLIENT ID");

        let (bus, tasks) = Bus::redis(REDIS_URL, ours, BusKey::default()).expect("a bus");
        let (recorder, mut seen) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let _stop = shutdown.clone().drop_guard();
        tasks.spawn(Recorder(recorder), shutdown);
        assert_eq!(next(&mut seen).await, Seen::Resync(Resync::All));

        bus.subscribe(room.clone());
        assert_eq!(
            next(&mut seen).await,
            Seen::Resync(Resync::Room(room.clone()))
        );
        publish_as(&mut control, ours, &room, "own").await;
        publish_as(&mut control, theirs, &room, "first").await;
        assert_eq!(
            next(&mut seen).await,
            Seen::Event("first".into()),
            "its own event is skipped, the other replica's handed over"
        );

        // Kill the subscriber's connection: the pubsub client opened after
        // the control connection, subscribed to one channel.
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut control)
            .await
            .expect("CLIENT LIST");
        let ids: Vec<i64> = clients
            .lines()
            .filter(|line| line.split(' ').any(|field| field == "sub=1"))
            .filter_map(|line| line.strip_prefix("id=")?.split(' ').next()?.parse().ok())
            .filter(|&id| id > before)
            .collect();
        assert!(!ids.is_empty(), "the subscriber's connection in {clients}");
        for id in ids {
            let _: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query_async(&mut control)
                .await
                .expect("CLIENT KILL");
        }
        assert_eq!(
            next(&mut seen).await,
            Seen::Resync(Resync::All),
            "a reconnect checks every room"
        );
        publish_as(&mut control, theirs, &room, "after").await;
        assert_eq!(
            next(&mut seen).await,
            Seen::Event("after".into()),
            "the room is subscribed again"
        );

        bus.unsubscribe(room.clone());
        bus.subscribe(room.clone());
        assert_eq!(next(&mut seen).await, Seen::Resync(Resync::Room(room)));
    }
}
