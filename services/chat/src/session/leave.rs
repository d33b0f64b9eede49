//! `leave`: ends the membership, stops the room's delivery to the session,
//! then answers `left`.

use futures_util::FutureExt as _;
use parley_proto::chat::v1::{Leave, Left, chat_response::Frame as Out};

use super::{Context, Effect, Op, frame};
use crate::domain::RoomId;

pub(super) fn handle(cx: &mut Context<'_>, leave: Leave) -> Option<Op> {
    let room_id = match RoomId::parse("room_id", &leave.room_id) {
        Ok(room_id) => room_id,
        Err(err) => {
            cx.fail(err, "", &leave.room_id);
            return None;
        }
    };
    // The membership goes along: the session is busy until the leave is
    // done, and a failed leave hands it back.
    let membership = cx.session.rooms.take(room_id.as_str());
    let (engine, link, id, user) = cx.owned();
    Some(
        async move {
            match engine.leave(&user, &room_id, membership).await {
                Ok(()) => {
                    link.send_to(
                        id,
                        frame(Out::Left(Left {
                            room_id: leave.room_id,
                        })),
                    );
                    Effect::None
                }
                Err((err, membership)) => {
                    link.send_to(id, err.into_frame("", &leave.room_id));
                    membership.map_or(Effect::None, Effect::Joined)
                }
            }
        }
        .boxed(),
    )
}
