//! Chat replicas on a real Redis Cluster (three primaries, three
//! replicas): room events cross replicas through sharded pub/sub, and
//! survive the room's primary being killed (its replica promoted) and the
//! room's slot being moved to another primary, while traffic flows.

use parley_proto::chat::v1::chat_response::Frame as Out;
use parley_tests::{
    DatabaseBackend, TestStack,
    chat::{ChatReplica, ChatStream, room_id, test_args},
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_and_a_reshard_mid_traffic_lose_nothing() {
    let cluster = RedisCluster::start().await;
    let url = cluster.url();
    let mut stack = TestStack::start(DatabaseBackend::Postgres).await;
    let one = ChatReplica::start(&stack, test_args(&stack, Some(&url))).await;
    let two = ChatReplica::start(&stack, test_args(&stack, Some(&url))).await;
    let (_, alice_token) = stack.signed_up("alice").await;
    let (_, bob_token) = stack.signed_up("bob").await;
    let room = room_id("sharded");
    let slot = cluster.slot(&format!("{{{room}}}")).await;

    let channel = format!("parley:chat:room:{{{room}}}");

    let mut listener = ChatStream::open(one.client.clone(), &alice_token).await;
    listener.join(&room, 0).await;
    let mut sender = ChatStream::open(two.client.clone(), &bob_token).await;
    sender.join(&room, 0).await;
    subscribed(&cluster, &channel).await;

    // The faults run beside the traffic: the room's primary killed at 50
    // (its replica takes over), the room's slot moved at 100.
    const COUNT: i64 = 150;
    let mut cluster = Some(cluster);
    let mut fault: Option<tokio::task::JoinHandle<RedisCluster>> = None;
    let mut received = Vec::new();
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
        let ack = sender
            .next_matching(|frame| match frame {
                Out::Ack(ack) => Some(ack.seq),
                Out::Error(error) => panic!("a send failed: {error:?}"),
                _ => None,
            })
            .await;
        assert_eq!(ack, i);
    }
    let cluster = fault.take().unwrap().await.unwrap();
    // After a failover and a slot move, both replicas are subscribed on
    // the room's new owner.
    subscribed(&cluster, &channel).await;
    // One more after the reshard settled: it must travel live.
    sender.say(&room, "after", "after").await;
    while received.len() < COUNT as usize + 1 {
        received.push(
            listener
                .next_matching(|frame| match frame {
                    Out::Message(message) => Some(message.seq),
                    Out::Error(error) => panic!("unexpected error frame: {error:?}"),
                    _ => None,
                })
                .await,
        );
    }
    assert_eq!(
        received,
        (1..=COUNT + 1).collect::<Vec<_>>(),
        "every message, once, in order"
    );
    one.stop().await;
    two.stop().await;
    stack.stop().await;
    drop(cluster);
}
