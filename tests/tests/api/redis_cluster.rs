//! Chat replicas on a real Redis Cluster (three primaries, three
//! replicas), each behind its own gateway: room events cross replicas
//! through sharded pub/sub, and survive the room's primary being killed
//! (its replica promoted) and the room's slot being moved to another
//! primary, while traffic flows.

use parley_runtime::config::ServiceUrl;
use parley_tests::{
    DatabaseBackend, TestStack,
    chat::{ChatReplica, room_id, test_args},
    gateway::{GatewayNode, Settings, Ws, username},
    redis_cluster::RedisCluster,
};

/// Waits until both replicas hold the room's shard channel on the primary
/// that owns it: subscriptions have no event to await from outside.
async fn subscribed(cluster: &RedisCluster, channel: &str) {
    for _ in 0..100 {
        if cluster.shard_subscribers(channel).await == 2 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the replicas never subscribed {channel} on its shard");
}

/// The seq of the next message `ws` receives, failing on an error frame.
async fn next_seq(ws: &mut Ws) -> i64 {
    loop {
        let frame = ws.next().await;
        assert!(frame.get("error").is_none(), "unexpected {frame}");
        if let Some(message) = frame.get("message") {
            return message["seq"].as_i64().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_and_a_reshard_mid_traffic_lose_nothing() {
    let cluster = RedisCluster::start().await;
    let url = cluster.url();
    let mut stack = TestStack::start(DatabaseBackend::Postgres).await;
    let one = ChatReplica::start(&stack, test_args(&stack, Some(&url))).await;
    let two = ChatReplica::start(&stack, test_args(&stack, Some(&url))).await;
    let settings = Settings::default();
    let gateway_a = GatewayNode::start(&stack, ServiceUrl::from_addr(one.addr), &settings).await;
    let gateway_b = GatewayNode::start(&stack, ServiceUrl::from_addr(two.addr), &settings).await;
    let alice = stack.account(&username("alice")).await;
    let bob = stack.account(&username("bob")).await;
    let room = room_id("sharded");
    let slot = cluster.slot(&format!("{{{room}}}")).await;
    let channel = format!("parley:chat:room:{{{room}}}");

    // Alice listens through gateway A and replica one; Bob sends through
    // gateway B and replica two: every message crosses the cluster.
    let mut listener = Ws::connect(gateway_a.http, &alice.access_token).await;
    listener.join(&room, 0).await;
    let mut sender = Ws::connect(gateway_b.http, &bob.access_token).await;
    sender.join(&room, 0).await;
    subscribed(&cluster, &channel).await;
    // Presence works on the cluster too: both members are in the room's
    // set, in the room's slot.
    assert_eq!(
        cluster
            .zcard(&format!("parley:chat:presence:{{{room}}}"))
            .await,
        2
    );

    // The faults run beside the traffic: the room's primary killed at 50
    // (its replica takes over), the room's slot moved at 100.
    const COUNT: i64 = 150;
    let mut cluster = Some(cluster);
    let mut fault: Option<tokio::task::JoinHandle<RedisCluster>> = None;
    for i in 1..=COUNT {
        if i == 50 {
            let mut running = cluster.take().unwrap();
            fault = Some(tokio::spawn(async move {
                running.kill_primary_of(slot).await;
                running
            }));
        } else if i == 100 {
            let running = fault.take().unwrap().await.unwrap();
            fault = Some(tokio::spawn(async move {
                running.move_slot(slot).await;
                running
            }));
        }
        sender.say(&room, &format!("n{i}"), &format!("k{i}")).await;
        assert_eq!(sender.next_kind("ack").await["seq"], i);
    }
    let cluster = fault.take().unwrap().await.unwrap();
    // After a failover and a slot move, both replicas are subscribed on
    // the room's new owner, and one more message crosses live.
    subscribed(&cluster, &channel).await;
    sender.say(&room, "after", "after").await;
    let mut received = Vec::new();
    while received.len() < COUNT as usize + 1 {
        received.push(next_seq(&mut listener).await);
    }
    assert_eq!(
        received,
        (1..=COUNT + 1).collect::<Vec<_>>(),
        "every message, once, in order"
    );
    listener.close().await;
    sender.close().await;
    gateway_a.stop().await;
    gateway_b.stop().await;
    one.stop().await;
    two.stop().await;
    stack.stop().await;
    drop(cluster);
}
