//! Entry points for the fuzz targets of `fuzz/` (feature `fuzzing`): what
//! chat receives on a gateway stream, decoded and checked the way the
//! session handlers check each frame before any storage is touched.

use parley_proto::chat::v1::{
    GatewayStreamRequest, chat_request::Frame as In, gateway_stream_request::Kind,
};
use prost::Message as _;

use crate::{
    domain::{
        HistoryQuery, JoinRequest, RoomId, validate_client_id, validate_content, validate_seq,
    },
    moderation::{self, Action},
    timeline::{Change, check_change},
};

/// The content limit the checks use (`CHAT_MAX_CONTENT_BYTES`' default).
const MAX_CONTENT_BYTES: usize = 4096;

/// One `GatewayStreamRequest` as a gateway would send it.
pub fn gateway_stream(bytes: &[u8]) {
    let Ok(request) = GatewayStreamRequest::decode(bytes) else {
        return;
    };
    let Some(Kind::SessionRequest(request)) = request.kind else {
        return;
    };
    let Some(frame) = request.request.and_then(|request| request.frame) else {
        return;
    };
    match frame {
        In::Join(join) => {
            let _ = validate_seq("since_seq", join.since_seq);
            let _ = JoinRequest::parse(&join.room_id, &join.short_code, join.password);
        }
        In::Leave(leave) => {
            let _ = RoomId::parse("room_id", &leave.room_id);
        }
        In::Send(send) => {
            let _ = RoomId::parse("room_id", &send.room_id);
            let _ = validate_content(&send.content, MAX_CONTENT_BYTES);
            let _ = validate_client_id(&send.client_id);
        }
        In::GetChatHistory(history) => {
            let _ = HistoryQuery::parse(&history.room_id, history.before_seq, history.limit);
        }
        In::Edit(edit) => {
            let change = Change::Edit {
                content: edit.content,
            };
            let _ = check_change(edit.seq, &change, &edit.client_id, MAX_CONTENT_BYTES);
        }
        In::Delete(delete) => {
            let _ = check_change(
                delete.seq,
                &Change::Delete,
                &delete.client_id,
                MAX_CONTENT_BYTES,
            );
        }
        In::React(react) => {
            let change = Change::React {
                emoji: react.emoji,
                remove: react.remove,
            };
            let _ = check_change(react.seq, &change, &react.client_id, MAX_CONTENT_BYTES);
        }
        In::Read(read) => {
            let _ = validate_seq("seq", read.seq);
        }
        In::Moderate(moderate) => {
            let Ok(action) = Action::from_proto(moderate.action(), &moderate.role) else {
                return;
            };
            if let Ok(duration) = moderation::duration(moderate.duration.as_ref())
                && let Ok(until) = moderation::until(action, duration, 0)
            {
                let change = Change::Moderate {
                    user_id: moderate.user_id,
                    action,
                    until,
                };
                let _ = check_change(0, &change, &moderate.client_id, MAX_CONTENT_BYTES);
            }
        }
        In::Typing(_) | In::Ping(_) | In::Refresh(_) => {}
    }
}
