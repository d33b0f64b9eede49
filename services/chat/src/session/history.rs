//! `get_chat_history`: one page of a room's stored messages.

use futures_util::FutureExt as _;
use parley_proto::chat::v1::{GetChatHistoryRequest, History, chat_response::Frame as Out};

use super::{Context, Effect, Op, frame};
use crate::domain::HistoryQuery;

pub(super) fn handle(cx: &Context<'_>, request: &GetChatHistoryRequest) -> Option<Op> {
    let query = match HistoryQuery::parse(&request.room_id, request.before_seq, request.limit) {
        Ok(query) => query,
        Err(err) => {
            cx.fail(err, "", &request.room_id);
            return None;
        }
    };
    let (engine, link, id, user) = cx.owned();
    let room_id = request.room_id.clone();
    Some(
        async move {
            let reply = match engine.history(&user, &query).await {
                Ok((messages, has_more)) => frame(Out::History(History {
                    room_id,
                    messages,
                    has_more,
                })),
                Err(err) => err.into_frame("", &room_id),
            };
            link.send_to(id, reply);
            Effect::None
        }
        .boxed(),
    )
}
