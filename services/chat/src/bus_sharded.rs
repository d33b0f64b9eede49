//! The bus's subscriber on a Redis Cluster: sharded pub/sub.
//!
//! One cluster connection holds an `SSUBSCRIBE` for each room with local
//! members, on the shard that owns the room's slot; its pushes come back
//! through one channel. A subscription counts once the server confirms it,
//! and each confirmation resynchronizes its room from storage, which
//! closes whatever window it was away for. Subscriptions a failover took
//! (a `Disconnection`) or a slot migration ended (a server `sunsubscribe`)
//! are asked for again every [`RETRY_EVERY`] until confirmed: the
//! connection follows the slots to their new owners on the way.

use std::collections::HashSet;
use std::time::Duration;

use redis::{
    PushInfo, PushKind, Value,
    cluster::{ClusterClient, ClusterConfig},
    cluster_async::ClusterConnection,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    bus::{Deliveries, Origin, Subscription, channel, decode, sharded_room},
    domain::RoomId,
};

/// How often unconfirmed subscriptions are asked for again.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// Subscriptions asked for at once when retrying.
const RETRY_BATCH: usize = 64;

/// Holds the rooms' sharded subscriptions and hands every event to
/// `deliveries`, until `shutdown`.
pub(crate) async fn subscribe(
    client: ClusterClient,
    origin: Origin,
    key: crate::bus::BusKey,
    mut changes: mpsc::UnboundedReceiver<Subscription>,
    deliveries: impl Deliveries,
    shutdown: CancellationToken,
) {
    let (pushes_tx, mut pushes) = mpsc::unbounded_channel::<PushInfo>();
    let config = ClusterConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(3))
        .set_push_sender(pushes_tx);
    let connection = client.get_pending_async_connection_with_config(config);
    let mut state = Subscriptions::default();
    let mut retry = tokio::time::interval(RETRY_EVERY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    metrics::gauge!("parley_chat_bus_connected").set(1.0);
    loop {
        tokio::select! {
            push = pushes.recv() => {
                let Some(push) = push else { return };
                match state.on_push(push, &origin, &key) {
                    Pushed::Event(event) => deliveries.on_event(*event),
                    Pushed::Confirmed(room) => deliveries.resync(crate::bus::Resync::Room(room)),
                    Pushed::Lost => {
                        metrics::counter!("parley_chat_bus_reconnects_total").increment(1);
                        tracing::warn!(rooms = state.wanted.len(), "lost a Redis Cluster subscriber connection; subscribing again");
                    }
                    Pushed::Nothing => {}
                }
            }
            change = changes.recv() => {
                let Some(change) = change else { return };
                match change {
                    Subscription::Add(room) => {
                        if state.want(room.clone()) {
                            ssubscribe(&connection, &room).await;
                        }
                    }
                    Subscription::Remove(room) => {
                        if state.wanted.remove(&room) {
                            state.unconfirmed.remove(&room);
                            let mut connection = connection.clone();
                            if let Err(err) = connection.sunsubscribe(channel(&room, true)).await {
                                tracing::debug!(error = %err, "SUNSUBSCRIBE failed; the next confirmation of the room is ignored");
                            }
                        }
                    }
                }
            }
            _ = retry.tick() => {
                let again: Vec<RoomId> = state.unconfirmed.iter().take(RETRY_BATCH).cloned().collect();
                futures_util::future::join_all(again.iter().map(|room| ssubscribe(&connection, room))).await;
            }
            () = shutdown.cancelled() => return,
        }
        let connected = if state.unconfirmed.is_empty() {
            1.0
        } else {
            0.0
        };
        metrics::gauge!("parley_chat_bus_connected").set(connected);
    }
}

/// Asks for the room's subscription; a failure leaves it unconfirmed, to
/// be asked for again.
async fn ssubscribe(connection: &ClusterConnection, room: &RoomId) {
    let mut connection = connection.clone();
    if let Err(err) = connection.ssubscribe(channel(room, true)).await {
        tracing::debug!(error = %err, room = %room, "SSUBSCRIBE failed; retrying");
    }
}

/// Which rooms are wanted and which of those the servers have confirmed.
#[derive(Debug, Default)]
struct Subscriptions {
    wanted: HashSet<RoomId>,
    /// Wanted but not (or no longer) confirmed.
    unconfirmed: HashSet<RoomId>,
}

/// What a push means for the subscriber.
#[derive(Debug, PartialEq)]
enum Pushed {
    /// Another replica's event in a subscribed room.
    Event(Box<parley_proto::chat::v1::RoomEvent>),
    /// A wanted room's subscription is confirmed (again): resync it.
    Confirmed(RoomId),
    /// A connection dropped: every subscription is asked for again.
    Lost,
    /// Nothing to do (this replica's own event, an unwanted room, a
    /// malformed push).
    Nothing,
}

impl Subscriptions {
    /// Starts wanting `room`; whether it is new.
    fn want(&mut self, room: RoomId) -> bool {
        if self.wanted.insert(room.clone()) {
            self.unconfirmed.insert(room);
            true
        } else {
            false
        }
    }

    /// Reads one push.
    fn on_push(&mut self, push: PushInfo, origin: &Origin, key: &crate::bus::BusKey) -> Pushed {
        match push.kind {
            PushKind::SMessage => {
                let Some(Value::BulkString(payload)) = push.data.get(1) else {
                    return Pushed::Nothing;
                };
                if payload.starts_with(origin) {
                    return Pushed::Nothing;
                }
                match decode(payload, key) {
                    Some((_, event)) => Pushed::Event(Box::new(event)),
                    None => {
                        tracing::warn!("skipping a malformed bus event");
                        Pushed::Nothing
                    }
                }
            }
            PushKind::SSubscribe => match room_of(&push) {
                Some(room) if self.wanted.contains(&room) => {
                    self.unconfirmed.remove(&room);
                    Pushed::Confirmed(room)
                }
                _ => Pushed::Nothing,
            },
            PushKind::SUnsubscribe => {
                // Ours (a room left) or the server's (its slot moved away).
                if let Some(room) = room_of(&push)
                    && self.wanted.contains(&room)
                {
                    self.unconfirmed.insert(room);
                }
                Pushed::Nothing
            }
            PushKind::Disconnection => {
                self.unconfirmed.clone_from(&self.wanted);
                Pushed::Lost
            }
            _ => Pushed::Nothing,
        }
    }
}

/// The room a subscription push is about.
fn room_of(push: &PushInfo) -> Option<RoomId> {
    match push.data.first()? {
        Value::BulkString(name) => sharded_room(std::str::from_utf8(name).ok()?),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(kind: PushKind, data: Vec<Value>) -> PushInfo {
        PushInfo { kind, data }
    }

    fn name(room: &str) -> Value {
        Value::BulkString(channel(room, true).into_bytes())
    }

    /// The subscription state machine alone: confirmations count once per
    /// wanted room, losses make everything unconfirmed, a server
    /// `sunsubscribe` of a wanted room makes it unconfirmed again, and
    /// this replica's own events are skipped.
    #[test]
    fn confirmations_losses_and_migrations() {
        let ours: Origin = [1; 16];
        let mut state = Subscriptions::default();
        let room = RoomId::trusted("r1");
        assert!(state.want(room.clone()));
        assert!(!state.want(room.clone()));
        assert!(state.unconfirmed.contains(&room));

        let confirmed = state.on_push(
            push(PushKind::SSubscribe, vec![name("r1"), Value::Int(1)]),
            &ours,
            &crate::bus::BusKey::default(),
        );
        assert_eq!(confirmed, Pushed::Confirmed(room.clone()));
        assert!(state.unconfirmed.is_empty());
        assert_eq!(
            state.on_push(
                push(PushKind::SSubscribe, vec![name("other"), Value::Int(1)]),
                &ours,
                &crate::bus::BusKey::default()
            ),
            Pushed::Nothing,
            "an unwanted room"
        );

        assert_eq!(
            state.on_push(
                push(PushKind::Disconnection, vec![]),
                &ours,
                &crate::bus::BusKey::default()
            ),
            Pushed::Lost
        );
        assert!(state.unconfirmed.contains(&room));
        state.on_push(
            push(PushKind::SSubscribe, vec![name("r1"), Value::Int(1)]),
            &ours,
            &crate::bus::BusKey::default(),
        );
        state.on_push(
            push(PushKind::SUnsubscribe, vec![name("r1"), Value::Int(0)]),
            &ours,
            &crate::bus::BusKey::default(),
        );
        assert!(state.unconfirmed.contains(&room), "the slot moved away");

        let mut own = ours.to_vec();
        own.extend_from_slice(b"whatever");
        assert_eq!(
            state.on_push(
                push(PushKind::SMessage, vec![name("r1"), Value::BulkString(own)]),
                &ours,
                &crate::bus::BusKey::default()
            ),
            Pushed::Nothing
        );
        let event = parley_proto::chat::v1::RoomEvent {
            room_id: "r1".into(),
            response: None,
            except_user_id: "u".into(),
        };
        let mut theirs = vec![2; 16];
        prost::Message::encode(&event, &mut theirs).unwrap();
        assert_eq!(
            state.on_push(
                push(
                    PushKind::SMessage,
                    vec![name("r1"), Value::BulkString(theirs)]
                ),
                &ours,
                &crate::bus::BusKey::default()
            ),
            Pushed::Event(Box::new(event))
        );
    }
}
