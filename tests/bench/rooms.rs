//! The room list of a busy user: `ChatService.ListMyRooms` and
//! `GET /api/v1/rooms` for a member of many rooms with many messages, some
//! read and some not.
//!
//! A reader and a writer join every room; the reader sends two messages to
//! each (sending marks a room read up to one's own message), the writer
//! fills the rooms through `SendMessage`, the reader marks each room read
//! halfway and the writer deletes one unread message. Then the list is read
//! again and again, and its unread counts are checked against what was
//! sent.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use clap::Args;
use futures_util::{StreamExt as _, stream};
use hdrhistogram::Histogram;
use parley_proto::chat::v1::{
    DeleteMessageRequest, JoinRoomRequest, ListMyRoomsRequest, MarkReadRequest, SendMessageRequest,
    chat_service_client::ChatServiceClient,
};
use parley_tests::{authed, gateway::try_http};
use serde_json::json;
use tonic::transport::Channel;

/// A room-list run.
#[derive(Debug, Clone, Args)]
pub(crate) struct RoomsArgs {
    /// Where to register the users and read the REST list.
    #[arg(long)]
    pub(crate) api: SocketAddr,
    /// The chat service (host:port).
    #[arg(long)]
    pub(crate) chat: SocketAddr,
    /// Rooms the reader is a member of.
    #[arg(long, default_value_t = 500)]
    pub(crate) rooms: usize,
    /// Messages the writer sends, spread evenly over the rooms.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) messages: usize,
    /// Sends in flight while the rooms fill.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// Reads of the list, each way.
    #[arg(long, default_value_t = 200)]
    pub(crate) calls: usize,
}

/// What a room-list run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    rooms: usize,
    messages: usize,
    fill_seconds: f64,
    grpc: (u64, u64),
    rest: (u64, u64),
    unread: i64,
}

impl Report {
    /// The one-line JSON summary.
    pub(crate) fn json(&self) -> String {
        json!({
            "scenario": "rooms",
            "rooms": self.rooms,
            "messages": self.messages,
            "fill_seconds": (self.fill_seconds * 10.0).round() / 10.0,
            "list_my_rooms_p50_us": self.grpc.0,
            "list_my_rooms_p99_us": self.grpc.1,
            "rest_rooms_p50_us": self.rest.0,
            "rest_rooms_p99_us": self.rest.1,
            "unread": self.unread,
        })
        .to_string()
    }
}

/// Fills the rooms, then measures the list.
pub(crate) async fn run(args: &RoomsArgs) -> anyhow::Result<Report> {
    let tokens = crate::users::sign_up(args.api, 2).await?;
    let (reader, writer) = (tokens[0].clone(), tokens[1].clone());
    let chat = ChatServiceClient::new(
        Channel::from_shared(format!("http://{}", args.chat))?
            .connect()
            .await?,
    );
    let prefix = format!("list{:x}", std::process::id());
    let rooms: Vec<String> = (0..args.rooms).map(|i| format!("{prefix}-{i}")).collect();
    for token in [&reader, &writer] {
        let joined: Vec<anyhow::Result<()>> = stream::iter(&rooms)
            .map(|room| {
                let mut chat = chat.clone();
                let request = authed(
                    JoinRoomRequest {
                        room_id: room.clone(),
                        ..JoinRoomRequest::default()
                    },
                    token,
                );
                async move { chat.join_room(request).await.map(drop).map_err(Into::into) }
            })
            .buffer_unordered(args.concurrency)
            .collect()
            .await;
        joined.into_iter().collect::<anyhow::Result<()>>()?;
    }

    for room in &rooms {
        let mut chat = chat.clone();
        for n in 0..2 {
            chat.send_message(authed(
                SendMessageRequest {
                    room_id: room.clone(),
                    content: format!("the reader's {n}"),
                    client_id: format!("r{n}"),
                    reply_to: 0,
                    attachments: Vec::new(),
                },
                &reader,
            ))
            .await?;
        }
    }
    // The writer fills every room; then in each room the reader reads up
    // to half of the writer's messages and the writer deletes the first
    // one after that.
    let per_room = (args.messages / args.rooms.max(1)).max(2);
    let started = Instant::now();
    let sends = rooms
        .iter()
        .flat_map(|room| (0..per_room).map(move |n| (room, n)));
    let sent: Vec<anyhow::Result<()>> = stream::iter(sends)
        .map(|(room, n)| {
            let mut chat = chat.clone();
            let request = authed(
                SendMessageRequest {
                    room_id: room.clone(),
                    content: format!("message {n} of the room"),
                    client_id: format!("w{n}"),
                    reply_to: 0,
                    attachments: Vec::new(),
                },
                &writer,
            );
            async move {
                chat.send_message(request)
                    .await
                    .map(drop)
                    .map_err(Into::into)
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    sent.into_iter().collect::<anyhow::Result<()>>()?;
    let fill_seconds = started.elapsed().as_secs_f64();
    let half = i64::try_from(per_room / 2).unwrap_or(i64::MAX);
    for room in &rooms {
        let mut chat = chat.clone();
        // The reader's two messages took seqs 1 and 2.
        chat.mark_read(authed(
            MarkReadRequest {
                room_id: room.clone(),
                seq: 2 + half,
            },
            &reader,
        ))
        .await?;
        chat.delete_message(authed(
            DeleteMessageRequest {
                room_id: room.clone(),
                seq: 2 + half + 1,
                client_id: "d".into(),
            },
            &writer,
        ))
        .await?;
    }
    // Unread per room: the writer's messages after the marker, less the
    // deleted one.
    let expected_per_room = i64::try_from(per_room).unwrap_or(i64::MAX) - half - 1;

    let mut grpc = histogram();
    let mut unread = 0;
    for _ in 0..args.calls {
        let began = Instant::now();
        let list = chat
            .clone()
            .list_my_rooms(authed(ListMyRoomsRequest {}, &reader))
            .await?
            .into_inner();
        record(&mut grpc, began.elapsed());
        ensure!(
            list.rooms.len() == args.rooms,
            "the list has {} rooms, not {}",
            list.rooms.len(),
            args.rooms
        );
        unread = list.rooms.iter().map(|room| room.unread).sum();
    }
    let expected = expected_per_room * i64::try_from(args.rooms).unwrap_or(i64::MAX);
    ensure!(
        unread == expected,
        "{unread} unread in all, expected {expected}"
    );

    let mut rest = histogram();
    let authorization = format!("Bearer {reader}");
    for _ in 0..args.calls {
        let began = Instant::now();
        let response = try_http(
            args.api,
            "GET",
            "/api/v1/rooms",
            &[("Authorization", authorization.as_str())],
            None,
        )
        .await
        .context("GET /api/v1/rooms")?;
        record(&mut rest, began.elapsed());
        if response.status != 200 {
            bail!("GET /api/v1/rooms: {} {}", response.status, response.body);
        }
    }
    Ok(Report {
        rooms: args.rooms,
        messages: per_room * args.rooms + 2 * args.rooms,
        fill_seconds,
        grpc: (grpc.value_at_quantile(0.5), grpc.value_at_quantile(0.99)),
        rest: (rest.value_at_quantile(0.5), rest.value_at_quantile(0.99)),
        unread,
    })
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    histogram.saturating_record(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
}
