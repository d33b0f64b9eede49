//! The replica's rooms: who is listening here, and the one ordered stream
//! of each room's messages.
//!
//! Every message reaches the hub twice at most (from the local writer and
//! from the bus) and possibly out of order or with holes (a dropped
//! publish, a Redis reconnect, another replica winning the race to the
//! bus). The hub delivers each room strictly by `seq`: a message one past
//! the last delivered goes out at once, an older one is a duplicate, and a
//! newer one waits while the hole is filled from storage. Each message is
//! turned into one shared event and queued once per link, whatever the
//! number of sessions behind the link; no lock is held across an await.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use parley_proto::chat::v1::{ChatResponse, Joined, Member, RoomEvent, chat_response::Frame};
use parley_runtime::storage::now_millis;

use crate::{
    bus::{Bus, Deliveries, Resync},
    domain::RoomId,
    error::Error,
    link::{Control, Importance, Link, SessionId},
    moderation::{Action, Until},
    presence::RoomPresence,
    sequencer::Sequencer,
    store::ChatStore,
    timeline::{BusEvent, StoredEvent, millis},
};

/// How long an out-of-order message waits for the missing ones to arrive
/// on their own (usually the local writer and the bus racing) before they
/// are read from storage.
const GAP_GRACE: Duration = Duration::from_millis(50);
/// Out-of-order messages held per room; beyond that they are dropped here
/// and read from storage with the rest of the hole.
const MAX_PENDING: usize = 10_000;
/// Rooms whose last seq one heal query reads.
const HEAL_CHUNK: usize = 500;

/// The replica's rooms. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Hub {
    inner: Arc<HubInner>,
}

#[derive(Debug)]
struct HubInner {
    rooms: Mutex<HashMap<RoomId, Arc<Mutex<RoomState>>>>,
    store: ChatStore,
    bus: Bus,
}

#[derive(Debug)]
struct RoomState {
    room_id: RoomId,
    /// What was handed to the links, what waits past a hole.
    order: Sequencer<StoredEvent>,
    /// Whether a backfill task is filling a hole.
    backfilling: bool,
    /// Links with sessions joined here, and how many sessions each.
    links: HashMap<u64, LinkEntry>,
    /// Local sessions per user, for presence.
    users: HashMap<Arc<str>, LocalUser>,
    /// Set when the room left the map; a late holder must look it up again.
    removed: bool,
}

#[derive(Debug)]
struct LinkEntry {
    link: Link,
    sessions: u32,
}

#[derive(Debug)]
struct LocalUser {
    name: Arc<str>,
    sessions: u32,
}

impl RoomState {
    fn is_idle(&self) -> bool {
        self.links.is_empty() && self.users.is_empty()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // State behind these locks is updated in small steps that leave it
    // consistent, so a panic elsewhere does not make it unusable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Hub {
    /// An empty hub over `store` and `bus`.
    pub(crate) fn new(store: ChatStore, bus: Bus) -> Self {
        Self {
            inner: Arc::new(HubInner {
                rooms: Mutex::default(),
                store,
                bus,
            }),
        }
    }

    fn cell(&self, room_id: &str) -> Option<Arc<Mutex<RoomState>>> {
        lock(&self.inner.rooms).get(room_id).cloned()
    }

    /// Counts a session of `user_id` into the room, creating the room's
    /// state (and its bus subscription) if this is its first local session.
    /// `last_seq` is the room's newest seq as just read from storage.
    /// Returns whether this is the user's first local session in the room.
    pub(crate) fn enter(
        &self,
        room_id: &RoomId,
        last_seq: i64,
        user_id: &Arc<str>,
        name: &Arc<str>,
    ) -> bool {
        loop {
            let (cell, created) = {
                let mut rooms = lock(&self.inner.rooms);
                match rooms.get(room_id) {
                    Some(cell) => (cell.clone(), false),
                    None => {
                        let cell = Arc::new(Mutex::new(RoomState {
                            room_id: room_id.clone(),
                            order: Sequencer::new(last_seq, MAX_PENDING),
                            backfilling: false,
                            links: HashMap::new(),
                            users: HashMap::new(),
                            removed: false,
                        }));
                        rooms.insert(room_id.clone(), cell.clone());
                        // Counted up and down rather than set, so hubs that
                        // share a process (the tests) add up.
                        metrics::gauge!("parley_chat_room_subscriptions").increment(1.0);
                        (cell, true)
                    }
                }
            };
            if created {
                self.inner.bus.subscribe(room_id.clone());
            }
            let mut state = lock(&cell);
            if state.removed {
                continue;
            }
            let user = state
                .users
                .entry(user_id.clone())
                .or_insert_with(|| LocalUser {
                    name: name.clone(),
                    sessions: 0,
                });
            user.sessions += 1;
            let first = user.sessions == 1;
            if state.order.learn(last_seq) {
                // Storage is ahead of what was delivered here: fill the hole.
                self.start_backfill(&mut state, false);
            }
            return first;
        }
    }

    /// Counts a session of `user_id` out of the room. Returns whether it
    /// was the user's last local session there.
    pub(crate) fn exit(&self, room_id: &str, user_id: &str) -> bool {
        let Some(cell) = self.cell(room_id) else {
            return false;
        };
        let (last, idle) = {
            let mut state = lock(&cell);
            let last = match state.users.get_mut(user_id) {
                Some(user) if user.sessions > 1 => {
                    user.sessions -= 1;
                    false
                }
                Some(_) => {
                    state.users.remove(user_id);
                    true
                }
                None => false,
            };
            (last, state.is_idle())
        };
        if idle {
            self.remove_if_idle(room_id);
        }
        last
    }

    /// Starts delivering the room to `session` on `link`: queues the
    /// `joined` frame, then the messages after `since` when it is set (at
    /// most `max_replay`, the newest), and from then on every live message,
    /// with nothing lost or repeated at the seam. The session must have
    /// [`enter`](Self::enter)ed the room.
    ///
    /// A session that receives the room already (`attached`, a second join
    /// of the same room) is answered the same way without being counted
    /// twice; its live messages keep flowing meanwhile, so its replay may
    /// overlap them, and the client drops what it has by `seq`.
    ///
    /// # Errors
    /// Database failures while reading the replay.
    pub(crate) async fn attach(
        &self,
        link: &Link,
        session: SessionId,
        room_id: &RoomId,
        replay: Replay,
        joined: Joined,
        attached: bool,
    ) -> Result<(), Error> {
        let Replay {
            since,
            max: max_replay,
        } = replay;
        let cell = self
            .cell(room_id)
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("room {room_id} was not entered")))?;
        let mut replay: VecDeque<StoredEvent> = VecDeque::new();
        let mut replayed_to = since.unwrap_or(0);
        let mut truncated = false;
        loop {
            let target = {
                let mut state = lock(&cell);
                let delivered = state.order.delivered();
                if since.is_none() || replayed_to >= delivered {
                    if !attached {
                        state
                            .links
                            .entry(link.id())
                            .or_insert_with(|| LinkEntry {
                                link: link.clone(),
                                sessions: 0,
                            })
                            .sessions += 1;
                    }
                    link.send_to(
                        session,
                        ChatResponse {
                            frame: Some(Frame::Joined(Joined {
                                room_id: room_id.to_string(),
                                last_seq: delivered,
                                replay_truncated: truncated,
                                ..joined
                            })),
                        },
                    );
                    for event in replay {
                        if event.seq() <= delivered {
                            link.send_to(session, event.to_response());
                        }
                    }
                    return Ok(());
                }
                delivered
            };
            // Read outside the lock, then check again: more may have been
            // delivered meanwhile.
            let from = replayed_to.max(target - max_replay);
            if from > replayed_to {
                truncated = true;
                replay.clear();
            }
            let messages = self.inner.store.range(room_id, from, target).await?;
            replay.extend(messages);
            replayed_to = target;
            while i64::try_from(replay.len()).unwrap_or(i64::MAX) > max_replay {
                replay.pop_front();
                truncated = true;
            }
        }
    }

    /// Stops delivering the room to one session of `link`.
    pub(crate) fn detach(&self, link: &Link, room_id: &str) {
        let Some(cell) = self.cell(room_id) else {
            return;
        };
        let idle = {
            let mut state = lock(&cell);
            if let Some(entry) = state.links.get_mut(&link.id()) {
                entry.sessions = entry.sessions.saturating_sub(1);
                if entry.sessions == 0 {
                    state.links.remove(&link.id());
                }
            }
            state.is_idle()
        };
        if idle {
            self.remove_if_idle(room_id);
        }
    }

    fn remove_if_idle(&self, room_id: &str) {
        let mut rooms = lock(&self.inner.rooms);
        let Some(cell) = rooms.get(room_id).cloned() else {
            return;
        };
        let mut state = lock(&cell);
        if state.is_idle() {
            state.removed = true;
            rooms.remove(room_id);
            metrics::gauge!("parley_chat_room_subscriptions").decrement(1.0);
            self.inner.bus.unsubscribe(state.room_id.clone());
        }
    }

    /// Delivers a stored timeline event, in seq order. `stored_at` is when
    /// this replica stored it (None when it came over the bus).
    pub(crate) fn deliver(&self, event: StoredEvent, stored_at: Option<Instant>) {
        let Some(cell) = self.cell(event.room_id()) else {
            return;
        };
        let mut guard = lock(&cell);
        let state = &mut *guard;
        let links = &state.links;
        // The offered event goes out now with its store time; events that
        // waited past the hole follow it.
        let mut first = Some(stored_at);
        let hole = state.order.offer(event.seq(), event, |event| {
            fan_out(links, &event, first.take().flatten(), false);
        });
        if hole && first.is_some() {
            // It waits past a hole: give the other path a moment first.
            self.start_backfill(state, true);
        }
    }

    /// Delivers typing or presence: no order, no storage, dropped for
    /// links that cannot take it now.
    ///
    /// A `left` addressed to the whole room says the room was deleted: it
    /// is not forwarded, but every stream's sessions leave the room.
    pub(crate) fn deliver_ephemeral(&self, event: Arc<RoomEvent>) {
        let gone = matches!(
            event.response.as_ref().and_then(|r| r.frame.as_ref()),
            Some(Frame::Left(_))
        );
        if gone {
            self.evict_room(&event.room_id);
            return;
        }
        let Some(cell) = self.cell(&event.room_id) else {
            return;
        };
        let state = lock(&cell);
        for entry in state.links.values() {
            entry.link.send_room_event(&event, Importance::Droppable);
        }
    }

    /// Makes every local session leave a deleted room.
    pub(crate) fn evict_room(&self, room_id: &str) {
        let Some(cell) = self.cell(room_id) else {
            return;
        };
        let state = lock(&cell);
        for entry in state.links.values() {
            entry.link.control(Control::RoomGone {
                room_id: room_id.to_owned(),
            });
        }
    }

    fn start_backfill(&self, state: &mut RoomState, wait_first: bool) {
        if state.backfilling || !state.order.has_hole() {
            return;
        }
        state.backfilling = true;
        let hub = self.clone();
        let room_id = state.room_id.clone();
        tokio::spawn(async move { hub.backfill(room_id, wait_first).await });
    }

    /// Fills the room's hole from storage, until none is left.
    async fn backfill(self, room_id: RoomId, wait_first: bool) {
        if wait_first {
            tokio::time::sleep(GAP_GRACE).await;
        }
        let mut failures = 0u32;
        loop {
            let Some(cell) = self.cell(&room_id) else {
                return;
            };
            let (from, to) = {
                let mut state = lock(&cell);
                match state.order.hole() {
                    Some(hole) if !state.removed => hole,
                    _ => {
                        state.backfilling = false;
                        return;
                    }
                }
            };
            match self.inner.store.range(&room_id, from, to).await {
                Ok(messages) => {
                    failures = 0;
                    let mut guard = lock(&cell);
                    let state = &mut *guard;
                    let links = &state.links;
                    let unconfirmed = state.order.fill(
                        from,
                        to,
                        messages.into_iter().map(|event| (event.seq(), event)),
                        |event, from_storage| fan_out(links, &event, None, from_storage),
                    );
                    if unconfirmed > 0 {
                        // Storage is the truth: what it does not hold was
                        // forged or corrupted on the way.
                        tracing::warn!(room = %room_id, from, to, unconfirmed, "events storage does not hold were dropped");
                        metrics::counter!("parley_chat_unconfirmed_events_total")
                            .increment(unconfirmed as u64);
                    }
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(room = %room_id, error = %err, "cannot backfill yet; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(25))))
                        .await;
                }
            }
        }
    }

    /// Checks every room against storage: periodically, to catch a
    /// publish Redis lost.
    pub(crate) fn heal_all(&self) {
        let rooms: Vec<RoomId> = lock(&self.inner.rooms).keys().cloned().collect();
        if rooms.is_empty() {
            return;
        }
        let hub = self.clone();
        tokio::spawn(async move { hub.heal_rooms(rooms).await });
    }

    async fn heal_rooms(&self, rooms: Vec<RoomId>) {
        for chunk in rooms.chunks(HEAL_CHUNK) {
            let ids: Vec<&str> = chunk.iter().map(RoomId::as_str).collect();
            let last_seqs = match self.inner.store.last_seqs(&ids).await {
                Ok(last_seqs) => last_seqs,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot check rooms for missed messages");
                    return;
                }
            };
            // A room storage no longer has was deleted, and its deletion
            // notice lost on the way (Redis down): its sessions leave now.
            for room_id in &ids {
                if !last_seqs.iter().any(|(id, _)| id == room_id) {
                    self.evict_room(room_id);
                }
            }
            for (room_id, last_seq) in last_seqs {
                let Some(cell) = self.cell(&room_id) else {
                    continue;
                };
                let mut state = lock(&cell);
                state.order.learn(last_seq);
                self.start_backfill(&mut state, false);
            }
        }
    }

    /// The users with local sessions in the room, each once.
    pub(crate) fn local_members(&self, room_id: &str) -> Vec<Member> {
        let Some(cell) = self.cell(room_id) else {
            return Vec::new();
        };
        let state = lock(&cell);
        crate::presence::dedupe(state.users.iter().map(|(id, user)| Member {
            user_id: id.to_string(),
            name: user.name.to_string(),
        }))
    }

    /// Every room's local users, for presence heartbeats.
    pub(crate) fn local_presence(&self) -> Vec<RoomPresence> {
        let cells: Vec<_> = lock(&self.inner.rooms).values().cloned().collect();
        cells
            .iter()
            .filter_map(|cell| {
                let state = lock(cell);
                (!state.users.is_empty()).then(|| {
                    (
                        state.room_id.shared(),
                        state
                            .users
                            .iter()
                            .map(|(id, user)| (id.clone(), user.name.clone()))
                            .collect(),
                    )
                })
            })
            .collect()
    }
}

impl Deliveries for Hub {
    fn on_event(&self, event: RoomEvent) {
        match StoredEvent::from_bus(event) {
            BusEvent::Timeline(timeline) => self.deliver(timeline, None),
            BusEvent::Ephemeral(other) => self.deliver_ephemeral(other),
        }
    }

    fn resync(&self, rooms: Resync) {
        match rooms {
            Resync::All => self.heal_all(),
            Resync::Room(room_id) => {
                let hub = self.clone();
                tokio::spawn(async move { hub.heal_rooms(vec![room_id]).await });
            }
        }
    }
}

/// What a join asks to be replayed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replay {
    /// Replay the messages after this seq; `None` for no replay.
    pub(crate) since: Option<i64>,
    /// The most messages replayed (the newest are kept).
    pub(crate) max: i64,
}

/// Queues one timeline event to every link of the room, as one shared
/// event.
fn fan_out(
    links: &HashMap<u64, LinkEntry>,
    event: &StoredEvent,
    stored_at: Option<Instant>,
    backfilled: bool,
) {
    let mut deliveries = 0u64;
    for entry in links.values() {
        if entry
            .link
            .send_room_event(event.room_event(), Importance::Essential)
        {
            deliveries += u64::from(entry.sessions);
        }
    }
    metrics::counter!("parley_chat_deliveries_total").increment(deliveries);
    if let Some(Frame::MemberUpdate(update)) = event.frame() {
        // The member's sessions change standing (leave, muted, new role)
        // on whichever stream holds them, right after the event.
        if let Ok(action) = Action::from_proto(update.action(), &update.role) {
            let until = Until::from_stored(millis(update.until.as_ref()));
            for entry in links.values() {
                entry.link.control(Control::Member {
                    room_id: update.room_id.clone(),
                    user_id: update.user_id.clone(),
                    action,
                    until,
                });
            }
        }
    }
    if backfilled {
        metrics::counter!("parley_chat_backfilled_messages_total").increment(1);
    }
    let elapsed = match (stored_at, event.at_ms()) {
        (Some(stored_at), _) => stored_at.elapsed().as_secs_f64(),
        (None, Some(at_ms)) => (now_millis() - at_ms).max(0) as f64 / 1000.0,
        (None, None) => return,
    };
    metrics::histogram!("parley_chat_fanout_seconds").record(elapsed);
}
