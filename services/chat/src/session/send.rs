//! `send`: queues a message of a joined room for storage; the writer lane
//! answers with `ack` (or `error`) once it is stored.

use futures_util::FutureExt as _;
use parley_proto::chat::v1::{Ack, Send as SendFrame, chat_response::Frame as Out};

use super::{Context, Effect, Op, TraceContext, frame};
use crate::{
    domain::RoomId,
    engine::{Draft, Engine, PrepareError},
    error::Error,
    writer::{Reply, Write},
};

pub(super) fn handle(cx: &Context<'_>, send: SendFrame, trace: &TraceContext) -> Option<Op> {
    let room_id = match cx.session.rooms.get(send.room_id.as_str()) {
        Some(membership) if membership.is_muted() => {
            let err = Error::Muted(send.room_id.clone());
            cx.fail(err, &send.client_id, &send.room_id);
            return None;
        }
        Some(membership) => membership.room_id().clone(),
        None => {
            let err = match RoomId::parse("room_id", &send.room_id) {
                Ok(_) => Error::NotJoined(send.room_id.clone()),
                Err(err) => err,
            };
            cx.fail(err, &send.client_id, &send.room_id);
            return None;
        }
    };
    let span = send_span(&room_id, trace);
    let client_id = send.client_id.clone();
    let prepared = cx.engine.prepare_send(
        &cx.session.user,
        room_id,
        Draft {
            content: send.content,
            client_id: send.client_id,
            reply_to: send.reply_to,
            attachments: send.attachments,
        },
    );
    match prepared {
        Ok(message) if !Engine::needs_check(&message) => {
            let reply = Reply::Session {
                link: cx.link.clone(),
                session: cx.id,
            };
            cx.engine.submit(Write::Message(message), reply, span);
            None
        }
        Ok(mut message) => {
            // A reply or attachments: checked first, while the session's
            // later frames wait.
            let token = cx.token();
            let (engine, link, id, _) = cx.owned();
            Some(
                async move {
                    match engine.check_send(&mut message, &token).await {
                        Ok(()) => {
                            let reply = Reply::Session {
                                link: link.clone(),
                                session: id,
                            };
                            engine.submit(Write::Message(message), reply, span);
                        }
                        Err(err) => {
                            engine.give_back(&message.sender_id);
                            link.send_to(id, err.into_frame(&message.client_id, &message.room_id));
                        }
                    }
                    Effect::None
                }
                .boxed(),
            )
        }
        Err(PrepareError::Invalid(err)) => {
            cx.fail(err, &client_id, &send.room_id);
            None
        }
        Err(PrepareError::RateLimited(message)) => {
            // Possibly a retry, which is answered over the rate.
            let (engine, link, id, _) = cx.owned();
            Some(
                async move {
                    let reply = match engine.find_retry(&message).await {
                        Ok(stored) => frame(Out::Ack(Ack {
                            client_id: stored.client_id.clone(),
                            message_id: stored.id.clone(),
                            seq: stored.seq,
                        })),
                        Err(err) => err.into_frame(&message.client_id, &message.room_id),
                    };
                    link.send_to(id, reply);
                    Effect::None
                }
                .boxed(),
            )
        }
    }
}

/// The span of one send, a child of the client's frame when the gateway
/// sent its trace context; none when traces are not exported.
pub(super) fn send_span(room_id: &str, trace: &TraceContext) -> tracing::Span {
    if !parley_runtime::telemetry::exporting() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!("chat.send", otel.kind = "server", chat.room_id = %room_id);
    parley_runtime::telemetry::set_parent_from(&span, trace);
    span
}
