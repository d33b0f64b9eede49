//! The ceiling: a trivial in-memory broadcast server speaking the same
//! frames (join, send; joined, ack, message), with no auth, no storage and
//! no second hop. Parley's numbers are reported as a fraction of what the
//! generator reaches against it on the same machine in the same run.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Outbox = mpsc::Sender<Utf8Bytes>;

#[derive(Default)]
struct Room {
    seq: u64,
    members: Vec<Outbox>,
}

/// A running ceiling server.
#[derive(Debug)]
pub(crate) struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Listens on `listen` and serves until dropped.
    pub(crate) async fn start(listen: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let rooms: Arc<Mutex<HashMap<String, Room>>> = Arc::default();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, rooms.clone()));
            }
        });
        Ok(Self { addr, task })
    }

    /// Where it listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(stream: tokio::net::TcpStream, rooms: Arc<Mutex<HashMap<String, Room>>>) {
    let Ok(socket) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut sink, mut source) = socket.split();
    let (outbox, mut queue) = mpsc::channel::<Utf8Bytes>(4096);
    let writer = tokio::spawn(async move {
        while let Some(first) = queue.recv().await {
            if sink.feed(Message::Text(first)).await.is_err() {
                return;
            }
            while let Ok(next) = queue.try_recv() {
                if sink.feed(Message::Text(next)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(Message::Text(text))) = source.next().await {
        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        if let Some(join) = frame.get("join") {
            let room = join["room_id"].as_str().unwrap_or_default().to_owned();
            let last_seq = {
                let mut rooms = rooms
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let entry = rooms.entry(room.clone()).or_default();
                entry.members.push(outbox.clone());
                entry.seq
            };
            let joined = json!({"joined": {"room_id": room, "last_seq": last_seq, "members": [], "replay_truncated": false}});
            let _ = outbox.try_send(joined.to_string().into());
        } else if let Some(send) = frame.get("send") {
            let room = send["room_id"].as_str().unwrap_or_default();
            let mut rooms = rooms
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(entry) = rooms.get_mut(room) else {
                continue;
            };
            entry.seq += 1;
            let message: Utf8Bytes = json!({"message": {
                "id": "", "room_id": room, "seq": entry.seq, "sender_id": "", "sender_name": "",
                "content": send["content"], "client_id": send["client_id"], "sent_at": "",
            }})
            .to_string()
            .into();
            for member in &entry.members {
                let _ = member.try_send(message.clone());
            }
            let ack = json!({"ack": {"client_id": send["client_id"], "message_id": "", "seq": entry.seq}});
            let _ = outbox.try_send(ack.to_string().into());
        }
    }
    writer.abort();
}

/// The ceiling of the attachment scenario: the same three routes
/// (`POST /api/v1/attachments`, `GET` and `DELETE /api/v1/attachments/{id}`)
/// with no auth, no second hop, no disk and no database: the body is hashed
/// as it arrives and kept in memory.
pub(crate) mod files {
    use std::{
        collections::HashMap,
        net::SocketAddr,
        sync::{Arc, Mutex},
    };

    use axum::{
        Json, Router,
        body::{Body, Bytes},
        extract::{DefaultBodyLimit, Path, State},
        http::StatusCode,
        response::{IntoResponse, Response},
        routing::{get, post},
    };
    use futures_util::StreamExt as _;
    use serde_json::json;
    use sha2::{Digest as _, Sha256};
    use tokio::net::TcpListener;

    type Files = Arc<Mutex<HashMap<String, Bytes>>>;

    /// Serves on `listen` until the task is aborted.
    pub(crate) async fn start(
        listen: SocketAddr,
    ) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let files: Files = Arc::default();
        let app = Router::new()
            .route(
                "/api/v1/attachments",
                post(upload).layer(DefaultBodyLimit::disable()),
            )
            .route("/api/v1/attachments/{id}", get(download).delete(delete))
            .with_state(files);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((addr, task))
    }

    async fn upload(State(files): State<Files>, body: Body) -> Response {
        let mut stream = body.into_data_stream();
        let mut hasher = Sha256::new();
        let mut kept = Vec::new();
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else {
                return StatusCode::BAD_REQUEST.into_response();
            };
            hasher.update(&chunk);
            kept.extend_from_slice(&chunk);
        }
        let id = format!("{:032x}", rand_id());
        let size = kept.len();
        files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.clone(), kept.into());
        let sha256 = format!("{:x}", hasher.finalize());
        (
            StatusCode::CREATED,
            Json(json!({"id": id, "size": size, "sha256": sha256})),
        )
            .into_response()
    }

    async fn download(State(files): State<Files>, Path(id): Path<String>) -> Response {
        let found = files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned();
        match found {
            Some(bytes) => bytes.into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }

    async fn delete(State(files): State<Files>, Path(id): Path<String>) -> StatusCode {
        let removed = files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        if removed.is_some() {
            StatusCode::NO_CONTENT
        } else {
            StatusCode::NOT_FOUND
        }
    }

    fn rand_id() -> u128 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        u128::from(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}
