//! The Rust client (`clients/rust`) against a real Parley: both topologies,
//! connections cut mid-stream, and tokens that expire under a live
//! connection (README: "Client libraries").

use std::{net::SocketAddr, time::Duration};

use parley_client::{Client, ConnectionState, Draft, Event, Room};
use parley_tests::{
    PASSWORD,
    gateway::{Deployment, Settings, Topology, username},
    on_both_topologies,
    proxy::Proxy,
};

on_both_topologies!(
    messages_cross_gateways_with_their_seqs,
    cut_connections_lose_and_repeat_nothing,
    a_send_whose_ack_is_lost_is_stored_once,
    tokens_expire_under_a_live_connection_without_a_disconnect,
    attachments_go_up_and_come_down_whole,
);

/// Long enough for anything on loopback; a failing test fails here.
pub(super) const WAIT: Duration = Duration::from_secs(20);

/// A client of `gateway`, signed up and in as a new user.
pub(super) async fn signed_in(server: SocketAddr, prefix: &str) -> Client {
    let client = Client::new(&format!("http://{server}")).unwrap();
    let name = username(prefix);
    client.register(&name, PASSWORD).await.unwrap();
    client.login(&name, PASSWORD).await.unwrap();
    client
}

/// The next message of `room`, skipping other events.
pub(super) async fn next_message(room: &mut Room) -> (i64, String) {
    loop {
        let event = tokio::time::timeout(WAIT, room.next_event())
            .await
            .expect("an event in time")
            .expect("the room is open");
        if let Event::Timeline(event) = event
            && event.kind == "message"
        {
            return (event.seq, event.content().to_owned());
        }
    }
}

async fn messages_cross_gateways_with_their_seqs(topology: Topology) {
    let deployment = Deployment::start(topology, &Settings::default()).await;
    let alice = signed_in(deployment.gateway(0), "alice").await;
    let bob = signed_in(deployment.gateway(1), "bob").await;
    let room_id = username("room");
    let alices = alice.connect().await.unwrap();
    let bobs = bob.connect().await.unwrap();
    let mut at_alice = alices.join(&room_id).await.unwrap();
    let mut at_bob = bobs.join(&room_id).await.unwrap();

    let first = at_alice.send("hello bob").await.unwrap();
    let second = at_bob.send("hello alice").await.unwrap();
    assert_eq!((first.seq, second.seq), (1, 2));
    for room in [&mut at_alice, &mut at_bob] {
        assert_eq!(next_message(room).await, (1, "hello bob".to_owned()));
        assert_eq!(next_message(room).await, (2, "hello alice".to_owned()));
    }
    // The same client_id again is the same message.
    let again = at_alice
        .send_with_id("hello bob", &first.client_id)
        .await
        .unwrap();
    assert_eq!((again.seq, again.message_id), (1, first.message_id));
    let page = bob.history(&room_id, 0, 50).await.unwrap();
    assert_eq!(page.messages.len(), 2);

    // What the server refuses says what to do.
    let empty = at_bob.send("   ").await.unwrap_err();
    assert_eq!(empty.action(), parley_client::Action::FixInput);
    // A sender that outlives its room is told so, not left waiting.
    let orphan = at_bob.sender();
    drop(at_bob);
    let gone = tokio::time::timeout(WAIT, orphan.send("after the room was dropped"))
        .await
        .expect("an answer")
        .unwrap_err();
    assert!(matches!(gone, parley_client::Error::Closed), "{gone:?}");
    drop((at_alice, alices, bobs));
    deployment.stop().await;
}

/// Checks what a streaming client saw against what was sent: every
/// message once and in order (`total` in all, `count` of them the other
/// user's `m1`, `m2`, ...), and each stored once.
pub(super) async fn each_once_in_order(
    seen: &[(i64, String)],
    count: i64,
    total: i64,
    reader: &Client,
    room_id: &str,
) {
    let seqs: Vec<i64> = seen.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "each once, in order");
    let others: Vec<&str> = seen
        .iter()
        .map(|(_, content)| content.as_str())
        .filter(|content| content.starts_with('m'))
        .collect();
    let expected: Vec<String> = (1..=count).map(|n| format!("m{n}")).collect();
    assert_eq!(others, expected);
    let page = reader.history(room_id, 0, 200).await.unwrap();
    assert_eq!(page.messages.len() as i64, total, "no send stored twice");
}

async fn cut_connections_lose_and_repeat_nothing(topology: Topology) {
    let deployment = Deployment::start(topology, &Settings::default()).await;
    let proxy = Proxy::start(deployment.gateway(1)).await;
    let alice = signed_in(deployment.gateway(0), "alice").await;
    let bob = Client::new(&format!("http://{}", proxy.addr)).unwrap();
    let name = username("bob");
    bob.register(&name, PASSWORD).await.unwrap();
    bob.login(&name, PASSWORD).await.unwrap();
    let room_id = username("cut");
    let alices = alice.connect().await.unwrap();
    let bobs = bob.connect().await.unwrap();
    let at_alice = alices.join(&room_id).await.unwrap();
    let mut at_bob = bobs.join(&room_id).await.unwrap();
    let mut state = bobs.state();

    // Alice sends while bob's connection is cut three times; bob sends
    // across the cuts too.
    const COUNT: i64 = 60;
    let sender = tokio::spawn(async move {
        for n in 1..=COUNT {
            at_alice.send(&format!("m{n}")).await.unwrap();
        }
        at_alice
    });
    let mut seen = Vec::new();
    for cut in 0..3 {
        while seen.len() < (cut + 1) * 10 {
            seen.push(next_message(&mut at_bob).await);
        }
        proxy.cut();
        tokio::time::timeout(
            WAIT,
            state.wait_for(|s| matches!(s, ConnectionState::Reconnecting { .. })),
        )
        .await
        .expect("the cut is noticed")
        .unwrap();
        // Sent while disconnected: goes out, once, after the rejoin.
        let ack = at_bob.send(&format!("bob after cut {cut}")).await.unwrap();
        assert!(ack.seq > 0);
    }
    let at_alice = sender.await.unwrap();
    let total = COUNT + 3;
    while (seen.len() as i64) < total {
        seen.push(next_message(&mut at_bob).await);
    }
    each_once_in_order(&seen, COUNT, total, &alice, &room_id).await;
    drop((at_alice, at_bob, alices, bobs));
    deployment.stop().await;
}

async fn a_send_whose_ack_is_lost_is_stored_once(topology: Topology) {
    let deployment = Deployment::start(topology, &Settings::default()).await;
    let proxy = Proxy::start(deployment.gateway(0)).await;
    let bob = signed_in(proxy.addr, "bob").await;
    let room_id = username("lost");
    let connection = bob.connect().await.unwrap();
    let room = connection.join(&room_id).await.unwrap();
    let mut state = connection.state();
    for n in 1..=5 {
        // The frame is on its way when the connection drops: the ack (if
        // the server stored it at all) is lost, and the send goes out
        // again after the rejoin, with the same client_id.
        let sender = room.sender();
        let sent = tokio::spawn(async move { sender.send(&format!("once {n}")).await });
        tokio::time::timeout(WAIT, state.wait_for(|s| *s == ConnectionState::Connected))
            .await
            .expect("connected")
            .unwrap();
        proxy.cut();
        let ack = tokio::time::timeout(WAIT, sent)
            .await
            .expect("the ack after the rejoin")
            .unwrap()
            .unwrap();
        assert_eq!(ack.seq, n);
    }
    let page = bob.history(&room_id, 0, 50).await.unwrap();
    let contents: Vec<&str> = page
        .messages
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["once 1", "once 2", "once 3", "once 4", "once 5"]);
    drop((room, connection));
    deployment.stop().await;
}

async fn attachments_go_up_and_come_down_whole(topology: Topology) {
    let deployment = Deployment::start(topology, &Settings::default()).await;
    let alice = signed_in(deployment.gateway(0), "alice").await;
    let bob = signed_in(deployment.gateway(1), "bob").await;
    // Larger than one chunk each way, with a byte pattern that shows a
    // chunk out of place.
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.bin");
    std::fs::write(&path, &bytes).unwrap();
    let progress = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = progress.clone();
    let attachment = alice
        .upload_file(&path, None, move |sent, total| {
            seen.lock().unwrap().push((sent, total));
        })
        .await
        .unwrap();
    assert_eq!(
        (attachment.filename.as_str(), attachment.size),
        ("notes.bin", 300_000)
    );
    let steps = progress.lock().unwrap().clone();
    assert!(steps.len() > 1, "progress as the bytes leave: {steps:?}");
    assert_eq!(steps.last(), Some(&(300_000, 300_000)));

    let room_id = username("files");
    let alices = alice.connect().await.unwrap();
    let bobs = bob.connect().await.unwrap();
    let at_alice = alices.join(&room_id).await.unwrap();
    let mut at_bob = bobs.join(&room_id).await.unwrap();
    at_alice
        .send_draft(Draft {
            attachments: vec![attachment.id.clone()],
            ..Draft::default()
        })
        .await
        .unwrap();
    let message = loop {
        match tokio::time::timeout(WAIT, at_bob.next_event())
            .await
            .unwrap()
        {
            Some(Event::Timeline(event)) if event.kind == "message" => break event,
            Some(_) => {}
            None => panic!("the room closed"),
        }
    };
    assert_eq!(
        message.frame["attachments"][0]["id"],
        attachment.id.as_str()
    );
    let mut downloaded = Vec::new();
    let written = bob
        .download(&attachment.id, false, &mut downloaded, |_, _| {})
        .await
        .unwrap();
    assert_eq!(written, 300_000);
    assert!(downloaded == bytes, "the same bytes");
    let missing = bob
        .download("no-such-attachment", false, &mut Vec::new(), |_, _| {})
        .await
        .unwrap_err();
    assert_eq!(missing.action(), parley_client::Action::FixInput);
    drop((at_alice, at_bob, alices, bobs));
    deployment.stop().await;
}

async fn tokens_expire_under_a_live_connection_without_a_disconnect(topology: Topology) {
    let settings = Settings {
        access_token_ttl: Duration::from_secs(3),
        ..Settings::default()
    };
    let deployment = Deployment::start(topology, &settings).await;
    let alice = signed_in(deployment.gateway(0), "alice").await;
    let connection = alice.connect().await.unwrap();
    let mut room = connection.join(&username("long")).await.unwrap();
    let mut state = connection.state();
    tokio::time::timeout(WAIT, state.wait_for(|s| *s == ConnectionState::Connected))
        .await
        .expect("connected")
        .unwrap();
    state.borrow_and_update();
    // Three lifetimes of the first token: without renewals in band, the
    // gateway would have closed the connection with 4001.
    for n in 1..=3 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let ack = room.send(&format!("still here {n}")).await.unwrap();
        assert_eq!(
            next_message(&mut room).await,
            (ack.seq, format!("still here {n}"))
        );
    }
    assert!(
        !state.has_changed().unwrap(),
        "never reconnected: {:?}",
        *state.borrow()
    );
    alice.me().await.unwrap();
    drop((room, connection));
    deployment.stop().await;
}

/// `parley-cli` as a script would run it: one user's config directory.
struct Cli {
    server: String,
    config: tempfile::TempDir,
}

impl Cli {
    fn new(server: SocketAddr) -> Self {
        Self {
            server: format!("http://{server}"),
            config: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(parley_tests::binary("parley-cli"));
        command
            .args(args)
            .env("PARLEY_SERVER", &self.server)
            .env("PARLEY_CONFIG_DIR", self.config.path())
            .env("PARLEY_PASSWORD", PASSWORD)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs `args`: the exit code and standard output.
    async fn run(&self, args: &[&str]) -> (i32, String) {
        let output = tokio::time::timeout(WAIT, self.command(args).output())
            .await
            .expect("parley-cli ends in time")
            .expect("parley-cli runs (make test builds it)");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let code = output.status.code().unwrap_or(-1);
        if code != 0 {
            eprintln!(
                "parley-cli {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        (code, stdout)
    }
}

/// The commands of `parley-cli` as processes against a running server,
/// their output plain and as JSON, and their exit codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parley_cli_commands_work_for_scripts() {
    use tokio::io::AsyncBufReadExt as _;
    let deployment = Deployment::start(Topology::AllInOne, &Settings::default()).await;
    let (alice, bob) = (
        Cli::new(deployment.gateway(0)),
        Cli::new(deployment.gateway(0)),
    );
    let (alice_name, bob_name) = (username("alice"), username("bob"));
    let (code, alice_id) = alice.run(&["register", &alice_name]).await;
    assert_eq!(code, 0);
    let alice_id = alice_id.trim().to_owned();
    assert_eq!(bob.run(&["register", &bob_name]).await.0, 0);
    let (code, out) = alice.run(&["login", &alice_name]).await;
    assert_eq!(
        (code, out.trim()),
        (0, format!("signed in as {alice_name}").as_str())
    );
    assert_eq!(bob.run(&["login", &bob_name]).await.0, 0);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let file = alice.config.path().join("credentials.json");
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "credentials are the user's alone");
    }

    let (code, out) = alice.run(&["rooms", "create", "plans", "--json"]).await;
    assert_eq!(code, 0);
    let room: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let room_id = room["id"].as_str().unwrap().to_owned();

    // Bob follows the room as JSON lines while alice sends.
    let mut tail = bob
        .command(&["tail", &room_id, "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = tokio::io::BufReader::new(tail.stderr.take().unwrap()).lines();
    let following = tokio::time::timeout(WAIT, status.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        following.as_deref(),
        Some(format!("following {room_id}").as_str())
    );
    let (code, out) = alice.run(&["send", &room_id, "hello from a script"]).await;
    assert_eq!((code, out.trim()), (0, "1"));
    let mut events = tokio::io::BufReader::new(tail.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, events.next_line())
        .await
        .unwrap()
        .unwrap()
        .expect("an event line");
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["kind"], "message");
    assert_eq!(
        (event["seq"].as_i64(), event["content"].as_str()),
        (Some(1), Some("hello from a script"))
    );
    tail.kill().await.unwrap();

    let (code, out) = alice.run(&["history", &room_id, "--json"]).await;
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["sender_name"], alice_name.as_str());
    let (code, out) = alice.run(&["history", &room_id]).await;
    assert_eq!(
        (code, out.trim()),
        (0, format!("#1 {alice_name}: hello from a script").as_str())
    );
    let (code, out) = alice.run(&["rooms", "list"]).await;
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|line| line.starts_with(&format!("{room_id}\tplans"))),
        "{out}"
    );

    // Files: uploaded on their own or with a message, downloaded whole.
    let notes = alice.config.path().join("notes.txt");
    std::fs::write(&notes, "plans for the weekend\n").unwrap();
    let notes = notes.to_str().unwrap();
    let (code, out) = alice.run(&["upload", notes, "--json"]).await;
    assert_eq!(code, 0);
    let uploaded: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (uploaded["filename"].as_str(), uploaded["size"].as_u64()),
        (Some("notes.txt"), Some(22))
    );
    let (code, out) = alice
        .run(&[
            "send",
            &room_id,
            "the notes",
            "--file",
            notes,
            "--reply-to",
            "1",
        ])
        .await;
    assert_eq!((code, out.trim()), (0, "2"));
    let (_, out) = bob.run(&["history", &room_id, "--json"]).await;
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["reply_to"], 1);
    let id = last["attachments"][0]["id"].as_str().unwrap().to_owned();
    let copy = bob.config.path().join("copy.txt");
    let (code, _) = bob
        .run(&["download", &id, "-o", copy.to_str().unwrap()])
        .await;
    assert_eq!(code, 0);
    assert_eq!(
        std::fs::read_to_string(&copy).unwrap(),
        "plans for the weekend\n"
    );
    assert_eq!(
        bob.run(&["download", &id]).await,
        (0, "plans for the weekend\n".to_owned())
    );
    assert_eq!(
        bob.run(&["download", "no-such-file"]).await.0,
        3,
        "not found"
    );

    // A private room needs its password; a direct room needs nothing.
    let (_, out) = alice
        .run(&[
            "rooms",
            "create",
            "secret",
            "--password",
            "open sesame now",
            "--json",
        ])
        .await;
    let secret: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let secret_id = secret["id"].as_str().unwrap();
    assert_eq!(
        bob.run(&["rooms", "join", secret_id]).await.0,
        3,
        "no password"
    );
    assert_eq!(
        bob.run(&["rooms", "join", secret_id, "--password", "open sesame now"])
            .await,
        (0, format!("{secret_id}\n"))
    );
    let (code, out) = bob.run(&["rooms", "dm", &alice_id]).await;
    assert_eq!(code, 0);
    let direct_id = out.trim().to_owned();
    let (_, out) = alice.run(&["rooms", "list", "--json"]).await;
    let direct = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|room| room["id"] == direct_id.as_str())
        .expect("the direct room is alice's too");
    assert_eq!(
        (direct["direct"].as_bool(), direct["name"].as_str()),
        (Some(true), Some(bob_name.as_str()))
    );

    // Exit codes say what failed.
    assert_eq!(
        alice.run(&["send", &room_id, "   "]).await.0,
        3,
        "bad input"
    );
    assert_eq!(alice.run(&["logout"]).await.0, 0);
    assert!(!alice.config.path().join("credentials.json").exists());
    assert_eq!(
        alice.run(&["send", &room_id, "hi"]).await.0,
        4,
        "signed out"
    );
    let unreachable = Cli {
        server: "http://127.0.0.1:9".into(),
        config: tempfile::tempdir().unwrap(),
    };
    assert_eq!(
        unreachable.run(&["register", "nobody"]).await.0,
        5,
        "no server"
    );
    deployment.stop().await;
}
