//! `parley-bench soak`: hours of steady traffic on the distributed
//! topology, in segments; each segment opens its connections afresh (so
//! joins, leaves and reconnects run all along), sends at a steady rate,
//! and is followed by a sample of every process's memory and open files.
//! RELIABILITY.md reports the last run.

use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    FanoutArgs, fanout,
    proc_stats::{open_fds, rss_kib},
    suite::{SuiteArgs, Topology, bin_dir, start},
};

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
    let mut segment = 0;
    while started.elapsed() < args.duration {
        segment += 1;
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
        let report = fanout::run(&fanout_args, "soak").await?;
        let mut json: Value = serde_json::from_str(&report.json())?;
        json["segment"] = segment.into();
        json["elapsed_s"] = started.elapsed().as_secs().into();
        for (pid, role) in topology.pids().into_iter().zip(topology.roles()) {
            let entry = &mut json["processes"][format!("{role}-{pid}")];
            entry["rss_kib"] = rss_kib(pid).into();
            entry["open_fds"] = open_fds(pid).into();
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
        "processes": growth,
    })
}
