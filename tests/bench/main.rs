//! `parley-bench`: Parley's load generator.
//!
//! It registers a few users over the REST API, then speaks the WebSocket
//! protocol of the README ("WebSocket protocol") like real clients: many
//! connections spread over several gateways, rooms with members on every
//! gateway, senders at an open-loop rate or with a bounded in-flight window. Every content carries
//! its scheduled and actual send times, so every receiver records the
//! end-to-end latency and the latency from the schedule (coordinated
//! omission). Each run ends with a one-line JSON summary.
//!
//! `parley-bench suite` runs the standard suite of `make bench` against the
//! distributed topology, the all-in-one binary and the ceiling server (a
//! trivial in-memory broadcast server built in, to show what this machine
//! and this generator can do at all). `parley-bench capacity` measures what
//! SCALING.md's capacity model is built from.

mod capacity;
mod ceiling;
mod fanout;
mod files;
mod grpc;
mod idle;
mod proc_stats;
mod rooms;
mod soak;
mod suite;
mod users;

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

/// Parley's load generator.
#[derive(Debug, Parser)]
#[command(name = "parley-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// C connections in R rooms, S senders: delivery rate, loss, order and latency.
    Fanout(FanoutArgs),
    /// One room of many members across the gateways, a few senders.
    BigRoom(FanoutArgs),
    /// N idle joined connections held for a while: server memory per connection.
    Connections(IdleArgs),
    /// Unary gRPC throughput and latency: SendMessage and GetUser.
    Grpc(grpc::GrpcArgs),
    /// The room list of a member of many busy rooms: ListMyRooms latency.
    Rooms(rooms::RoomsArgs),
    /// Hours of steady traffic on the distributed topology, in segments,
    /// with every process's memory and open files sampled after each.
    Soak(soak::SoakArgs),
    /// Serve the ceiling server until interrupted.
    Ceiling {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Also serve the ceiling of the attachment routes here.
        #[arg(long)]
        files_listen: Option<SocketAddr>,
    },
    /// The standard suite against every topology, printed as one table.
    Suite(suite::SuiteArgs),
    /// Per-role CPU per message and per delivery, fitted and checked, and
    /// memory per connection at two sizes (SCALING.md).
    Capacity(capacity::CapacityArgs),
}

/// Where the load goes.
#[derive(Debug, Clone, Args)]
pub(crate) struct Target {
    /// Gateway addresses (host:port), comma-separated; connections are
    /// spread round-robin over them.
    #[arg(long, value_delimiter = ',', required = true)]
    gateways: Vec<SocketAddr>,
    /// Where to register users over REST; unset for the ceiling server,
    /// which needs no token.
    #[arg(long)]
    api: Option<SocketAddr>,
    /// Users to spread the connections over; by default enough for the
    /// default GATEWAY_MAX_CONNECTIONS_PER_USER (16 per gateway).
    #[arg(long)]
    users: Option<usize>,
}

/// Connections one user opens at most, each joining a room, so a user's
/// joins stay within chat's burst of joins per user.
const JOINS_PER_USER: usize = 60;

impl Target {
    /// How many users `connections` connections need.
    fn users(&self, connections: usize) -> usize {
        self.users
            .unwrap_or_else(|| connections.div_ceil(16 * self.gateways.len().max(1)))
            // Chat takes at most 100 joins at once from one user on a
            // replica, then ten a second; every connection joins a room.
            .max(connections.div_ceil(JOINS_PER_USER))
            .max(2)
    }
}

/// A fan-out run.
#[derive(Debug, Clone, Args)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    target: Target,
    /// WebSocket connections.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Rooms; connections are spread over them, and every room has members
    /// on every gateway.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Connections that send.
    #[arg(long, default_value_t = 100)]
    senders: usize,
    /// Aggregate open-loop send rate (messages per second); 0 means as
    /// fast as the in-flight window allows.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Messages one sender may have in flight (until every member has it)
    /// when `--rate 0`.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Warm-up before measuring.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// The measured window.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Longest wait for late deliveries after the last send.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    drain: Duration,
}

/// An idle-connections run.
#[derive(Debug, Clone, Args)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    target: Target,
    /// Connections to hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Rooms they join.
    #[arg(long, default_value_t = 1000)]
    rooms: usize,
    /// How long to hold them before reading memory.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Server process ids whose resident memory is read from /proc.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("parley-bench: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Fanout(args) | Command::BigRoom(args) => {
                let report = fanout::run(&args, "fanout").await?;
                println!("{}", report.json());
                Ok(())
            }
            Command::Connections(args) => {
                let report = idle::run(&args).await?;
                println!("{}", report.json());
                Ok(())
            }
            Command::Grpc(args) => {
                let report = grpc::run(&args).await?;
                println!("{}", report.json());
                Ok(())
            }
            Command::Rooms(args) => {
                let report = rooms::run(&args).await?;
                println!("{}", report.json());
                Ok(())
            }
            Command::Ceiling {
                listen,
                files_listen,
            } => {
                let server = ceiling::Server::start(listen).await?;
                eprintln!("ceiling server on {}", server.addr());
                let _files = match files_listen {
                    Some(listen) => Some(ceiling::files::start(listen).await?),
                    None => None,
                };
                tokio::signal::ctrl_c().await?;
                Ok(())
            }
            Command::Suite(args) => suite::run(&args).await,
            Command::Soak(args) => soak::run(&args).await,
            Command::Capacity(args) => capacity::run(&args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("parley-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
