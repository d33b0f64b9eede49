//! The standard suite of `make bench`: the distributed topology as a
//! deployment has it (auth, user, two chat replicas on this machine's
//! Postgres and Redis, two gateways each balanced over both replicas, as
//! behind a headless Service), the all-in-one binary (SQLite,
//! in-process bus) and the ceiling server, each started here as processes
//! on loopback, each put through scenarios (a)-(d), the room list (e) for
//! the two Parley topologies, and one table.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use parley_tests::{
    gateway::{free_ports, wait_until_ready},
    redis_cluster::RedisCluster,
};
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::{
    FanoutArgs, IdleArgs, Target, fanout,
    proc_stats::{cpu_seconds, pids_named, pss_kib, rss_kib, run_queue_wait_seconds},
};

/// The suite's settings.
#[derive(Debug, Clone, Args)]
pub(crate) struct SuiteArgs {
    /// Where the release binaries are; defaults to this binary's folder.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The Postgres server of the distributed topology; the database
    /// `parley_bench` is created afresh on it.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    postgres: String,
    /// The Redis of the distributed topology.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Where the JSON lines of every run are appended.
    #[arg(long, default_value = "target/bench/results.jsonl")]
    out: PathBuf,
    /// Short windows and fewer idle connections, for a smoke run.
    #[arg(long)]
    quick: bool,
    /// Only these topologies: ceiling, distributed, cluster (the saturation
    /// scenario on a local Redis Cluster), all-in-one.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only these scenarios: a, b, c, d, e, f (attachments).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Runtime worker threads of each Parley process (TOKIO_WORKER_THREADS);
    /// unset means one per core.
    #[arg(long)]
    worker_threads: Option<usize>,
}

/// `--worker-threads`, for every server process the suite starts.
static WORKER_THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// The stores a storing topology uses: its role name and the program's.
const STORES: &[(&str, &str)] = &[("postgres", "postgres"), ("redis", "redis-server")];

/// The stores' processes, found by name, each with its store's role: every
/// Postgres process (postmaster, backends, writers) and every redis-server
/// (six on the cluster topology). Nothing else on the machine uses them
/// during a run.
fn store_processes() -> Vec<(u32, &'static str)> {
    STORES
        .iter()
        .flat_map(|(role, program)| pids_named(program).into_iter().map(move |pid| (pid, *role)))
        .collect()
}

/// Sums `measure` of each process per role, roles in first-seen order.
fn by_role(
    processes: Vec<(u32, &'static str)>,
    measure: impl Fn(u32) -> f64,
) -> Vec<(&'static str, f64)> {
    let mut split: Vec<(&'static str, f64)> = Vec::new();
    for (pid, role) in processes {
        let value = measure(pid);
        match split.iter_mut().find(|(r, _)| *r == role) {
            Some((_, total)) => *total += value,
            None => split.push((role, value)),
        }
    }
    split
}

/// A topology started for the suite.
pub(crate) struct Topology {
    name: &'static str,
    gateways: Vec<SocketAddr>,
    /// Where the attachment routes are: the gateways, or the ceiling's
    /// file server.
    files: Vec<SocketAddr>,
    api: Option<SocketAddr>,
    /// A chat service's gRPC address, for the room list.
    chat: Option<SocketAddr>,
    children: Vec<Child>,
    /// The role of each child, for the CPU split.
    roles: Vec<&'static str>,
    /// Each child's admin address (metrics), where it has one.
    admins: Vec<Option<SocketAddr>>,
    /// The Redis Cluster of the `cluster` topology, stopped with it.
    redis_cluster: Option<RedisCluster>,
    _dir: Option<TempDir>,
}

impl Topology {
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(Child::id).collect()
    }

    /// The generator's view of it: users are few, as the suite lifts the
    /// per-user connection limit.
    pub(crate) fn target(&self) -> Target {
        Target {
            gateways: self.gateways.clone(),
            api: self.api,
            users: Some(8),
        }
    }

    /// Whether this topology stores in this machine's Postgres and Redis.
    fn uses_stores(&self) -> bool {
        matches!(self.name, "distributed" | "cluster")
    }

    /// Each Parley process and its role.
    fn parley_processes(&self) -> Vec<(u32, &'static str)> {
        self.processes()
            .into_iter()
            .map(|(pid, role, _)| (pid, role))
            .collect()
    }

    /// Every server process and its role: the Parley processes, and the
    /// stores' for a topology that uses them.
    fn server_processes(&self) -> Vec<(u32, &'static str)> {
        let mut all = self.parley_processes();
        if self.uses_stores() {
            all.extend(store_processes());
        }
        all
    }

    fn server_cpu(&self) -> f64 {
        self.server_processes()
            .into_iter()
            .map(|(pid, _)| cpu_seconds(pid))
            .sum()
    }

    fn server_run_queue_wait(&self) -> f64 {
        self.server_processes()
            .into_iter()
            .map(|(pid, _)| run_queue_wait_seconds(pid))
            .sum()
    }

    /// Seconds waited for a core so far, per role, the stores included.
    fn run_queue_wait_by_role(&self) -> Vec<(&'static str, f64)> {
        by_role(self.server_processes(), run_queue_wait_seconds)
    }

    /// The stores' memory now, per store (PSS, so shared buffers count
    /// once); empty for a topology without them.
    fn store_pss_kib(&self) -> Vec<(&'static str, f64)> {
        if !self.uses_stores() {
            return Vec::new();
        }
        by_role(store_processes(), |pid| pss_kib(pid) as f64)
    }

    /// CPU seconds per role so far (roles repeat for replicas).
    fn cpu_by_role(&self) -> Vec<(&'static str, f64)> {
        (self.cpu_probe())()
    }

    /// Reads CPU seconds per role, Postgres and Redis included, whenever
    /// called (the fan-out reads it at the edges of its measured window).
    pub(crate) fn cpu_probe(&self) -> crate::fanout::Probe {
        let roles = self.parley_processes();
        let stores = self.uses_stores();
        std::sync::Arc::new(move || {
            let mut all = roles.clone();
            if stores {
                all.extend(store_processes());
            }
            by_role(all, cpu_seconds)
        })
    }

    /// Each running process: its pid, role and admin address (if any).
    pub(crate) fn processes(&self) -> Vec<(u32, &'static str, Option<SocketAddr>)> {
        self.children
            .iter()
            .zip(self.roles.iter().zip(&self.admins))
            .filter_map(|(child, (role, admin))| Some((child.id()?, *role, *admin)))
            .collect()
    }

    pub(crate) async fn stop(mut self) {
        for child in &mut self.children {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
        }
        for child in &mut self.children {
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
            let _ = child.kill().await;
        }
    }
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("parley-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spawn(
    bin_dir: &Path,
    program: &str,
    dir: &Path,
    env: &[(&str, String)],
) -> anyhow::Result<Child> {
    let mut command = Command::new(bin_dir.join(program));
    if let Some(threads) = WORKER_THREADS.get() {
        command.env("TOKIO_WORKER_THREADS", threads.to_string());
    }
    command
        .current_dir(dir)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .env("SHUTDOWN_GRACE", "2s")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {program} (build with `cargo build --release`)"))
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Limits out of the way: the suite measures throughput, not the limits.
const OPEN_LIMITS: &[(&str, &str)] = &[
    ("GATEWAY_MAX_CONNECTIONS_PER_USER", "1000000"),
    ("GATEWAY_AUTH_ATTEMPTS", "1000000"),
    ("AUTH_LOGIN_ATTEMPTS", "1000000"),
    ("CHAT_SENDS_PER_SECOND", "1000000"),
    ("CHAT_SEND_BURST", "1000000"),
    ("CHAT_JOINS_PER_SECOND", "1000000"),
    ("CHAT_JOIN_BURST", "1000000"),
    ("CHAT_MAX_SESSIONS_PER_USER", "1000000"),
];

fn with_limits(mut env: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
    env.extend(OPEN_LIMITS.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

async fn distributed(args: &SuiteArgs, bin_dir: &Path) -> anyhow::Result<Topology> {
    let status = Command::new("psql")
        .arg(format!("{}/postgres", args.postgres))
        .args([
            "-q",
            "-c",
            "DROP DATABASE IF EXISTS parley_bench WITH (FORCE)",
            "-c",
            "CREATE DATABASE parley_bench",
        ])
        .status()
        .await
        .context("running psql")?;
    anyhow::ensure!(status.success(), "cannot create the parley_bench database");
    let database = format!("{}/parley_bench", args.postgres);
    let dir = TempDir::new("distributed")?;
    let p = free_ports(14).await;
    let (auth, user, chat1, chat2, gw_a, gw_b, media) = (p[0], p[1], p[2], p[3], p[4], p[5], p[13]);
    let mut children = Vec::new();
    let roles = vec![
        "auth", "user", "chat", "chat", "gateway", "gateway", "media",
    ];
    children.push(spawn(
        bin_dir,
        "parley-auth",
        &dir.0,
        &[
            ("AUTH_GRPC_ADDR", addr(auth)),
            ("AUTH_ADMIN_ADDR", addr(p[6])),
            ("AUTH_DATABASE_URL", database.clone()),
            ("USER_URL", url(user)),
        ],
    )?);
    children.push(spawn(
        bin_dir,
        "parley-user",
        &dir.0,
        &[
            ("USER_GRPC_ADDR", addr(user)),
            ("USER_ADMIN_ADDR", addr(p[7])),
            ("USER_DATABASE_URL", database.clone()),
            ("AUTH_URL", url(auth)),
        ],
    )?);
    for (grpc, admin) in [(chat1, p[8]), (chat2, p[9])] {
        children.push(spawn(
            bin_dir,
            "parley-chat",
            &dir.0,
            &with_limits(vec![
                ("CHAT_GRPC_ADDR", addr(grpc)),
                ("CHAT_ADMIN_ADDR", addr(admin)),
                ("CHAT_DATABASE_URL", database.clone()),
                ("CHAT_REDIS_URL", args.redis.clone()),
                // Signed bus events, as a deployment has them.
                ("CHAT_BUS_SECRET", "bench bus secret".to_owned()),
                ("AUTH_URL", url(auth)),
                ("MEDIA_URL", url(media)),
            ]),
        )?);
    }
    // Every gateway balances over every replica, as behind the chart's
    // headless Service (README, "Installing with Helm").
    let chat_url = format!("{},{}", url(chat1), url(chat2));
    for (http, admin) in [(gw_a, p[10]), (gw_b, p[11])] {
        children.push(spawn(
            bin_dir,
            "parley-gateway",
            &dir.0,
            &with_limits(vec![
                ("GATEWAY_HTTP_ADDR", addr(http)),
                ("GATEWAY_ADMIN_ADDR", addr(admin)),
                ("AUTH_URL", url(auth)),
                ("USER_URL", url(user)),
                ("CHAT_URL", chat_url.clone()),
                ("MEDIA_URL", url(media)),
            ]),
        )?);
    }
    // Chat checks attachments there too; the bench's files go to a folder.
    children.push(spawn(
        bin_dir,
        "parley-media",
        &dir.0,
        &[
            ("MEDIA_GRPC_ADDR", addr(media)),
            ("MEDIA_ADMIN_ADDR", addr(p[12])),
            ("MEDIA_DATABASE_URL", database.clone()),
            (
                "MEDIA_STORE_URL",
                format!("file://{}", dir.0.join("media").display()),
            ),
            ("AUTH_URL", url(auth)),
        ],
    )?);
    // The admin ports, in the order of `children` and `roles`.
    for admin in &p[6..13] {
        wait_until_ready(([127, 0, 0, 1], *admin).into()).await;
    }
    let gateways: Vec<SocketAddr> =
        vec![([127, 0, 0, 1], gw_a).into(), ([127, 0, 0, 1], gw_b).into()];
    Ok(Topology {
        name: "distributed",
        files: gateways.clone(),
        gateways,
        api: Some(([127, 0, 0, 1], gw_a).into()),
        chat: Some(([127, 0, 0, 1], chat1).into()),
        children,
        roles,
        admins: p[6..13]
            .iter()
            .map(|port| Some(([127, 0, 0, 1], *port).into()))
            .collect(),
        redis_cluster: None,
        _dir: Some(dir),
    })
}

async fn all_in_one(bin_dir: &Path) -> anyhow::Result<Topology> {
    let dir = TempDir::new("all-in-one")?;
    let p = free_ports(10).await;
    let env = with_limits(vec![
        ("AUTH_GRPC_ADDR", addr(p[0])),
        ("USER_GRPC_ADDR", addr(p[1])),
        ("CHAT_GRPC_ADDR", addr(p[2])),
        ("GATEWAY_HTTP_ADDR", addr(p[3])),
        ("AUTH_ADMIN_ADDR", addr(p[4])),
        ("USER_ADMIN_ADDR", addr(p[5])),
        ("CHAT_ADMIN_ADDR", addr(p[6])),
        ("GATEWAY_ADMIN_ADDR", addr(p[7])),
        ("MEDIA_GRPC_ADDR", addr(p[8])),
        ("MEDIA_ADMIN_ADDR", addr(p[9])),
        ("AUTH_URL", url(p[0])),
        ("USER_URL", url(p[1])),
        ("CHAT_URL", url(p[2])),
        ("MEDIA_URL", url(p[8])),
    ]);
    let children = vec![spawn(bin_dir, "parley", &dir.0, &env)?];
    wait_until_ready(([127, 0, 0, 1], p[7]).into()).await;
    Ok(Topology {
        name: "all-in-one",
        gateways: vec![([127, 0, 0, 1], p[3]).into()],
        files: vec![([127, 0, 0, 1], p[3]).into()],
        api: Some(([127, 0, 0, 1], p[3]).into()),
        chat: Some(([127, 0, 0, 1], p[2]).into()),
        children,
        roles: vec!["parley"],
        admins: vec![Some(([127, 0, 0, 1], p[7]).into())],
        redis_cluster: None,
        _dir: Some(dir),
    })
}

async fn ceiling() -> anyhow::Result<Topology> {
    let ports = free_ports(2).await;
    let (port, files) = (ports[0], ports[1]);
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .args([
            "ceiling",
            "--listen",
            &addr(port),
            "--files-listen",
            &addr(files),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let gateway: SocketAddr = ([127, 0, 0, 1], port).into();
    let up = tokio::time::timeout(Duration::from_secs(10), async {
        while tokio::net::TcpStream::connect(gateway).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    anyhow::ensure!(up.is_ok(), "the ceiling server did not start");
    Ok(Topology {
        name: "ceiling",
        gateways: vec![gateway],
        files: vec![([127, 0, 0, 1], files).into()],
        api: None,
        chat: None,
        children: vec![child],
        roles: vec!["ceiling"],
        admins: vec![None],
        redis_cluster: None,
        _dir: None,
    })
}

pub(crate) async fn start(
    name: &str,
    args: &SuiteArgs,
    bin_dir: &Path,
) -> anyhow::Result<Topology> {
    match name {
        "ceiling" => ceiling().await,
        "distributed" => distributed(args, bin_dir).await,
        "cluster" => on_a_redis_cluster(args, bin_dir).await,
        _ => all_in_one(bin_dir).await,
    }
}

/// The distributed topology with chat on a Redis Cluster of three
/// primaries and three replicas on this machine (sharded pub/sub), for the
/// saturation row against a single Redis.
async fn on_a_redis_cluster(args: &SuiteArgs, bin_dir: &Path) -> anyhow::Result<Topology> {
    let cluster = RedisCluster::start().await;
    let args = SuiteArgs {
        redis: cluster.url(),
        ..args.clone()
    };
    let mut topology = distributed(&args, bin_dir).await?;
    topology.name = "cluster";
    topology.redis_cluster = Some(cluster);
    Ok(topology)
}

/// One row of the table.
struct Row {
    topology: &'static str,
    scenario: &'static str,
    json: Value,
}

/// Runs the suite and prints the table.
/// Where the release binaries are: `--bin-dir`, or this binary's folder.
///
/// # Errors
/// When this binary's path is unknown.
pub(crate) fn bin_dir(args: &SuiteArgs) -> anyhow::Result<PathBuf> {
    Ok(match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the binary's folder")?
            .to_path_buf(),
    })
}

impl SuiteArgs {
    /// Where the JSON lines go, its folder created.
    ///
    /// # Errors
    /// When the folder cannot be created.
    pub(crate) fn out(&self) -> anyhow::Result<&Path> {
        if let Some(parent) = self.out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        Ok(&self.out)
    }
}

pub(crate) async fn run(args: &SuiteArgs) -> anyhow::Result<()> {
    let bin_dir = bin_dir(args)?;
    if let Some(threads) = args.worker_threads {
        let _ = WORKER_THREADS.set(threads);
    }
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let (seconds, idle) = if args.quick { (5, 2_000) } else { (20, 10_000) };
    let window = Duration::from_secs(seconds);
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)?;
    let mut rows = Vec::new();
    for name in ["ceiling", "distributed", "cluster", "all-in-one"] {
        if !wanted(name) {
            continue;
        }
        eprintln!("== {name}");
        let topology = start(name, args, &bin_dir).await?;
        let target = topology.target();
        let fanout_args = |connections, rooms, senders, rate: f64| FanoutArgs {
            target: target.clone(),
            connections,
            rooms,
            senders,
            rate,
            window: 16,
            warmup: Duration::from_secs(3),
            duration: window,
            drain: Duration::from_secs(5),
        };
        let scenarios: [(&'static str, FanoutArgs); 3] = [
            ("a", fanout_args(1000, 100, 100, 2000.0)),
            ("b", fanout_args(1000, 100, 100, 0.0)),
            ("c", fanout_args(2000, 1, 5, 100.0)),
        ];
        let run_scenario =
            |s: &str| args.scenarios.is_empty() || args.scenarios.iter().any(|o| o == s);
        for (scenario, fanout) in scenarios {
            // The cluster row is the saturation scenario only.
            if !run_scenario(scenario) || (name == "cluster" && scenario != "b") {
                continue;
            }
            eprintln!(
                "   ({scenario}) {} connections, {} rooms, {} senders, rate {}",
                fanout.connections, fanout.rooms, fanout.senders, fanout.rate
            );
            let (server_before, bench_before) =
                (topology.server_cpu(), cpu_seconds(std::process::id()));
            let roles_before = topology.cpu_by_role();
            let role_waits_before = topology.run_queue_wait_by_role();
            let waits_before = (
                topology.server_run_queue_wait(),
                run_queue_wait_seconds(std::process::id()),
            );
            let report = fanout::run_probed(&fanout, scenario, Some(topology.cpu_probe())).await?;
            let (server_cpu, bench_cpu) = (
                topology.server_cpu() - server_before,
                cpu_seconds(std::process::id()) - bench_before,
            );
            let (server_wait, bench_wait) = (
                topology.server_run_queue_wait() - waits_before.0,
                run_queue_wait_seconds(std::process::id()) - waits_before.1,
            );
            let tenths = |seconds: f64| (seconds * 10.0).round() / 10.0;
            let mut json: Value = serde_json::from_str(&report.json())?;
            json["topology"] = topology.name.into();
            json["server_cpu_s"] = tenths(server_cpu).into();
            json["bench_cpu_s"] = tenths(bench_cpu).into();
            json["server_run_queue_wait_s"] = tenths(server_wait).into();
            json["bench_run_queue_wait_s"] = tenths(bench_wait).into();
            for ((role, after), (_, before)) in topology.cpu_by_role().into_iter().zip(roles_before)
            {
                json["cpu_by_role_s"][role] = tenths(after - before).into();
            }
            for (role, after) in topology.run_queue_wait_by_role() {
                let before = role_waits_before
                    .iter()
                    .find_map(|(r, w)| (*r == role).then_some(*w))
                    .unwrap_or(0.0);
                json["run_queue_wait_by_role_s"][role] = tenths(after - before).into();
            }
            for (store, kib) in topology.store_pss_kib() {
                json["store_pss_kib"][store] = kib.into();
            }
            // CPU per delivery over the measured window alone, where the
            // deliveries are counted.
            if report.received > 0 {
                for (role, cpu) in &report.probed {
                    let us = cpu * 1e6 / report.received as f64;
                    json["us_per_delivery_by_role"][*role] = ((us * 10.0).round() / 10.0).into();
                }
            }
            writeln!(out, "{json}")?;
            println!("{json}");
            rows.push(Row {
                topology: topology.name,
                scenario,
                json,
            });
        }
        if let (true, Some(api), Some(chat)) = (run_scenario("e"), topology.api, topology.chat) {
            let rooms_args = crate::rooms::RoomsArgs {
                api,
                chat,
                rooms: 500,
                messages: if args.quick { 20_000 } else { 100_000 },
                concurrency: 64,
                calls: 200,
            };
            eprintln!("   (e) the room list of a member of 500 rooms");
            let report = crate::rooms::run(&rooms_args).await?;
            let mut json: Value = serde_json::from_str(&report.json())?;
            json["topology"] = topology.name.into();
            writeln!(out, "{json}")?;
            println!("{json}");
            rows.push(Row {
                topology: topology.name,
                scenario: "e",
                json,
            });
        }
        if run_scenario("f") && name != "cluster" {
            // Eight clients, each with a 1 MiB file in flight: up through
            // one gateway, down through the other, then deleted.
            let token = match topology.api {
                Some(api) => crate::users::sign_up(api, 1).await?.pop(),
                None => None,
            };
            let files_args = crate::files::FilesArgs {
                gateways: topology.files.clone(),
                token,
                clients: 8,
                size: 1024 * 1024,
                warmup: Duration::from_secs(2),
                duration: window,
                watch: topology
                    .processes()
                    .into_iter()
                    .filter(|(_, role, _)| {
                        matches!(*role, "gateway" | "media" | "parley" | "ceiling")
                    })
                    .map(|(pid, role, _)| (pid, role))
                    .collect(),
            };
            eprintln!(
                "   (f) {} clients moving {} KiB files",
                files_args.clients,
                files_args.size / 1024
            );
            let report = crate::files::run(&files_args, Some(topology.cpu_probe())).await?;
            let mut json: Value = serde_json::from_str(&report.json())?;
            json["topology"] = topology.name.into();
            writeln!(out, "{json}")?;
            println!("{json}");
            rows.push(Row {
                topology: topology.name,
                scenario: "f",
                json,
            });
        }
        if !run_scenario("d") {
            topology.stop().await;
            continue;
        }
        // Memory per connection on a fresh start: the processes above have
        // grown pools and caches that would hide the connections' cost.
        topology.stop().await;
        let topology = start(name, args, &bin_dir).await?;
        let target = topology.target();
        eprintln!("   (d) {idle} idle connections");
        let idle_args = IdleArgs {
            target: target.clone(),
            connections: idle,
            rooms: idle / 10,
            hold: Duration::from_secs(5),
            pids: topology.pids(),
        };
        let report = crate::idle::run(&idle_args).await?;
        let mut json: Value = serde_json::from_str(&report.json())?;
        json["topology"] = topology.name.into();
        json["server_rss_kib"] = topology.pids().into_iter().map(rss_kib).sum::<u64>().into();
        for (store, kib) in topology.store_pss_kib() {
            json["store_pss_kib"][store] = kib.into();
        }
        for (role, grown) in topology.roles.iter().zip(&report.grown_kib) {
            let entry = &mut json["kib_per_connection_by_role"][*role];
            let total = entry.as_f64().unwrap_or(0.0) + *grown as f64 / idle as f64;
            *entry = ((total * 100.0).round() / 100.0).into();
        }
        writeln!(out, "{json}")?;
        println!("{json}");
        rows.push(Row {
            topology: topology.name,
            scenario: "d",
            json,
        });
        topology.stop().await;
    }
    print_table(&rows);
    Ok(())
}

fn print_table(rows: &[Row]) {
    let ceiling = |scenario: &str| {
        rows.iter()
            .find(|r| r.topology == "ceiling" && r.scenario == scenario)
            .and_then(|r| r.json["delivered_per_s"].as_f64())
    };
    println!();
    println!(
        "{:<12} {:<3} {:>9} {:>11} {:>7} {:>5} {:>5} {:>8} {:>8} {:>9} {:>9} {:>10} {:>8} {:>10} {:>10}",
        "topology",
        "",
        "sent/s",
        "delivered/s",
        "lost",
        "dup",
        "order",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "sched p99",
        "ceiling",
        "cpu srv/gen",
        "rq srv/gen"
    );
    let ms = |v: &Value| {
        v.as_f64()
            .map_or(String::from("-"), |us| format!("{:.2}", us / 1000.0))
    };
    for row in rows {
        let j = &row.json;
        if row.scenario == "e" {
            println!(
                "{:<12} {:<3} {} rooms, {} messages: ListMyRooms p50 {} ms, p99 {} ms; GET /api/v1/rooms p50 {} ms, p99 {} ms",
                row.topology,
                row.scenario,
                j["rooms"],
                j["messages"],
                ms(&j["list_my_rooms_p50_us"]),
                ms(&j["list_my_rooms_p99_us"]),
                ms(&j["rest_rooms_p50_us"]),
                ms(&j["rest_rooms_p99_us"])
            );
            continue;
        }
        if row.scenario == "f" {
            let of_ceiling = rows
                .iter()
                .find(|r| r.topology == "ceiling" && r.scenario == "f")
                .and_then(|r| r.json["mib_per_s_each_way"].as_f64());
            let fraction = match (j["mib_per_s_each_way"].as_f64(), of_ceiling) {
                (Some(m), Some(c)) if c > 0.0 => format!("{:.0}% of the ceiling", 100.0 * m / c),
                _ => "-".into(),
            };
            let cpu: f64 = j["us_per_mib_by_role"]
                .as_object()
                .map_or(0.0, |roles| roles.values().filter_map(Value::as_f64).sum());
            println!(
                "{:<12} {:<3} {} files/s, {} MiB/s each way ({fraction}), {} errors; upload p50 {} ms p99 {} ms, download p50 {} ms p99 {} ms; {cpu:.0} µs CPU per MiB; peak RSS {}",
                row.topology,
                row.scenario,
                j["files_per_s"],
                j["mib_per_s_each_way"],
                j["errors"],
                ms(&j["upload"]["p50_us"]),
                ms(&j["upload"]["p99_us"]),
                ms(&j["download"]["p50_us"]),
                ms(&j["download"]["p99_us"]),
                j["rss_peak_kib"]
            );
            continue;
        }
        if row.scenario == "d" {
            println!(
                "{:<12} {:<3} {} connections: {} KiB per connection (RSS {} -> {} KiB)",
                row.topology,
                row.scenario,
                j["connections"],
                j["kib_per_connection"],
                j["rss_before_kib"],
                j["rss_after_kib"]
            );
            continue;
        }
        let fraction = match (j["delivered_per_s"].as_f64(), ceiling(row.scenario)) {
            (Some(d), Some(c)) if c > 0.0 => format!("{:.0}%", 100.0 * d / c),
            _ => "-".into(),
        };
        let n = |v: &Value| v.as_f64().map_or(String::from("-"), |x| format!("{x:.0}"));
        println!(
            "{:<12} {:<3} {:>9} {:>11} {:>7} {:>5} {:>5} {:>8} {:>8} {:>9} {:>9} {:>10} {:>8} {:>10} {:>10}",
            row.topology,
            row.scenario,
            n(&j["sent_per_s"]),
            n(&j["delivered_per_s"]),
            n(&j["lost"]),
            n(&j["duplicates"]),
            n(&j["reordered"]),
            ms(&j["latency"]["p50_us"]),
            ms(&j["latency"]["p99_us"]),
            ms(&j["latency"]["p999_us"]),
            ms(&j["latency"]["max_us"]),
            ms(&j["scheduled_latency"]["p99_us"]),
            fraction,
            format!("{}/{}", j["server_cpu_s"], j["bench_cpu_s"]),
            format!(
                "{}/{}",
                j["server_run_queue_wait_s"], j["bench_run_queue_wait_s"]
            )
        );
        if let Some(roles) = j["us_per_delivery_by_role"].as_object() {
            let all: f64 = roles.values().filter_map(Value::as_f64).sum();
            let split: Vec<String> = roles
                .iter()
                .filter(|(_, us)| us.as_f64().is_some_and(|us| us >= 0.05))
                .map(|(role, us)| format!("{role} {us}"))
                .collect();
            println!(
                "{:<12} {:<3} CPU per delivery: {all:.1} µs ({})",
                "",
                "",
                split.join(", ")
            );
        }
        if let Some(stores) = j["store_pss_kib"].as_object() {
            let waits: Vec<String> = j["run_queue_wait_by_role_s"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, s)| s.as_f64().is_some_and(|s| s >= 0.05))
                .map(|(role, s)| format!("{role} {s}"))
                .collect();
            let memory: Vec<String> = stores
                .iter()
                .map(|(store, kib)| format!("{store} {:.0}", kib.as_f64().unwrap_or(0.0) / 1024.0))
                .collect();
            println!(
                "{:<12} {:<3} waited for a core: {} s; stores' memory (PSS): {} MiB",
                "",
                "",
                waits.join(", "),
                memory.join(", ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::OPEN_LIMITS;

    /// The variables a binary reads, from its `--help` (`[env: NAME=...]`).
    fn variables(binary: &str) -> Vec<String> {
        let output = std::process::Command::new(parley_tests::binary(binary))
            .arg("--help")
            .output()
            .unwrap_or_else(|err| panic!("running {binary} --help: {err}"));
        assert!(output.status.success(), "{binary} --help failed");
        String::from_utf8_lossy(&output.stdout)
            .split("[env: ")
            .skip(1)
            .map(|rest| {
                rest.chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect()
            })
            .collect()
    }

    /// Every per-user rate or count limit a service reads is lifted by the
    /// suite, which measures throughput: a limit added without it stops a
    /// scenario midway, as the join limit once stopped (e) at its 101st
    /// join (BENCHMARKS.md, "Method").
    #[test]
    fn the_suite_lifts_every_per_user_limit() {
        let mut limits = Vec::new();
        for binary in [
            "parley-auth",
            "parley-user",
            "parley-chat",
            "parley-media",
            "parley-gateway",
        ] {
            limits.extend(variables(binary).into_iter().filter(|name| {
                ["_PER_SECOND", "_BURST", "_PER_USER", "_ATTEMPTS"]
                    .iter()
                    .any(|kind| name.ends_with(kind))
            }));
        }
        assert!(
            limits.iter().any(|name| name == "CHAT_JOIN_BURST"),
            "the limits are found: {limits:?}"
        );
        for limit in limits {
            assert!(
                OPEN_LIMITS.iter().any(|(name, _)| *name == limit),
                "the suite does not lift {limit}"
            );
        }
    }
}
