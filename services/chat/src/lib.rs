//! `parley-chat`: rooms, ordered durable messages, history, presence and
//! typing, with fan-out across replicas through Redis.
//!
//! # Layout
//! - `config`: `CHAT_*` settings.
//! - `domain`: rooms and messages, and the checked inputs (`RoomId`,
//!   `JoinRequest`, `HistoryQuery`) every entry point builds once.
//! - `timeline`: the events of a room's timeline other than messages
//!   (edits, deletions, reactions, `member_update`, `room_updated`).
//! - `moderation`: roles, and who may act on whom.
//! - `store`: rooms, memberships and messages in Postgres or SQLite;
//!   `store/batch.rs` is the batch writer's statement, which takes seqs;
//!   `store/events.rs` and `store/moderation.rs` the transaction of each
//!   other event; `store/rooms.rs` the room list.
//! - `writer`: the writer lanes that batch sends for storage.
//! - `hub`: the replica's rooms, delivering each strictly by `seq` and
//!   filling holes from storage.
//! - `bus`: fan-out between replicas (Redis pub/sub, or in-process); it
//!   hands what it receives to the hub through the `Deliveries` trait.
//! - `presence`: who is online, across replicas.
//! - `membership`: joining and leaving a room, in one place: `Engine::join`
//!   returns a `Membership`, whose `leave` (or drop) undoes it.
//! - `link`: the bounded queue of each outgoing stream, and the controls
//!   the hub sends its actor (a member kicked, banned or muted, a room
//!   deleted).
//! - `session`: the actor behind each `Chat` and gateway stream, with one
//!   handler per frame (`session/join.rs`, `leave.rs`, `send.rs`,
//!   `change.rs`, `moderate.rs`, `read.rs`, `history.rs`).
//! - `engine`: the operations all entry points share.
//! - `grpc`: the `parley.chat.v1.ChatService` handlers.
//! - `limiter`: the per-user send rate.
//! - `error`: failures and their gRPC statuses.
//!
//! A send travels: session -> writer lane (stored, seq taken) -> ack to the
//! sender, publish to the room's channel, local hub -> every link with
//! members in the room. Other replicas receive it from the bus and deliver
//! it through their hubs the same way.
//!
//! A join travels: session -> `Engine::join` (admitted and stored, counted
//! into the hub and presence, attached: `joined`, replay, live) -> a
//! `Membership` the session keeps until it leaves or closes.
//!
//! A kick travels like a send (a `member_update` event, stored with the
//! room's next seq); each replica's hub, delivering it, tells every link in
//! the room, and each stream's actor drops the memberships of the kicked
//! user's sessions and answers them `left`.
#![warn(missing_docs)]

mod attachments;
mod bus;
mod bus_sharded;
mod config;
mod domain;
mod engine;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod grpc;
mod hub;
mod limiter;
mod link;
mod membership;
mod moderation;
mod presence;
mod redis_target;
mod sequencer;
mod session;
mod store;
mod timeline;
mod writer;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use parley_proto::chat::v1::chat_service_server::ChatServiceServer;
use parley_runtime::{
    CancellationToken,
    client::{self, ClientOptions},
    config::DatabaseKind,
    grpc::{MAX_MESSAGE_BYTES, ServerOptions, Services},
    health::Readiness,
    password::Passwords,
    serve::Listeners,
    storage::Database,
    tls::ServiceTls,
    token,
};

pub use config::{ChatArgs, Config};

use crate::{
    attachments::Media,
    bus::Bus,
    engine::{Engine, Limits, Parts},
    hub::Hub,
    limiter::SendLimiter,
    presence::{Presence, RedisPresence},
    store::ChatStore,
    writer::{Lanes, Writer},
};

/// The service name in logs, metrics and traces.
pub const SERVICE_NAME: &str = "chat";

/// The chat service's migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A built service, bound to its ports: call `run` to serve.
pub use parley_runtime::serve::Service as Application;

/// How often every room is checked against storage for messages the bus
/// lost.
const HEAL_EVERY: Duration = Duration::from_secs(5);
/// Sends queued per writer lane before sends are refused as overload.
const WRITER_QUEUE: usize = 16_384;

/// Binds the configured addresses and builds the service.
///
/// # Errors
/// Fails when an address cannot be bound, the settings disagree or the
/// database is unusable.
pub async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Application> {
    let listeners = Listeners::bind(
        config.chat.grpc_addr,
        "CHAT_GRPC_ADDR",
        config.chat.admin_addr,
        "CHAT_ADMIN_ADDR",
    )
    .await?;
    with_listeners(config, listeners, shutdown).await
}

/// Builds the service on listeners bound by the caller (tests bind port
/// 0 first, to wire services to each other).
///
/// # Errors
/// Fails when the settings disagree or the database is unusable.
pub async fn with_listeners(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<Application> {
    config.validate()?;
    parley_runtime::metrics::install();
    parley_runtime::metrics::register_build_info(SERVICE_NAME);
    register_metrics();
    let readiness = Readiness::new();

    let tls = ServiceTls::load(&config.chat.tls.files())?;
    let verifier = token::verifier_for(&config.auth_url, &tls.client, &readiness, shutdown.clone());

    let database = Database::open(
        &config.chat.database_url,
        "chat",
        &MIGRATOR,
        &readiness,
        shutdown.clone(),
    )
    .await
    .context("opening the chat database")?;
    let lanes = match database.kind() {
        DatabaseKind::Postgres => config.chat.writer_lanes as usize,
        // One writer at a time in SQLite anyway.
        DatabaseKind::Sqlite => 1,
    };
    let store = ChatStore::new(database);

    let replica = uuid::Uuid::new_v4();
    let (bus, presence, bus_tasks) = match &config.chat.redis_url {
        Some(url) => {
            let key = bus::BusKey::new(config.chat.bus_secret.as_deref());
            let (bus, tasks) = Bus::redis(url, *replica.as_bytes(), key)?;
            let presence =
                RedisPresence::new(url, replica.simple().to_string(), config.chat.presence_ttl)?;
            (bus, Presence::Redis(presence), Some(tasks))
        }
        None => {
            bus::report_local_bus();
            (Bus::Local, Presence::Local, None)
        }
    };
    let hub = Hub::new(store.clone(), bus.clone());
    if let Some(tasks) = bus_tasks {
        // The subscriber hands other replicas' events to the hub.
        tasks.spawn(hub.clone(), shutdown.clone());
    }
    let limiter = Arc::new(SendLimiter::new(
        config.chat.sends_per_second,
        config.chat.send_burst,
    ));
    let writer = Writer::spawn(
        store.clone(),
        hub.clone(),
        bus.clone(),
        limiter.clone(),
        Lanes {
            count: lanes,
            capacity: WRITER_QUEUE,
            linger: config.chat.write_linger,
        },
    );
    let engine = Engine::new(Parts {
        store,
        hub: hub.clone(),
        bus,
        presence: presence.clone(),
        writer,
        limiter,
        passwords: Passwords::new("parley_chat_password_hash_seconds"),
        verifier,
        limits: Limits {
            max_content_bytes: config.chat.max_content_bytes as usize,
            max_replay: i64::from(config.chat.max_replay),
            max_rooms_per_session: config.chat.max_rooms_per_session as usize,
            max_sessions_per_user: config.chat.max_sessions_per_user,
            max_sessions_per_stream: config.chat.max_sessions_per_stream as usize,
            max_rooms_per_creator: i64::from(config.chat.max_rooms_per_creator),
            join_burst: config.chat.join_burst,
            joins_per_second: config.chat.joins_per_second,
            stream_queue: config.chat.stream_queue as usize,
        },
        media: Media::new(client::connect(
            "media",
            &config.media_url,
            &ClientOptions {
                tls: tls.client.clone(),
                ..ClientOptions::default()
            },
        )),
    });
    tokio::spawn(heal_periodically(hub.clone(), shutdown.clone()));
    if let Presence::Redis(redis) = presence {
        tokio::spawn(keep_presence(engine.clone(), redis, shutdown.clone()));
    }

    let server = ChatServiceServer::new(grpc::ChatService::new(
        engine,
        config.chat.gateway_stream_secret.as_deref().map(Arc::from),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    Ok(Application::new(
        SERVICE_NAME,
        listeners,
        Services::new().with(server),
        readiness,
        ServerOptions {
            shutdown_grace: config.shutdown_grace,
            cors_origins: config.chat.cors_origins.clone(),
            tls: tls.server,
            ..ServerOptions::default()
        },
        shutdown,
    ))
}

/// Builds and runs the chat service until `shutdown` fires and it has
/// drained.
///
/// # Errors
/// Fails when it cannot start or a server fails.
pub async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    build(config, shutdown).await?.run().await
}

/// Unlabelled counters are exported from the start, at 0.
fn register_metrics() {
    for counter in [
        "parley_chat_messages_stored_total",
        "parley_chat_events_stored_total",
        "parley_chat_deliveries_total",
        "parley_chat_bus_reconnects_total",
        "parley_chat_backfilled_messages_total",
    ] {
        metrics::counter!(counter).increment(0);
    }
    metrics::gauge!("parley_chat_active_streams").increment(0.0);
    metrics::gauge!("parley_chat_room_subscriptions").increment(0.0);
    metrics::describe_histogram!(
        "parley_chat_write_batch_size",
        "Writes a writer lane stored at once."
    );
}

async fn heal_periodically(hub: Hub, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(HEAL_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => hub.heal_all(),
            () = shutdown.cancelled() => return,
        }
    }
}

/// Refreshes this replica's presence entries and announces the members of
/// crashed replicas as gone; on shutdown, removes this replica's entries.
async fn keep_presence(engine: Engine, redis: RedisPresence, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(redis.heartbeat_every());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = shutdown.cancelled() => {
                let rooms = engine.hub().local_presence();
                if let Err(err) = redis.remove_all(&rooms).await {
                    tracing::debug!(error = %err, "cannot remove presence on shutdown");
                }
                return;
            }
        }
        let rooms = engine.hub().local_presence();
        if let Err(err) = redis.heartbeat(&rooms).await {
            tracing::warn!(error = %err, "presence heartbeat failed");
            continue;
        }
        for (room_id, _) in &rooms {
            match redis.sweep(room_id).await {
                Ok(gone) => {
                    for member in gone {
                        engine.announce(
                            room_id,
                            &member.user_id,
                            &member.name,
                            parley_proto::chat::v1::PresenceState::Left,
                        );
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "presence sweep failed");
                    break;
                }
            }
        }
    }
}
