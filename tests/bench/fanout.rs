//! The fan-out scenarios: connections in rooms, senders at an open-loop
//! rate or with an in-flight window, every delivery checked and timed.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _, stream};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::{net::TcpStream, sync::Semaphore};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, protocol::WebSocketConfig},
};
use tokio_util::sync::CancellationToken;

use crate::FanoutArgs;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Ring of in-flight message slots per sender, for the window mode.
const SLOTS: usize = 1024;
/// Connections being opened at once.
const CONNECT_CONCURRENCY: usize = 128;

/// Something read at the start and at the end of the measured window
/// (CPU seconds by role, for the capacity model): the run reports the
/// difference.
pub(crate) type Probe = Arc<dyn Fn() -> Vec<(&'static str, f64)> + Send + Sync>;

/// Latency quantiles in microseconds.
#[derive(Debug, Clone, Default)]
pub(crate) struct Quantiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub(crate) max: u64,
}

impl Quantiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        Self {
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }

    fn json(&self) -> Value {
        json!({"p50_us": self.p50, "p90_us": self.p90, "p99_us": self.p99, "p999_us": self.p999, "max_us": self.max})
    }
}

/// What a fan-out run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    pub(crate) scenario: String,
    pub(crate) connections: usize,
    pub(crate) rooms: usize,
    pub(crate) senders: usize,
    pub(crate) rate: f64,
    pub(crate) window: usize,
    pub(crate) seconds: f64,
    pub(crate) sent: u64,
    pub(crate) expected: u64,
    pub(crate) received: u64,
    pub(crate) duplicates: u64,
    pub(crate) reordered: u64,
    pub(crate) errors: u64,
    pub(crate) latency: Quantiles,
    pub(crate) scheduled_latency: Quantiles,
    /// The probe's difference over the measured window, when there is one.
    pub(crate) probed: Vec<(&'static str, f64)>,
}

impl Report {
    /// Messages sent per second in the measured window.
    pub(crate) fn sent_per_second(&self) -> f64 {
        self.sent as f64 / self.seconds
    }

    /// Deliveries per second in the measured window.
    pub(crate) fn delivered_per_second(&self) -> f64 {
        self.received as f64 / self.seconds
    }

    /// Deliveries that never arrived.
    pub(crate) fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }

    /// The one-line JSON summary.
    pub(crate) fn json(&self) -> String {
        json!({
            "scenario": self.scenario,
            "connections": self.connections,
            "rooms": self.rooms,
            "senders": self.senders,
            "rate": self.rate,
            "window": self.window,
            "seconds": self.seconds,
            "sent": self.sent,
            "sent_per_s": self.sent_per_second().round(),
            "expected": self.expected,
            "received": self.received,
            "delivered_per_s": self.delivered_per_second().round(),
            "lost": self.lost(),
            "duplicates": self.duplicates,
            "reordered": self.reordered,
            "errors": self.errors,
            "latency": self.latency.json(),
            "scheduled_latency": self.scheduled_latency.json(),
        })
        .to_string()
    }
}

/// State every task of a run shares.
struct Shared {
    base: Instant,
    /// Messages scheduled in [measure_from, measure_to) (ns since base)
    /// are measured.
    measure_from: u64,
    measure_to: u64,
    received: AtomicU64,
    expected: AtomicU64,
    sent: AtomicU64,
    duplicates: AtomicU64,
    reordered: AtomicU64,
    errors: AtomicU64,
    stop: CancellationToken,
    /// Window mode: per sender, deliveries still owed per in-flight slot.
    owed: Vec<Vec<AtomicU32>>,
    permits: Vec<Semaphore>,
}

impl Shared {
    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn measured(&self, scheduled: u64) -> bool {
        scheduled >= self.measure_from && scheduled < self.measure_to
    }
}

/// One planned connection.
#[derive(Debug, Clone)]
struct Seat {
    gateway: SocketAddr,
    room: usize,
    token: Option<String>,
}

/// Runs a fan-out scenario and reports it.
pub(crate) async fn run(args: &FanoutArgs, scenario: &str) -> anyhow::Result<Report> {
    run_probed(args, scenario, None).await
}

/// Runs a fan-out scenario with `probe` read at the edges of the measured
/// window, and reports it.
pub(crate) async fn run_probed(
    args: &FanoutArgs,
    scenario: &str,
    probe: Option<Probe>,
) -> anyhow::Result<Report> {
    let tokens = match args.target.api {
        Some(api) => crate::users::sign_up(api, args.target.users(args.connections)).await?,
        None => Vec::new(),
    };
    let gateways = &args.target.gateways;
    let rooms = args.rooms.max(1);
    let seats: Vec<Seat> = (0..args.connections)
        .map(|i| Seat {
            // Members of one room alternate between gateways, and the
            // rooms' first members (the senders) are spread over them too.
            gateway: gateways[(i / rooms + i % rooms) % gateways.len()],
            room: i % rooms,
            token: (!tokens.is_empty()).then(|| tokens[i % tokens.len()].clone()),
        })
        .collect();
    let room_size: Vec<u64> = (0..rooms)
        .map(|room| seats.iter().filter(|seat| seat.room == room).count() as u64)
        .collect();
    let prefix = format!(
        "b{:x}",
        std::process::id() ^ (Instant::now().elapsed().subsec_nanos())
    );
    let room_name = |room: usize| format!("{prefix}-{room}");

    let sockets: Vec<anyhow::Result<Socket>> = stream::iter(seats.iter().cloned())
        .map(|seat| {
            let room = room_name(seat.room);
            async move { open(&seat, &room).await }
        })
        .buffered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let sockets = sockets.into_iter().collect::<anyhow::Result<Vec<_>>>()?;

    let senders = args.senders.min(sockets.len());
    let windowed = args.rate <= 0.0;
    let base = Instant::now();
    let start = Duration::from_millis(300);
    let measure_from = start + args.warmup;
    let measure_to = measure_from + args.duration;
    let shared = Arc::new(Shared {
        base,
        measure_from: nanos(measure_from),
        measure_to: nanos(measure_to),
        received: AtomicU64::new(0),
        expected: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        reordered: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: CancellationToken::new(),
        owed: (0..senders)
            .map(|_| (0..SLOTS).map(|_| AtomicU32::new(0)).collect())
            .collect(),
        permits: (0..senders)
            .map(|_| Semaphore::new(args.window.clamp(1, SLOTS)))
            .collect(),
    });

    let probing = probe.map(|probe| {
        let (from, to) = (base + measure_from, base + measure_to);
        tokio::spawn(async move {
            tokio::time::sleep_until(from.into()).await;
            let before = probe();
            tokio::time::sleep_until(to.into()).await;
            probe()
                .into_iter()
                .zip(before)
                .map(|((key, after), (_, before))| (key, after - before))
                .collect::<Vec<_>>()
        })
    });
    let mut readers = Vec::with_capacity(sockets.len());
    let mut sender_tasks = Vec::with_capacity(senders);
    for (index, socket) in sockets.into_iter().enumerate() {
        let (sink, source) = socket.split();
        readers.push(tokio::spawn(read(source, shared.clone())));
        if index < senders {
            let room = seats[index].room;
            let plan = SendPlan {
                index,
                room: room_name(room),
                room_size: room_size[room],
                windowed,
                interval: if windowed {
                    Duration::ZERO
                } else {
                    Duration::from_secs_f64(senders as f64 / args.rate)
                },
                start: start
                    + Duration::from_secs_f64(index as f64 / args.rate.max(1.0))
                        .min(Duration::from_millis(100)),
                end: measure_to,
            };
            sender_tasks.push(tokio::spawn(send(sink, plan, shared.clone())));
        } else {
            drop(sink);
        }
    }
    for task in sender_tasks {
        task.await.context("a sender task failed")?;
    }
    let probed = match probing {
        Some(task) => task.await.context("the probe failed")?,
        None => Vec::new(),
    };
    // Late deliveries, up to the drain limit.
    let drain_until = Instant::now() + args.drain;
    while Instant::now() < drain_until
        && shared.received.load(Ordering::Relaxed) < shared.expected.load(Ordering::Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shared.stop.cancel();
    let mut latency = histogram();
    let mut scheduled = histogram();
    for reader in readers {
        if let Ok((l, s)) = reader.await {
            latency.add(&l).ok();
            scheduled.add(&s).ok();
        }
    }
    Ok(Report {
        scenario: scenario.to_owned(),
        connections: args.connections,
        rooms,
        senders,
        rate: args.rate,
        window: if windowed { args.window } else { 0 },
        seconds: args.duration.as_secs_f64(),
        sent: shared.sent.load(Ordering::Relaxed),
        expected: shared.expected.load(Ordering::Relaxed),
        received: shared.received.load(Ordering::Relaxed),
        duplicates: shared.duplicates.load(Ordering::Relaxed),
        reordered: shared.reordered.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        latency: Quantiles::of(&latency),
        scheduled_latency: Quantiles::of(&scheduled),
        probed,
    })
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant figures; the bounds are constants.
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("a histogram"))
}

/// Opens one connection and joins its room.
pub(crate) async fn open_as(
    gateway: SocketAddr,
    token: Option<String>,
    room: &str,
) -> anyhow::Result<Socket> {
    open(
        &Seat {
            gateway,
            room: 0,
            token,
        },
        room,
    )
    .await
}

async fn open(seat: &Seat, room: &str) -> anyhow::Result<Socket> {
    let url = match &seat.token {
        Some(token) => format!("ws://{}/ws?token={token}", seat.gateway),
        None => format!("ws://{}/ws", seat.gateway),
    };
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 4096;
    config.write_buffer_size = 0;
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .with_context(|| format!("connecting to {}", seat.gateway))?;
    socket
        .send(Message::text(
            json!({"join": {"room_id": room}}).to_string(),
        ))
        .await?;
    while let Some(frame) = socket.next().await {
        if let Message::Text(text) = frame? {
            if text.as_str().starts_with("{\"joined\"") {
                return Ok(socket);
            }
            if text.as_str().starts_with("{\"error\"") {
                anyhow::bail!("joining {room}: {text}");
            }
        }
    }
    anyhow::bail!("the connection closed before joining {room}")
}

struct SendPlan {
    index: usize,
    room: String,
    room_size: u64,
    windowed: bool,
    interval: Duration,
    start: Duration,
    end: Duration,
}

async fn send(
    mut sink: futures_util::stream::SplitSink<Socket, Message>,
    plan: SendPlan,
    shared: Arc<Shared>,
) {
    let end = nanos(plan.end);
    let mut k: u64 = 0;
    let mut content = String::with_capacity(64);
    loop {
        let scheduled = if plan.windowed {
            let Ok(permit) = shared.permits[plan.index].acquire().await else {
                return;
            };
            permit.forget();
            shared.now().max(nanos(plan.start))
        } else {
            nanos(plan.start) + nanos(plan.interval) * k
        };
        if scheduled >= end {
            return;
        }
        let now = shared.now();
        if scheduled > now {
            tokio::time::sleep(Duration::from_nanos(scheduled - now)).await;
        }
        let slot = (k as usize) % SLOTS;
        if plan.windowed {
            shared.owed[plan.index][slot].store(
                u32::try_from(plan.room_size).unwrap_or(u32::MAX),
                Ordering::Relaxed,
            );
        }
        let sent_at = shared.now();
        content.clear();
        use std::fmt::Write as _;
        let _ = write!(content, "{}:{slot}:{scheduled}:{sent_at}", plan.index);
        let frame = format!(
            "{{\"send\":{{\"room_id\":\"{}\",\"content\":\"{content}\",\"client_id\":\"c{k}\"}}}}",
            plan.room
        );
        if sink.send(Message::text(frame)).await.is_err() {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if shared.measured(scheduled) {
            shared.sent.fetch_add(1, Ordering::Relaxed);
            shared.expected.fetch_add(plan.room_size, Ordering::Relaxed);
        }
        k += 1;
    }
}

/// Reads one connection until the run stops: checks order, counts
/// deliveries and records latencies. Returns its two histograms.
async fn read(
    mut source: futures_util::stream::SplitStream<Socket>,
    shared: Arc<Shared>,
) -> (Histogram<u64>, Histogram<u64>) {
    let mut latency = histogram();
    let mut scheduled_latency = histogram();
    let mut last_seq: Option<i64> = None;
    // Waited on across frames: a `cancelled()` made per frame would
    // register with the token's shared lock at every delivery, in every
    // reader at once.
    let stop = shared.stop.clone();
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let frame = tokio::select! {
            frame = source.next() => frame,
            () = &mut stopped => break,
        };
        let Some(Ok(frame)) = frame else { break };
        let Message::Text(text) = frame else { continue };
        let text = text.as_str();
        if !text.starts_with("{\"message\"") {
            if text.starts_with("{\"error\"") {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        let now = shared.now();
        let (Some(seq), Some(content)) = (
            number_after(text, "\"seq\":"),
            string_after(text, "\"content\":\""),
        ) else {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match last_seq {
            Some(last) if seq <= last => {
                shared.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Some(last) if seq != last + 1 => {
                shared.reordered.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        last_seq = Some(seq);
        let mut parts = content.split(':').map(|p| p.parse::<u64>().unwrap_or(0));
        let (sender, slot, scheduled, sent_at) = (
            parts.next().unwrap_or(0) as usize,
            parts.next().unwrap_or(0) as usize,
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        );
        if let Some(owed) = shared.owed.get(sender).and_then(|slots| slots.get(slot))
            && owed.fetch_sub(1, Ordering::AcqRel) == 1
        {
            shared.permits[sender].add_permits(1);
        }
        if shared.measured(scheduled) {
            shared.received.fetch_add(1, Ordering::Relaxed);
            latency.saturating_record(now.saturating_sub(sent_at) / 1000);
            scheduled_latency.saturating_record(now.saturating_sub(scheduled) / 1000);
        }
    }
    (latency, scheduled_latency)
}

fn number_after(text: &str, key: &str) -> Option<i64> {
    let start = text.find(key)? + key.len();
    let digits: &str = &text[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

fn string_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let rest = &text[start..];
    Some(&rest[..rest.find('"')?])
}
