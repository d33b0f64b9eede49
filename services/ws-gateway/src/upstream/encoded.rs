//! The gateway's encoded-message cache: each message is turned into JSON
//! once per gateway, by the first stream that meets it, and every other
//! stream, replay and recipient shares those bytes.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use axum::extract::ws::Utf8Bytes;
use parley_proto::chat::v1::ChatResponse;

use crate::frames;

/// Messages recently encoded to JSON, by room and seq, shared by every
/// stream of the gateway. Bounded: the oldest entries go first.
#[derive(Debug)]
pub(super) struct EncodedMessages {
    recent: Mutex<EncodedInner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct EncodedInner {
    frames: HashMap<(Arc<str>, i64), Utf8Bytes>,
    order: VecDeque<(Arc<str>, i64)>,
}

impl EncodedMessages {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            recent: Mutex::new(EncodedInner::default()),
            capacity,
        }
    }

    /// The JSON of the message frame `response` (at `room`, `seq`),
    /// encoded now only if no stream has encoded it yet.
    pub(super) fn get_or_encode(
        &self,
        room: &Arc<str>,
        seq: i64,
        response: &ChatResponse,
    ) -> Option<Utf8Bytes> {
        let key = (room.clone(), seq);
        if let Some(text) = self.lock().frames.get(&key) {
            return Some(text.clone());
        }
        // Encoded outside the lock; two streams racing on the same message
        // both encode it, which is harmless.
        let text = frames::encode_response(response)?;
        let mut recent = self.lock();
        if recent.frames.insert(key.clone(), text.clone()).is_none() {
            recent.order.push_back(key);
            while recent.order.len() > self.capacity {
                if let Some(oldest) = recent.order.pop_front() {
                    recent.frames.remove(&oldest);
                }
            }
        }
        Some(text)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EncodedInner> {
        // Entries are inserted and removed whole: a poisoned cache is
        // still consistent.
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use parley_proto::chat::v1::{ChatMessage, chat_response::Frame as Out};

    use super::*;

    fn message(room: &str, seq: i64) -> ChatResponse {
        ChatResponse {
            frame: Some(Out::Message(ChatMessage {
                room_id: room.into(),
                seq,
                ..ChatMessage::default()
            })),
        }
    }

    #[test]
    fn a_message_is_encoded_once_and_its_bytes_shared() {
        let encoded = EncodedMessages::new(2);
        let room: Arc<str> = Arc::from("r");
        let first = encoded.get_or_encode(&room, 1, &message("r", 1)).unwrap();
        let again = encoded.get_or_encode(&room, 1, &message("r", 1)).unwrap();
        assert_eq!(
            first.as_str().as_ptr(),
            again.as_str().as_ptr(),
            "the same buffer"
        );
        encoded.get_or_encode(&room, 2, &message("r", 2));
        encoded.get_or_encode(&room, 3, &message("r", 3));
        let evicted = encoded.get_or_encode(&room, 1, &message("r", 1)).unwrap();
        assert_ne!(
            first.as_str().as_ptr(),
            evicted.as_str().as_ptr(),
            "the oldest was dropped"
        );
        assert_eq!(first, evicted);
    }
}
