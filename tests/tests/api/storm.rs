//! A reconnect storm: a gateway killed under thousands of connected clients,
//! which all reconnect to the other gateway at once and resume with
//! `since_seq` while messages keep flowing (RELIABILITY.md).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use futures_util::{SinkExt as _, StreamExt as _, stream};
use parley_tests::{
    DatabaseBackend, TestStack,
    chat::room_id,
    gateway::{ChatProcess, GatewayProcess, free_ports, service_url, try_http, username},
};
use serde_json::{Value, json};
use tokio::{net::TcpStream, sync::mpsc};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Clients on the gateway that is killed: few enough for `make test` on
/// debug builds; `make chaos` sets `PARLEY_STORM_CLIENTS=2000`.
const CLIENTS: usize = 500;
/// Rooms, each with clients / ROOMS members of distinct users.
const ROOMS: usize = 50;
const USERS: usize = 20;
/// Messages per room before the kill, and while the clients come back.
const BEFORE: i64 = 2;
const DURING: i64 = 3;
/// The whole storm, reconnections and catching up, must end within this.
const RECOVERY_LIMIT: Duration = Duration::from_secs(120);

fn clients() -> usize {
    std::env::var("PARLEY_STORM_CLIENTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(CLIENTS)
}

async fn connect(gateway: SocketAddr, token: &str) -> Result<Socket, String> {
    tokio_tungstenite::connect_async(format!("ws://{gateway}/ws?token={token}"))
        .await
        .map(|(socket, _)| socket)
        .map_err(|err| err.to_string())
}

/// Sends a join and returns the `joined` body; other frames before it
/// (presence, replayed messages) are handed to `on_frame`.
async fn join(
    socket: &mut Socket,
    room: &str,
    since_seq: i64,
    mut on_frame: impl FnMut(&Value),
) -> Result<Value, String> {
    let frame = json!({"join": {"room_id": room, "since_seq": since_seq}});
    socket
        .send(Message::text(frame.to_string()))
        .await
        .map_err(|err| err.to_string())?;
    loop {
        let frame = next_frame(socket).await.ok_or("closed before joined")?;
        if let Some(joined) = frame.get("joined") {
            return Ok(joined.clone());
        }
        if frame.get("error").is_some() {
            return Err(format!("joining {room}: {frame}"));
        }
        on_frame(&frame);
    }
}

/// The next JSON frame, or `None` once the connection is gone.
async fn next_frame(socket: &mut Socket) -> Option<Value> {
    loop {
        match socket.next().await? {
            Ok(Message::Text(text)) => return serde_json::from_str(text.as_str()).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Notes a message frame's seq.
fn record(frame: &Value, seqs: &mut Vec<i64>) {
    if let Some(seq) = frame.get("message").and_then(|m| m["seq"].as_i64()) {
        seqs.push(seq);
    }
}

/// What one client saw.
struct Outcome {
    seqs: Vec<i64>,
    /// From the kill until it had rejoined, and until it had every message.
    resumed: Duration,
    caught_up: Duration,
    attempts: u32,
    retries: u32,
}

/// One client: reads its room until its gateway dies, then reconnects to
/// `spare` (retrying with backoff, as a client library does), rejoins
/// after the last seq it saw, and reads until it has `total` messages.
async fn client(
    mut socket: Socket,
    spare: SocketAddr,
    token: String,
    room: String,
    total: i64,
    before_seen: mpsc::Sender<()>,
    killed: tokio::sync::watch::Receiver<Option<Instant>>,
) -> Result<Outcome, String> {
    let mut seqs: Vec<i64> = Vec::new();
    let mut told = false;
    while let Some(frame) = next_frame(&mut socket).await {
        record(&frame, &mut seqs);
        if !told && seqs.last() == Some(&BEFORE) {
            told = true;
            before_seen.send(()).await.ok();
        }
    }
    let mut killed = killed;
    let kill = killed
        .wait_for(Option::is_some)
        .await
        .map_err(|_| "the test ended")?
        .ok_or("no kill time")?;
    let mut attempts = 0;
    let mut backoff = Duration::from_millis(50);
    let mut socket = loop {
        attempts += 1;
        match connect(spare, &token).await {
            Ok(socket) => break socket,
            Err(err) if attempts >= 30 => return Err(format!("reconnecting: {err}")),
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    };
    // A join refused UNAVAILABLE (chat's database pool saturated by the
    // storm) is sent again after a backoff, as the protocol says to.
    let since = seqs.last().copied().unwrap_or(0);
    let mut retries = 0;
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut replayed = Vec::new();
        match join(&mut socket, &room, since, |frame| {
            record(frame, &mut replayed);
        })
        .await
        {
            Ok(_) => {
                seqs.append(&mut replayed);
                break;
            }
            Err(err) if err.contains("UNAVAILABLE") && retries < 20 => {
                retries += 1;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(err) => return Err(err),
        }
    }
    let resumed = kill.elapsed();
    while seqs.last().copied().unwrap_or(0) < total {
        let frame = next_frame(&mut socket)
            .await
            .ok_or("the spare gateway closed the connection")?;
        record(&frame, &mut seqs);
    }
    let caught_up = kill.elapsed();
    socket.close(None).await.ok();
    Ok(Outcome {
        seqs,
        resumed,
        caught_up,
        attempts,
        retries,
    })
}

/// Sends `count` messages to `room` from `first` on, each awaited to its
/// ack; a send refused UNAVAILABLE (its session moving between replicas
/// when the storm slows one down) is sent again with its `client_id`, as
/// the protocol says to. Returns how many were sent again.
async fn say(socket: &mut Socket, room: &str, first: i64, count: i64) -> usize {
    let mut again = 0;
    for i in first..first + count {
        let frame = json!({"send": {"room_id": room, "content": format!("m{i}"), "client_id": format!("m{i}")}});
        'acked: loop {
            socket.send(Message::text(frame.to_string())).await.unwrap();
            loop {
                let answer = next_frame(socket)
                    .await
                    .expect("the sender stays connected");
                if answer.get("ack").is_some() {
                    break 'acked;
                }
                if let Some(error) = answer.get("error") {
                    assert_eq!(error["code"], "UNAVAILABLE", "sending to {room}: {answer}");
                    again += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'acked;
                }
            }
        }
    }
    again
}

/// Every sample of every process's `/readyz` taken during the storm.
async fn readiness(admins: Vec<SocketAddr>, stop: tokio::sync::watch::Receiver<bool>) -> Vec<u16> {
    let mut statuses = Vec::new();
    let mut every = tokio::time::interval(Duration::from_millis(100));
    while !*stop.borrow() {
        every.tick().await;
        for admin in &admins {
            let status = try_http(*admin, "GET", "/readyz", &[], None)
                .await
                .map_or(0, |answer| answer.status);
            statuses.push(status);
        }
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_after_a_gateway_dies_loses_nothing() {
    let clients = clients();
    let mut stack = TestStack::start(DatabaseBackend::Postgres).await;
    let ports = free_ports(2).await;
    let chats = [
        ChatProcess::start(&stack, ports[0], &[]).await,
        ChatProcess::start(&stack, ports[1], &[]).await,
    ];
    let chat_url = service_url(&ports);
    let open = [("GATEWAY_MAX_CONNECTIONS_PER_USER", "100000")];
    let doomed = GatewayProcess::start(&stack, &chat_url, &open).await;
    let spare = GatewayProcess::start(&stack, &chat_url, &open).await;

    let mut tokens = Vec::new();
    for i in 0..USERS {
        tokens.push(stack.signed_up(&username(&format!("storm{i}"))).await.1);
    }
    let rooms: Vec<String> = (0..ROOMS).map(|r| room_id(&format!("storm{r}"))).collect();
    // Client i is in room i % ROOMS as user (i / ROOMS) % USERS, so every
    // room has distinct users.
    let seats: Vec<(String, String)> = (0..clients)
        .map(|i| {
            (
                tokens[(i / ROOMS) % USERS].clone(),
                rooms[i % ROOMS].clone(),
            )
        })
        .collect();
    let sockets: Vec<Socket> = stream::iter(seats.clone())
        .map(|(token, room)| async move {
            let mut socket = connect(doomed.http, &token).await.unwrap();
            join(&mut socket, &room, 0, |_| {}).await.unwrap();
            socket
        })
        .buffered(64)
        .collect()
        .await;

    let total = BEFORE + DURING;
    let (before_seen, mut before_count) = mpsc::channel(clients);
    let (kill_time, killed) = tokio::sync::watch::channel(None);
    let mut tasks = Vec::new();
    for (socket, (token, room)) in sockets.into_iter().zip(seats) {
        tasks.push(tokio::spawn(client(
            socket,
            spare.http,
            token,
            room,
            total,
            before_seen.clone(),
            killed.clone(),
        )));
    }
    drop(before_seen);

    // One sender per room, on the gateway that stays.
    let mut senders = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        let mut socket = connect(spare.http, &tokens[r % USERS]).await.unwrap();
        join(&mut socket, room, 0, |_| {}).await.unwrap();
        assert_eq!(say(&mut socket, room, 1, BEFORE).await, 0);
        senders.push(socket);
    }
    for _ in 0..clients {
        before_count
            .recv()
            .await
            .expect("every client sees the first messages");
    }

    // The storm: the gateway dies, every client comes back at once, and
    // the rooms keep talking.
    let (stop_sampling, sampling) = tokio::sync::watch::channel(false);
    let mut admins = vec![spare.admin];
    admins.extend(chats.iter().map(|chat| chat.running.admin_addrs[0]));
    let sampler = tokio::spawn(readiness(admins, sampling));
    doomed.kill().await;
    kill_time.send(Some(Instant::now())).unwrap();
    let talk = tokio::spawn(async move {
        let mut again = 0;
        for (socket, room) in senders.iter_mut().zip(&rooms) {
            again += say(socket, room, BEFORE + 1, DURING).await;
        }
        (senders, again)
    });
    let outcomes = tokio::time::timeout(RECOVERY_LIMIT, async {
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        outcomes
    })
    .await
    .expect("every client recovers within the limit");
    let (senders, sent_again) = talk.await.unwrap();
    stop_sampling.send(true).unwrap();
    let statuses = sampler.await.unwrap();

    let expected: Vec<i64> = (1..=total).collect();
    let mut resumed = Duration::ZERO;
    let mut caught_up = Duration::ZERO;
    let mut attempts = 0;
    let mut retried = 0;
    for outcome in outcomes {
        let outcome = outcome.unwrap_or_else(|err| panic!("a client failed: {err}"));
        assert_eq!(outcome.seqs, expected, "every message once, in order");
        resumed = resumed.max(outcome.resumed);
        caught_up = caught_up.max(outcome.caught_up);
        attempts = attempts.max(outcome.attempts);
        retried += usize::from(outcome.retries > 0);
    }
    assert!(!statuses.is_empty());
    assert!(
        statuses.iter().all(|status| *status == 200),
        "the spare gateway and both replicas stay ready: {statuses:?}"
    );
    // The report RELIABILITY.md quotes (shown with --nocapture).
    println!(
        "reconnect storm: {clients} clients, {ROOMS} rooms; all rejoined {} ms and caught up {} ms after the kill; at most {attempts} connection attempts per client; {retried} joins and {sent_again} sends retried after UNAVAILABLE",
        resumed.as_millis(),
        caught_up.as_millis()
    );

    for mut socket in senders {
        socket.close(None).await.ok();
    }
    drop(spare);
    drop(chats);
    stack.stop().await;
}
