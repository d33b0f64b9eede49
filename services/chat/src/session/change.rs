//! `edit`, `delete` and `react`: changes to a message of a joined room,
//! queued for storage like a send; the writer lane answers with `ack` when
//! the frame has a `client_id`, or with `error`.

use parley_proto::chat::v1::{Delete, Edit, React};

use super::{Context, TraceContext};
use crate::{
    domain::RoomId,
    error::Error,
    timeline::Change,
    writer::{Reply, Write},
};

/// A change as its frame gives it.
pub(super) struct Asked {
    room_id: String,
    seq: i64,
    client_id: String,
    change: Change,
}

impl From<Edit> for Asked {
    fn from(edit: Edit) -> Self {
        Self {
            room_id: edit.room_id,
            seq: edit.seq,
            client_id: edit.client_id,
            change: Change::Edit {
                content: edit.content,
            },
        }
    }
}

impl From<Delete> for Asked {
    fn from(delete: Delete) -> Self {
        Self {
            room_id: delete.room_id,
            seq: delete.seq,
            client_id: delete.client_id,
            change: Change::Delete,
        }
    }
}

impl From<React> for Asked {
    fn from(react: React) -> Self {
        Self {
            room_id: react.room_id,
            seq: react.seq,
            client_id: react.client_id,
            change: Change::React {
                emoji: react.emoji,
                remove: react.remove,
            },
        }
    }
}

pub(super) fn handle(cx: &Context<'_>, asked: Asked, trace: &TraceContext) {
    let Some(membership) = cx.session.rooms.get(asked.room_id.as_str()) else {
        let err = match RoomId::parse("room_id", &asked.room_id) {
            Ok(_) => Error::NotJoined(asked.room_id.clone()),
            Err(err) => err,
        };
        cx.fail(err, &asked.client_id, &asked.room_id);
        return;
    };
    if membership.is_muted() && !matches!(asked.change, Change::Delete) {
        cx.fail(
            Error::Muted(asked.room_id.clone()),
            &asked.client_id,
            &asked.room_id,
        );
        return;
    }
    let span = super::send::send_span(membership.room_id(), trace);
    let prepared = cx.engine.prepare_event(
        &cx.session.user,
        membership.room_id().clone(),
        asked.seq,
        asked.change,
        asked.client_id.clone(),
    );
    match prepared {
        Ok(event) => {
            let reply = Reply::Session {
                link: cx.link.clone(),
                session: cx.id,
            };
            cx.engine.submit(Write::Event(event), reply, span);
        }
        Err(err) => cx.fail(err, &asked.client_id, &asked.room_id),
    }
}
