//! `read`: moves the session's user's read marker in a joined room; the
//! other members hear of it, droppably. Nothing answers a success.

use futures_util::FutureExt as _;
use parley_proto::chat::v1::Read;

use super::{Context, Effect, Op};
use crate::error::Error;

pub(super) fn handle(cx: &Context<'_>, read: Read) -> Option<Op> {
    let Some(membership) = cx.session.rooms.get(read.room_id.as_str()) else {
        cx.fail(Error::NotJoined(read.room_id.clone()), "", &read.room_id);
        return None;
    };
    let room_id = membership.room_id().clone();
    let (engine, link, id, user) = cx.owned();
    Some(
        async move {
            if let Err(err) = engine.mark_read(&user, &room_id, read.seq).await {
                link.send_to(id, err.into_frame("", &read.room_id));
            }
            Effect::None
        }
        .boxed(),
    )
}
