//! `join`: admits the session to a room and starts its delivery, or (for a
//! room it is in already) answers `joined` and the replay again.

use futures_util::FutureExt as _;
use parley_proto::chat::v1::Join;

use super::{Context, Effect, Op};
use crate::{
    domain::{JoinRequest, validate_seq},
    error::Error,
    membership::To,
};

pub(super) fn handle(cx: &Context<'_>, join: Join) -> Option<Op> {
    let already_joined =
        !join.room_id.is_empty() && cx.session.rooms.contains(join.room_id.as_str());
    let limit = cx.engine.limits().max_rooms_per_session;
    if !already_joined && cx.session.rooms.len() >= limit {
        cx.fail(Error::TooManyRooms(limit), "", &join.room_id);
        return None;
    }
    let request = validate_seq("since_seq", join.since_seq)
        .and_then(|()| JoinRequest::parse(&join.room_id, &join.short_code, join.password));
    let request = match request {
        Ok(request) => request,
        Err(err) => {
            cx.fail(err, "", &join.room_id);
            return None;
        }
    };
    // Replay after since_seq when it is positive, or from the start when
    // asked to.
    let since = (join.since_seq > 0 || join.replay).then_some(join.since_seq);
    let (engine, link, id, user) = cx.owned();
    let echo_room = join.room_id;
    Some(
        async move {
            let to = To {
                link: &link,
                session: id,
            };
            match engine
                .join(to, &user, &request, since, already_joined)
                .await
            {
                Ok(Some(membership)) => Effect::Joined(membership),
                Ok(None) => Effect::None,
                Err(err) => {
                    link.send_to(id, err.into_frame("", &echo_room));
                    Effect::None
                }
            }
        }
        .boxed(),
    )
}
