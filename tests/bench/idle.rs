//! Idle connections: what each costs the servers in memory.

use std::time::Duration;

use futures_util::{StreamExt as _, stream};
use serde_json::json;

use crate::{IdleArgs, proc_stats::rss_kib};

/// What an idle run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    pub(crate) connections: usize,
    pub(crate) rooms: usize,
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_after_kib: u64,
    /// Growth of each process (KiB), in the order of the pids given.
    pub(crate) grown_kib: Vec<u64>,
}

impl Report {
    /// Server memory per idle connection, summed over every process.
    pub(crate) fn kib_per_connection(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64
            / self.connections.max(1) as f64
    }

    /// The one-line JSON summary.
    pub(crate) fn json(&self) -> String {
        json!({
            "scenario": "connections",
            "connections": self.connections,
            "rooms": self.rooms,
            "rss_before_kib": self.rss_before_kib,
            "rss_after_kib": self.rss_after_kib,
            "kib_per_connection": (self.kib_per_connection() * 100.0).round() / 100.0,
        })
        .to_string()
    }
}

/// Opens the connections, holds them, and reads the servers' memory.
pub(crate) async fn run(args: &IdleArgs) -> anyhow::Result<Report> {
    let tokens = match args.target.api {
        Some(api) => crate::users::sign_up(api, args.target.users(args.connections)).await?,
        None => Vec::new(),
    };
    let before: Vec<u64> = args.pids.iter().map(|pid| rss_kib(*pid)).collect();
    let gateways = &args.target.gateways;
    let rooms = args.rooms.max(1);
    let prefix = format!("idle{:x}", std::process::id());
    let sockets: Vec<_> = stream::iter(0..args.connections)
        .map(|i| {
            let gateway = gateways[(i / rooms + i % rooms) % gateways.len()];
            let token = (!tokens.is_empty()).then(|| tokens[i % tokens.len()].clone());
            let room = format!("{prefix}-{}", i % rooms);
            async move { crate::fanout::open_as(gateway, token, &room).await }
        })
        .buffered(128)
        .collect()
        .await;
    let sockets = sockets.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    tokio::time::sleep(args.hold).await;
    let after: Vec<u64> = args.pids.iter().map(|pid| rss_kib(*pid)).collect();
    // Growth per process: a process that shrank meanwhile (auth handing
    // back the memory of password hashing) does not offset the others.
    let grown_kib: Vec<u64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.saturating_sub(*b))
        .collect();
    let grown: u64 = grown_kib.iter().sum();
    let rss_before_kib = before.iter().sum::<u64>();
    let rss_after_kib = rss_before_kib + grown;
    drop(sockets);
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(Report {
        connections: args.connections,
        rooms,
        rss_before_kib,
        rss_after_kib,
        grown_kib,
    })
}
