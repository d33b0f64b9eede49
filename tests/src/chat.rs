//! Chat replicas started next to a [`TestStack`], and a client of the
//! `Chat` stream that reads frames with a deadline.

use std::{net::SocketAddr, time::Duration};

use parley_chat::ChatArgs;
use parley_proto::chat::v1::{
    ChatMessage, ChatRequest, ChatResponse, Join, Joined, Send, chat_request::Frame as In,
    chat_response::Frame as Out, chat_service_client::ChatServiceClient,
};
use parley_runtime::CancellationToken;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Streaming, transport::Channel};

use crate::{DatabaseBackend, TestStack, authed, channel, listeners, wait_until_serving};

/// The shared Redis of this machine.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// How long a test waits for one frame before failing.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(15);

/// One running chat replica.
#[derive(Debug)]
pub struct ChatReplica {
    /// gRPC address.
    pub addr: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// A client.
    pub client: ChatServiceClient<Channel>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

/// Settings for test replicas: generous rate limits, a short presence TTL
/// and a small replay limit, so tests run fast and reach the limits.
pub fn test_args(stack: &TestStack, redis_url: Option<&str>) -> ChatArgs {
    let localhost: SocketAddr = ([127, 0, 0, 1], 0).into();
    ChatArgs {
        grpc_addr: localhost,
        admin_addr: localhost,
        database_url: stack.database_url("chat"),
        redis_url: redis_url.map(str::to_owned),
        max_content_bytes: 4096,
        max_replay: 20,
        sends_per_second: 10_000,
        send_burst: 10_000,
        joins_per_second: 10,
        join_burst: 100,
        max_rooms_per_session: 100,
        max_sessions_per_user: 64,
        writer_lanes: 1,
        write_linger: std::time::Duration::from_millis(1),
        max_sessions_per_stream: 65_536,
        max_rooms_per_creator: 1000,
        stream_queue: 4096,
        presence_ttl: Duration::from_millis(1500),
        cors_origins: parley_runtime::config::CorsOrigins::None,
        tls: Default::default(),
        gateway_stream_secret: None,
        bus_secret: Some(BUS_SECRET.into()),
    }
}

/// The `CHAT_BUS_SECRET` of every test replica.
pub const BUS_SECRET: &str = "test bus secret";

/// The `GATEWAY_STREAM_SECRET` of the distributed test deployments.
pub const GATEWAY_STREAM_SECRET: &str = "test-gateway-stream-secret";

impl ChatReplica {
    /// Starts a replica with `args` (addresses are ignored: port 0) and
    /// waits until it is ready.
    pub async fn start(stack: &TestStack, args: ChatArgs) -> Self {
        let listeners = listeners().await;
        let addr = listeners.grpc_addr().expect("chat address");
        let admin = listeners.admin_addr().expect("chat admin address");
        let shutdown = CancellationToken::new();
        let config = parley_chat::Config {
            chat: ChatArgs {
                grpc_addr: addr,
                admin_addr: admin,
                ..args
            },
            auth_url: stack.auth_url(),
            media_url: stack.media_url(),
            shutdown_grace: Duration::from_secs(5),
        };
        let app = parley_chat::with_listeners(config, listeners, shutdown.clone())
            .await
            .expect("chat builds");
        let task = tokio::spawn(async move { app.run().await.map_err(|e| format!("{e:#}")) });
        let channel = channel(addr).await;
        wait_until_serving(channel.clone(), "parley.chat.v1.ChatService").await;
        Self {
            addr,
            admin,
            client: ChatServiceClient::new(channel),
            shutdown,
            task,
        }
    }

    /// Stops the replica and checks it drained cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("chat stops within the grace period")
            .expect("chat task does not panic");
        assert_eq!(result, Ok(()));
    }
}

/// The chat topology of one backend: on Postgres two replicas sharing
/// Redis, on SQLite one replica with the in-process bus (reached twice, so
/// the same tests run on both).
#[derive(Debug)]
pub struct ChatCluster {
    /// auth and user.
    pub stack: TestStack,
    /// The replicas.
    pub replicas: Vec<ChatReplica>,
}

impl ChatCluster {
    /// Starts the topology of `backend`, with `tweak` applied to the
    /// replicas' settings.
    pub async fn start_with(backend: DatabaseBackend, tweak: impl Fn(&mut ChatArgs)) -> Self {
        Self::start_on(TestStack::start(backend).await, backend, tweak).await
    }

    /// Starts the topology of `backend` with a media service beside it, on
    /// a folder, which the replicas ask about attachments.
    pub async fn start_with_media(backend: DatabaseBackend) -> (Self, crate::media::MediaServer) {
        let mut stack = TestStack::start(backend).await;
        let media =
            crate::media::MediaServer::start(&stack, crate::media::Store::Folder, |_| {}).await;
        stack.media_url = Some(parley_runtime::config::ServiceUrl::from_addr(media.addr));
        (Self::start_on(stack, backend, |_| {}).await, media)
    }

    async fn start_on(
        stack: TestStack,
        backend: DatabaseBackend,
        tweak: impl Fn(&mut ChatArgs),
    ) -> Self {
        let redis = (backend == DatabaseBackend::Postgres).then_some(REDIS_URL);
        let mut replicas = Vec::new();
        let count = if redis.is_some() { 2 } else { 1 };
        for _ in 0..count {
            let mut args = test_args(&stack, redis);
            tweak(&mut args);
            replicas.push(ChatReplica::start(&stack, args).await);
        }
        Self { stack, replicas }
    }

    /// Starts the topology of `backend` with the test settings.
    pub async fn start(backend: DatabaseBackend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// Replica `index` of two: on SQLite both are the one replica.
    pub fn replica(&self, index: usize) -> &ChatReplica {
        &self.replicas[index % self.replicas.len()]
    }

    /// A client of replica `index`.
    pub fn client(&self, index: usize) -> ChatServiceClient<Channel> {
        self.replica(index).client.clone()
    }

    /// Opens a `Chat` stream on replica `index` as `token`'s user.
    pub async fn connect(&self, index: usize, token: &str) -> ChatStream {
        ChatStream::open(self.client(index), token).await
    }

    /// Stops everything.
    pub async fn stop(self) {
        for replica in self.replicas {
            replica.stop().await;
        }
        self.stack.stop().await;
    }
}

/// A unique room id, so tests sharing Redis never meet.
pub fn room_id(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid_like())
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{:x}{:x}{}",
        nanos,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A client's `Chat` stream.
#[derive(Debug)]
pub struct ChatStream {
    requests: mpsc::Sender<ChatRequest>,
    responses: Streaming<ChatResponse>,
}

impl ChatStream {
    /// Opens the stream.
    pub async fn open(mut client: ChatServiceClient<Channel>, token: &str) -> Self {
        let (requests, receiver) = mpsc::channel(1024);
        let responses = client
            .chat(authed(ReceiverStream::new(receiver), token))
            .await
            .expect("Chat stream opens")
            .into_inner();
        Self {
            requests,
            responses,
        }
    }

    /// Sends one frame.
    pub async fn send_frame(&self, frame: In) {
        self.requests
            .send(ChatRequest { frame: Some(frame) })
            .await
            .expect("the stream takes frames");
    }

    /// The next frame, failing the test after [`FRAME_TIMEOUT`].
    pub async fn next(&mut self) -> Out {
        match self.try_next().await {
            Ok(frame) => frame,
            Err(status) => panic!("the stream ended: {status:?}"),
        }
    }

    /// The next frame, or the status the stream ended with.
    pub async fn try_next(&mut self) -> Result<Out, tonic::Status> {
        let response = tokio::time::timeout(FRAME_TIMEOUT, self.responses.message())
            .await
            .expect("a frame within the timeout")?;
        let response = response.ok_or_else(|| tonic::Status::ok("stream ended"))?;
        Ok(response.frame.expect("every response has a frame"))
    }

    /// The next frame that `pick` accepts, skipping others (presence,
    /// typing, acks) on the way.
    pub async fn next_matching<T>(&mut self, mut pick: impl FnMut(Out) -> Option<T>) -> T {
        loop {
            if let Some(found) = pick(self.next().await) {
                return found;
            }
        }
    }

    /// The next message, skipping other frames.
    pub async fn next_message(&mut self) -> ChatMessage {
        self.next_matching(|frame| match frame {
            Out::Message(message) => Some(message),
            Out::Error(error) => panic!("unexpected error frame: {error:?}"),
            _ => None,
        })
        .await
    }

    /// Joins `room_id` (with `since_seq`) and returns the `joined` frame.
    pub async fn join(&mut self, room_id: &str, since_seq: i64) -> Joined {
        self.send_frame(In::Join(Join {
            room_id: room_id.into(),
            since_seq,
            ..Join::default()
        }))
        .await;
        self.next_matching(|frame| match frame {
            Out::Joined(joined) => Some(joined),
            Out::Error(error) => panic!("join failed: {error:?}"),
            _ => None,
        })
        .await
    }

    /// Sends `content` to `room_id` with `client_id`.
    pub async fn say(&self, room_id: &str, content: &str, client_id: &str) {
        self.send_frame(In::Send(Send {
            room_id: room_id.into(),
            content: content.into(),
            client_id: client_id.into(),
            reply_to: 0,
            attachments: Vec::new(),
        }))
        .await;
    }

    /// Closes the client's side.
    pub fn close(self) {
        drop(self);
    }
}
