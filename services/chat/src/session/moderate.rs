//! `moderate`: kick, ban, unban, mute, unmute or set the role of a member
//! of a joined room. Queued for storage like an edit; roles are checked in
//! the transaction that stores the `member_update` event, and the writer
//! lane answers with `ack` (with a `client_id`) or `error`.

use parley_proto::chat::v1::Moderate;

use super::{Context, TraceContext};
use crate::{
    domain::RoomId,
    engine::Moderation,
    error::Error,
    writer::{Reply, Write},
};

pub(super) fn handle(cx: &Context<'_>, moderate: Moderate, trace: &TraceContext) {
    let Some(membership) = cx.session.rooms.get(moderate.room_id.as_str()) else {
        let err = match RoomId::parse("room_id", &moderate.room_id) {
            Ok(_) => Error::NotJoined(moderate.room_id.clone()),
            Err(err) => err,
        };
        cx.fail(err, &moderate.client_id, &moderate.room_id);
        return;
    };
    let span = super::send::send_span(membership.room_id(), trace);
    let asked = Moderation::of(
        moderate.action(),
        moderate.user_id,
        moderate.client_id.clone(),
    )
    .lasting(moderate.duration)
    .with_role(moderate.role);
    match cx
        .engine
        .prepare_moderation(&cx.session.user, membership.room_id().clone(), asked)
    {
        Ok(event) => {
            let reply = Reply::Session {
                link: cx.link.clone(),
                session: cx.id,
            };
            cx.engine.submit(Write::Event(event), reply, span);
        }
        Err(err) => cx.fail(err, &moderate.client_id, &moderate.room_id),
    }
}
