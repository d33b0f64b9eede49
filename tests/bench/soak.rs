//! `parley-bench soak`: hours of steady traffic on the distributed
//! topology, in segments; each segment opens its connections afresh (so
//! joins, leaves and reconnects run all along), sends at a steady rate
//! while history pages are read beside it, and is followed by a sample of
//! every process's memory, open files, threads and tokio tasks.
//! RELIABILITY.md reports the last run.

use std::{
    io::Write as _,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use parley_tests::gateway::try_http;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::{
    FanoutArgs, fanout,
    proc_stats::{open_fds, rss_kib, threads},
    suite::{SuiteArgs, Topology, bin_dir, start},
};

/// Messages in the room whose history is read during every segment.
const HISTORY_MESSAGES: i64 = 200;
/// Messages per history page read.
const PAGE: i64 = 50;

/// What the soak does.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SoakArgs {
    #[command(flatten)]
    suite: SuiteArgs,
    /// How long in all.
    #[arg(long, default_value = "60m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// One segment: its connections, its traffic, then a sample.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    segment: Duration,
    /// Messages per second while a segment runs.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Connections per segment, spread over both gateways.
    #[arg(long, default_value_t = 300)]
    connections: usize,
    /// History pages read per second while a segment runs.
    #[arg(long, default_value_t = 20.0)]
    history_rate: f64,
}

/// Runs the soak and prints one JSON line per segment, then a summary.
///
/// # Errors
/// When the topology cannot start or a segment cannot run.
pub(crate) async fn run(args: &SoakArgs) -> anyhow::Result<()> {
    let topology: Topology = start("distributed", &args.suite, &bin_dir(&args.suite)?).await?;
    let started = Instant::now();
    let mut samples: Vec<Value> = Vec::new();
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.suite.out()?)?;
    let history = Arc::new(HistoryRoom::fill(&topology).await?);
    let mut segment = 0;
    while started.elapsed() < args.duration {
        segment += 1;
        let stop_reading = CancellationToken::new();
        let reader =
            tokio::spawn(Arc::clone(&history).read(args.history_rate, stop_reading.clone()));
        let fanout_args = FanoutArgs {
            target: topology.target(),
            connections: args.connections,
            rooms: (args.connections / 10).max(1),
            senders: (args.connections / 10).max(1),
            rate: args.rate,
            window: 16,
            warmup: Duration::from_secs(2),
            duration: args.segment,
            drain: Duration::from_secs(5),
        };
        let report = fanout::run(&fanout_args, "soak").await;
        stop_reading.cancel();
        let reads = reader.await.context("the history reader failed")?;
        let mut json: Value = serde_json::from_str(&report?.json())?;
        json["segment"] = segment.into();
        json["elapsed_s"] = started.elapsed().as_secs().into();
        json["history"] = reads.json();
        for (pid, role, admin) in topology.processes() {
            let entry = &mut json["processes"][format!("{role}-{pid}")];
            entry["rss_kib"] = rss_kib(pid).into();
            entry["open_fds"] = open_fds(pid).into();
            entry["threads"] = threads(pid).into();
            if let Some(admin) = admin {
                entry["tasks_alive"] = tasks_alive(admin).await.into();
            }
        }
        writeln!(out, "{json}")?;
        println!("{json}");
        samples.push(json);
    }
    topology.stop().await;
    println!("{}", summary(&samples));
    Ok(())
}

/// Loss and duplicates over the whole run, and each process's memory and
/// open files after the first segment (the warm-up) against the last.
fn summary(samples: &[Value]) -> Value {
    let total = |key: &str| samples.iter().filter_map(|s| s[key].as_u64()).sum::<u64>();
    let history = |key: &str| {
        samples
            .iter()
            .filter_map(|s| s["history"][key].as_u64())
            .sum::<u64>()
    };
    let p99s: Vec<u64> = samples
        .iter()
        .filter_map(|s| s["latency"]["p99_us"].as_u64())
        .collect();
    let mut growth = serde_json::Map::new();
    if let (Some(first), Some(last)) = (samples.first(), samples.last())
        && let Some(processes) = first["processes"].as_object()
    {
        for (name, before) in processes {
            let after = &last["processes"][name];
            let (rss0, rss1) = (before["rss_kib"].as_f64(), after["rss_kib"].as_f64());
            if let (Some(rss0), Some(rss1)) = (rss0, rss1) {
                growth.insert(
                    name.clone(),
                    serde_json::json!({
                        "rss_kib_first": rss0,
                        "rss_kib_last": rss1,
                        "rss_growth_pct": ((rss1 - rss0) / rss0.max(1.0) * 1000.0).round() / 10.0,
                        "open_fds_first": before["open_fds"],
                        "open_fds_last": after["open_fds"],
                        "threads_first": before["threads"],
                        "threads_last": after["threads"],
                        "tasks_alive_first": before["tasks_alive"],
                        "tasks_alive_last": after["tasks_alive"],
                    }),
                );
            }
        }
    }
    serde_json::json!({
        "summary": "soak",
        "segments": samples.len(),
        "sent": total("sent"),
        "received": total("received"),
        "lost": total("lost"),
        "duplicates": total("duplicates"),
        "reordered": total("reordered"),
        "p99_us_by_segment": p99s,
        "history_reads": history("reads"),
        "history_failures": history("failures"),
        "processes": growth,
    })
}

/// A room filled once with [`HISTORY_MESSAGES`], whose pages are read
/// during every segment: history reads in the mix, each checked.
struct HistoryRoom {
    api: SocketAddr,
    token: String,
    room: String,
}

/// One segment's history reads.
struct Reads {
    reads: u64,
    failures: u64,
    latency: Histogram<u64>,
}

impl Reads {
    fn json(&self) -> Value {
        json!({
            "reads": self.reads,
            "failures": self.failures,
            "p99_us": self.latency.value_at_quantile(0.99),
        })
    }
}

impl HistoryRoom {
    async fn fill(topology: &Topology) -> anyhow::Result<Self> {
        let target = topology.target();
        let api = target.api.context("the soak needs the REST API")?;
        let token = crate::users::sign_up(api, 1)
            .await?
            .pop()
            .context("no user for the history room")?;
        let room = format!("soak-history-{}", std::process::id());
        let mut socket = fanout::open_as(api, Some(token.clone()), &room).await?;
        for i in 0..HISTORY_MESSAGES {
            let frame = json!({"send": {"room_id": room, "content": format!("h{i}"), "client_id": format!("h{i}")}});
            socket.send(Message::text(frame.to_string())).await?;
            loop {
                let frame = socket
                    .next()
                    .await
                    .context("the history room's connection closed")??;
                if let Message::Text(text) = frame {
                    if text.as_str().starts_with("{\"ack\"") {
                        break;
                    }
                    anyhow::ensure!(
                        !text.as_str().starts_with("{\"error\""),
                        "filling the history room: {text}"
                    );
                }
            }
        }
        socket.close(None).await.ok();
        Ok(Self { api, token, room })
    }

    /// Reads pages at `rate` until `stop`, each checked: a full page of
    /// consecutive seqs ending just before the page's `before_seq`. Each
    /// segment's reader is a new user with a fresh token: one signed in at
    /// the start would outlive its access token (15 minutes) within the
    /// hour. The room is public, so any user may read it.
    async fn read(self: Arc<Self>, rate: f64, stop: CancellationToken) -> Reads {
        let token = match crate::users::sign_up(self.api, 1).await {
            Ok(mut tokens) => tokens.pop().unwrap_or_else(|| self.token.clone()),
            Err(_) => self.token.clone(),
        };
        let mut reads = Reads {
            reads: 0,
            failures: 0,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).expect("a histogram")),
        };
        let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
        let authorization = format!("Bearer {token}");
        let span = HISTORY_MESSAGES - PAGE + 1;
        let mut i: i64 = 0;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = stop.cancelled() => return reads,
            }
            let before = PAGE + 1 + (i * 37) % span;
            i += 1;
            let path = format!(
                "/api/v1/rooms/{}/messages?limit={PAGE}&before_seq={before}",
                self.room
            );
            let started = Instant::now();
            let answer = try_http(
                self.api,
                "GET",
                &path,
                &[("Authorization", authorization.as_str())],
                None,
            )
            .await;
            let elapsed = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            reads.latency.record(elapsed.max(1)).ok();
            reads.reads += 1;
            let expected: Vec<i64> = (before - PAGE..before).collect();
            let good = answer
                .ok()
                .filter(|answer| answer.status == 200)
                .is_some_and(|answer| {
                    let body: Value = serde_json::from_str(&answer.body).unwrap_or_default();
                    let seqs: Vec<i64> = body["messages"]
                        .as_array()
                        .map(|messages| messages.iter().filter_map(|m| m["seq"].as_i64()).collect())
                        .unwrap_or_default();
                    seqs == expected
                });
            if !good {
                reads.failures += 1;
            }
        }
    }
}

/// A process's `parley_runtime_tasks_alive`, or 0 when it cannot be read.
async fn tasks_alive(admin: SocketAddr) -> u64 {
    let Ok(answer) = try_http(admin, "GET", "/metrics", &[], None).await else {
        return 0;
    };
    answer
        .body
        .lines()
        .find_map(|line| line.strip_prefix("parley_runtime_tasks_alive "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}
