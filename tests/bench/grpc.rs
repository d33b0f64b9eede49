//! Unary gRPC throughput and latency: `ChatService.SendMessage` and
//! `UserService.GetUser`, through the gRPC API as scripts and bots use it.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;
use hdrhistogram::Histogram;
use parley_proto::{
    chat::v1::{JoinRoomRequest, SendMessageRequest, chat_service_client::ChatServiceClient},
    user::v1::{GetUserRequest, user_service_client::UserServiceClient},
};
use parley_tests::authed;
use serde_json::json;
use tonic::transport::Channel;

/// A gRPC run.
#[derive(Debug, Clone, Args)]
pub(crate) struct GrpcArgs {
    /// Where to register the caller over REST.
    #[arg(long)]
    api: SocketAddr,
    /// The chat service (host:port).
    #[arg(long)]
    chat: SocketAddr,
    /// The user service (host:port).
    #[arg(long)]
    user: SocketAddr,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// How long each method runs.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

/// One method's numbers.
#[derive(Debug, Clone, Default)]
pub(crate) struct MethodReport {
    pub(crate) method: &'static str,
    pub(crate) calls: u64,
    pub(crate) errors: u64,
    pub(crate) per_second: f64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// What a gRPC run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    pub(crate) methods: Vec<MethodReport>,
}

impl Report {
    /// The one-line JSON summary.
    pub(crate) fn json(&self) -> String {
        json!({
            "scenario": "grpc",
            "methods": self.methods.iter().map(|m| json!({
                "method": m.method, "calls": m.calls, "errors": m.errors,
                "per_s": m.per_second.round(), "p50_us": m.p50_us, "p99_us": m.p99_us,
            })).collect::<Vec<_>>(),
        })
        .to_string()
    }
}

async fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?)
}

/// Runs both methods, one after the other.
pub(crate) async fn run(args: &GrpcArgs) -> anyhow::Result<Report> {
    let token = crate::users::sign_up(args.api, 1).await?.remove(0);
    let claims = token.split('.').nth(1).context("a JWT")?;
    let user_id = decode_sub(claims).context("the token's subject")?;
    let chat = ChatServiceClient::new(channel(args.chat).await?);
    let users = UserServiceClient::new(channel(args.user).await?);
    let room = format!("grpc{:x}", std::process::id());
    chat.clone()
        .join_room(authed(
            JoinRoomRequest {
                room_id: room.clone(),
                ..JoinRoomRequest::default()
            },
            &token,
        ))
        .await?;

    let send = {
        let (token, room) = (token.clone(), room.clone());
        measure("SendMessage", args, move |n| {
            let mut chat = chat.clone();
            let request = authed(
                SendMessageRequest {
                    room_id: room.clone(),
                    content: format!("grpc {n}"),
                    client_id: format!("g{n}"),
                    reply_to: 0,
                    attachments: Vec::new(),
                },
                &token,
            );
            async move { chat.send_message(request).await.map(drop) }
        })
        .await
    };
    let get = measure("GetUser", args, move |_| {
        let mut users = users.clone();
        let request = authed(
            GetUserRequest {
                id: user_id.clone(),
            },
            &token,
        );
        async move { users.get_user(request).await.map(drop) }
    })
    .await;
    Ok(Report {
        methods: vec![send, get],
    })
}

async fn measure<F, Fut>(method: &'static str, args: &GrpcArgs, call: F) -> MethodReport
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let deadline = Instant::now() + args.duration;
    let mut workers = Vec::new();
    for worker in 0..args.concurrency as u64 {
        let call = call.clone();
        workers.push(tokio::spawn(async move {
            let mut latency =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let (mut calls, mut errors) = (0u64, 0u64);
            let mut n = worker << 40;
            while Instant::now() < deadline {
                let started = Instant::now();
                if call(n).await.is_err() {
                    errors += 1;
                }
                latency.saturating_record(
                    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                );
                calls += 1;
                n += 1;
            }
            (latency, calls, errors)
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let (mut calls, mut errors) = (0, 0);
    for worker in workers {
        if let Ok((l, c, e)) = worker.await {
            latency.add(&l).ok();
            calls += c;
            errors += e;
        }
    }
    MethodReport {
        method,
        calls,
        errors,
        per_second: calls as f64 / args.duration.as_secs_f64(),
        p50_us: latency.value_at_quantile(0.5),
        p99_us: latency.value_at_quantile(0.99),
    }
}

/// The `sub` claim of a JWT payload (base64url JSON).
fn decode_sub(payload: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims["sub"].as_str().map(str::to_owned)
}
