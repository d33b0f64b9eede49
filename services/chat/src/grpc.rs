//! The `parley.chat.v1.ChatService` handlers: thin adapters from protobuf
//! to the [`Engine`].

use std::sync::Arc;

use futures_util::StreamExt as _;
use parley_proto::chat::v1::{
    BanMemberRequest, BanMemberResponse, ChatRequest, ChatResponse, CreateRoomRequest,
    CreateRoomResponse, DeleteMessageRequest, DeleteMessageResponse, DeleteRoomRequest,
    DeleteRoomResponse, EditMessageRequest, EditMessageResponse, GatewayStreamRequest,
    GatewayStreamResponse, GetChatHistoryRequest, GetChatHistoryResponse, JoinRoomRequest,
    JoinRoomResponse, KickMemberRequest, KickMemberResponse, LeaveRoomRequest, LeaveRoomResponse,
    ListMyRoomsRequest, ListMyRoomsResponse, ListRoomMembersRequest, ListRoomMembersResponse,
    MarkReadRequest, MarkReadResponse, MemberAction, MemberUpdate, MuteMemberRequest,
    MuteMemberResponse, OpenDirectRoomRequest, OpenDirectRoomResponse, ReactToMessageRequest,
    ReactToMessageResponse, SendMessageRequest, SendMessageResponse, SessionClosed,
    SessionResponse, SetMemberRoleRequest, SetMemberRoleResponse, UnbanMemberRequest,
    UnbanMemberResponse, UnmuteMemberRequest, UnmuteMemberResponse, UpdateRoomRequest,
    UpdateRoomResponse, chat_response::Frame, chat_service_server,
    gateway_stream_request::Kind as GatewayIn, gateway_stream_response::Kind as GatewayOut,
};
use parley_runtime::{
    grpc::status::code_name,
    token::{Caller, GATEWAY_SECRET_HEADER, Scope, bearer_token},
};
use subtle::ConstantTimeEq as _;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    domain::{HistoryQuery, JoinRequest, RoomId},
    engine::{Draft, Engine, Moderation, PrepareError, User},
    error::Error,
    link::{Link, Outbound, OutboundStream},
    session::{Along, Incoming, StreamActor},
    timeline::{Change, StoredEvent},
    writer::{Reply, Stored, Write},
};

/// Refuses a `GatewayStream` to anyone who does not prove to be a gateway
/// (README, "How the gateway carries sessions"): with `GATEWAY_STREAM_SECRET` set, the caller must
/// present it; without, it must have a client certificate (mTLS) or call
/// from this host (the all-in-one, a laptop).
fn gateway_only<T>(request: &Request<T>, secret: Option<&str>) -> Result<(), Status> {
    if let Some(secret) = secret {
        let presented = request
            .metadata()
            .get(GATEWAY_SECRET_HEADER)
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        return if bool::from(presented.ct_eq(secret.as_bytes())) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "GatewayStream is for gateways: present GATEWAY_STREAM_SECRET",
            ))
        };
    }
    let certified = request.peer_certs().is_some_and(|certs| !certs.is_empty());
    let local = request
        .remote_addr()
        .is_some_and(|addr| addr.ip().is_loopback());
    if certified || local {
        Ok(())
    } else {
        Err(Status::permission_denied(
            "GatewayStream is for gateways: set GATEWAY_STREAM_SECRET on chat and the gateways, or use mTLS",
        ))
    }
}

/// Messages per `GetChatHistoryResponse`.
const HISTORY_CHUNK: usize = 50;

/// The chat service.
#[derive(Debug, Clone)]
pub(crate) struct ChatService {
    engine: Engine,
    /// `GATEWAY_STREAM_SECRET`, when set.
    gateway_secret: Option<Arc<str>>,
}

impl ChatService {
    /// Handlers over `engine`; `GatewayStream` needs `gateway_secret` when
    /// it is set.
    pub(crate) fn new(engine: Engine, gateway_secret: Option<Arc<str>>) -> Self {
        Self {
            engine,
            gateway_secret,
        }
    }

    /// The caller, from the request's bearer token. Every method checks it
    /// itself (rather than through an interceptor) because
    /// `GatewayStream` authenticates each session instead of the stream.
    /// `scope` is what the method needs of the token (README, "Bots and
    /// API keys"); `None` for the streams, which check each frame.
    fn caller<T>(
        &self,
        request: &Request<T>,
        scope: Option<Scope>,
    ) -> Result<(Caller, User), Status> {
        let caller = self.engine.verifier().verify_metadata(request.metadata())?;
        if let Some(scope) = scope {
            caller.require(scope)?;
        }
        let user = User::from(&caller);
        Ok((caller, user))
    }
}

impl ChatService {
    /// Queues a write and waits until it is stored.
    async fn write(&self, write: Write) -> Result<Stored, Status> {
        let (sender, receiver) = oneshot::channel();
        self.engine
            .submit(write, Reply::Unary(sender), tracing::Span::current());
        Ok(receiver
            .await
            .map_err(|_| Status::unavailable("the message writer stopped"))??)
    }

    /// An edit, deletion or reaction change by a member of the room.
    async fn change(
        &self,
        user: &User,
        room_id: &str,
        seq: i64,
        change: Change,
        client_id: String,
    ) -> Result<Stored, Status> {
        let room_id = RoomId::parse("room_id", room_id)?;
        if !self.engine.is_member(user, &room_id).await? {
            return Err(Error::NotAMemberOf(room_id.to_string()).into());
        }
        let event = self
            .engine
            .prepare_event(user, room_id, seq, change, client_id)?;
        self.write(Write::Event(event)).await
    }
}

impl ChatService {
    /// A moderation RPC: `fields` reads the request's room and what it
    /// asks; answers the event as members receive it.
    async fn moderate<T>(
        &self,
        request: Request<T>,
        fields: impl FnOnce(T) -> (String, Moderation),
    ) -> Result<Option<MemberUpdate>, Status> {
        let (_, user) = self.caller(&request, Some(Scope::ChatWrite))?;
        let (room_id, asked) = fields(request.into_inner());
        let room_id = RoomId::parse("room_id", &room_id)?;
        let event = self.engine.prepare_moderation(&user, room_id, asked)?;
        let stored = self.write(Write::Event(event)).await?;
        Ok(match stored.event.as_ref().and_then(StoredEvent::frame) {
            Some(Frame::MemberUpdate(update)) => Some(update.clone()),
            _ => None,
        })
    }
}

fn to_client(item: Outbound) -> Option<Result<ChatResponse, Status>> {
    match item {
        Outbound::Room(event) => event.response.clone().map(Ok),
        Outbound::Session(_, response) => Some(Ok(response)),
        Outbound::Close(_, status) => Some(Err(status)),
    }
}

fn to_gateway(item: Outbound) -> Option<Result<GatewayStreamResponse, Status>> {
    let kind = match item {
        Outbound::Room(event) => GatewayOut::RoomEvent((*event).clone()),
        Outbound::Session(session_id, response) => GatewayOut::SessionResponse(SessionResponse {
            session_id,
            response: Some(response),
        }),
        Outbound::Close(session_id, status) => GatewayOut::SessionClosed(SessionClosed {
            session_id,
            code: code_name(status.code()).to_owned(),
            message: status.message().to_owned(),
        }),
    };
    Some(Ok(GatewayStreamResponse { kind: Some(kind) }))
}

#[tonic::async_trait]
impl chat_service_server::ChatService for ChatService {
    async fn create_room(
        &self,
        request: Request<CreateRoomRequest>,
    ) -> Result<Response<CreateRoomResponse>, Status> {
        let (_, user) = self.caller(&request, Some(Scope::ChatWrite))?;
        let request = request.into_inner();
        let room = self
            .engine
            .create_room(&user, &request.name, &request.password)
            .await?;
        Ok(Response::new(CreateRoomResponse {
            room: Some(room.to_proto()),
        }))
    }

    async fn join_room(
        &self,
        request: Request<JoinRoomRequest>,
    ) -> Result<Response<JoinRoomResponse>, Status> {
        let (_, user) = self.caller(&request, Some(Scope::ChatRead))?;
        let request = request.into_inner();
        let request = JoinRequest::parse(&request.room_id, &request.short_code, request.password)?;
        let (room, _) = self.engine.admit(&user, &request).await?;
        Ok(Response::new(JoinRoomResponse {
            room: Some(room.to_proto()),
        }))
    }

    async fn leave_room(
        &self,
        request: Request<LeaveRoomRequest>,
    ) -> Result<Response<LeaveRoomResponse>, Status> {
        let (_, user) = self.caller(&request, Some(Scope::ChatRead))?;
        let room_id = RoomId::parse("room_id", &request.get_ref().room_id)?;
        self.engine
            .leave(&user, &room_id, None)
            .await
            .map_err(|(err, _)| err)?;
        Ok(Response::new(LeaveRoomResponse {}))
    }

    async fn list_room_members(
        &self,
        request: Request<ListRoomMembersRequest>,
    ) -> Result<Response<ListRoomMembersResponse>, Status> {
        let (_, user) = self.caller(&request, Some(Scope::ChatRead))?;
        let room_id = RoomId::parse("room_id", &request.get_ref().room_id)?;
        self.engine.check_readable(&user, &room_id).await?;
        let members = self.engine.members(&room_id).await;
        Ok(Response::new(ListRoomMembersResponse { members }))
    }

    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        let (_, user) = self.caller(&request, Some(Scope::ChatWrite))?;
        let token = bearer_token(request.metadata())
            .unwrap_or_default()
            .to_owned();
        let request = request.into_inner();
        let room_id = RoomId::parse("room_id", &request.room_id)?;
        self.engine.check_sender(&user, &room_id).await?;
        let prepared = self.engine.prepare_send(
            &user,
            room_id,
            Draft {
                content: request.content,
                client_id: request.client_id,
                reply_to: request.reply_to,
                attachments: request.attachments,
            },
        );
        let message = match prepared {
            Ok(mut message) => {
                if let Err(err) = self.engine.check_send(&mut message, &token).await {
                    self.engine.give_back(&user.id);
                    return Err(err.into());
                }
                let stored = self.write(Write::Message(message)).await?;
                stored
                    .event
                    .as_ref()
                    .and_then(StoredEvent::as_message)
                    .cloned()
                    .unwrap_or_default()
            }
            Err(PrepareError::Invalid(err)) => return Err(err.into()),
            Err(PrepareError::RateLimited(message)) => {
                (*self.engine.find_retry(&message).await?).clone()
            }
        };
        Ok(Response::new(SendMessageResponse {
            message: Some(message),
        }))
    }

    async fn edit_message(
        &self,
        request: Request<EditMessageRequest>,
    ) -> Result<Response<EditMessageResponse>, Status> {
        let (_, user) = self.caller(&request, Some(Scope::ChatWrite))?;
        let request = request.into_inner();
        let change = Change::Edit {
            content: request.content,
        };
        let stored = self
            .change(
                &user,
                &request.room_id,
                request.seq,
                change,
                request.client_id,
            )
            .await?;
        let event = match stored.event.as_ref().and_then(StoredEvent::frame) {
            Some(Frame::MessageEdited(edited)) => Some(edited.clone()),
            _ => None,
        };
        Ok(Response::new(EditMessageResponse { event }))
    }

    async fn delete_message(
        &self,
        request: Request<DeleteMessageRequest>,
    ) -> Result<Response<DeleteMessageResponse>, Status> {
        let (_, user) = self.caller(&request, Some(Scope::ChatWrite))?;
        let request = request.into_inner();
        let stored = self
            .change(
                &user,
                &request.room_id,
                request.seq,
                Change::Delete,
                request.client_id,
            )
            .await?;
        let event = match stored.event.as_ref().and_then(StoredEvent::frame) {
            Some(Frame::MessageDeleted(deleted)) => Some(deleted.clone()),
            _ => None,
        };
        Ok(Response::new(DeleteMessageResponse { event }))
    }

    async fn react_to_message(
        &self,
        request: Request<ReactToMessageRequest>,
    ) -> Result<Response<ReactToMessageResponse>, Status> {
        let (_, user) = self.caller(&request, Some(Scope::ChatWrite))?;
        let request = request.into_inner();
        let change = Change::React {
            emoji: request.emoji,
            remove: request.remove,
        };
        let stored = self
            .change(
                &user,
                &request.room_id,
                request.seq,
                change,
                request.client_id,
            )
            .await?;
        let event = match stored.event.as_ref().and_then(StoredEvent::frame) {
            Some(Frame::Reaction(reaction)) => Some(reaction.clone()),
            _ => None,
        };
        Ok(Response::new(ReactToMessageResponse {
            event,
            seq: stored.seq,
        }))
    }

    async fn mark_read(
        &self,
        request: Request<MarkReadRequest>,
    ) -> Result<Response<MarkReadResponse>, Status> {
        let (_, user) = self.caller(&request, Some(Scope::ChatWrite))?;
        let request = request.into_inner();
        let room_id = RoomId::parse("room_id", &request.room_id)?;
        let read_seq = self.engine.mark_read(&user, &room_id, request.seq).await?;
        Ok(Response::new(MarkReadResponse { read_seq }))
    }

    async fn list_my_rooms(
        &self,
        request: Request<ListMyRoomsRequest>,
    ) -> Result<Response<ListMyRoomsResponse>, Status> {
        let (_, user) = self.caller(&request, Some(Scope::ChatRead))?;
        let rooms = self.engine.my_rooms(&user).await?;
        Ok(Response::new(ListMyRoomsResponse { rooms }))
    }

    async fn kick_member(
        &self,
        request: Request<KickMemberRequest>,
    ) -> Result<Response<KickMemberResponse>, Status> {
        let event = self
            .moderate(request, |r| {
                (
                    r.room_id,
                    Moderation::of(MemberAction::Kick, r.user_id, r.client_id),
                )
            })
            .await?;
        Ok(Response::new(KickMemberResponse { event }))
    }

    async fn ban_member(
        &self,
        request: Request<BanMemberRequest>,
    ) -> Result<Response<BanMemberResponse>, Status> {
        let event = self
            .moderate(request, |r| {
                (
                    r.room_id,
                    Moderation::of(MemberAction::Ban, r.user_id, r.client_id).lasting(r.duration),
                )
            })
            .await?;
        Ok(Response::new(BanMemberResponse { event }))
    }

    async fn unban_member(
        &self,
        request: Request<UnbanMemberRequest>,
    ) -> Result<Response<UnbanMemberResponse>, Status> {
        let event = self
            .moderate(request, |r| {
                (
                    r.room_id,
                    Moderation::of(MemberAction::Unban, r.user_id, r.client_id),
                )
            })
            .await?;
        Ok(Response::new(UnbanMemberResponse { event }))
    }

    async fn mute_member(
        &self,
        request: Request<MuteMemberRequest>,
    ) -> Result<Response<MuteMemberResponse>, Status> {
        let event = self
            .moderate(request, |r| {
                (
                    r.room_id,
                    Moderation::of(MemberAction::Mute, r.user_id, r.client_id).lasting(r.duration),
                )
            })
            .await?;
        Ok(Response::new(MuteMemberResponse { event }))
    }

    async fn unmute_member(
        &self,
        request: Request<UnmuteMemberRequest>,
    ) -> Result<Response<UnmuteMemberResponse>, Status> {
        let event = self
            .moderate(request, |r| {
                (
                    r.room_id,
                    Moderation::of(MemberAction::Unmute, r.user_id, r.client_id),
                )
            })
            .await?;
        Ok(Response::new(UnmuteMemberResponse { event }))
    }

    async fn set_member_role(
        &self,
        request: Request<SetMemberRoleRequest>,
    ) -> Result<Response<SetMemberRoleResponse>, Status> {
        let event = self
            .moderate(request, |r| {
                (
                    r.room_id,
                    Moderation::of(MemberAction::SetRole, r.user_id, r.client_id).with_role(r.role),
                )
            })
            .await?;
        Ok(Response::new(SetMemberRoleResponse { event }))
    }

    async fn open_direct_room(
        &self,
        request: Request<OpenDirectRoomRequest>,
    ) -> Result<Response<OpenDirectRoomResponse>, Status> {
        let (_, user) = self.caller(&request, Some(Scope::ChatWrite))?;
        let r = request.into_inner();
        let (room, created) = self
            .engine
            .open_direct_room(&user, &r.user_id, &r.user_name)
            .await?;
        Ok(Response::new(OpenDirectRoomResponse {
            room: Some(room.to_proto()),
            created,
        }))
    }

    async fn update_room(
        &self,
        request: Request<UpdateRoomRequest>,
    ) -> Result<Response<UpdateRoomResponse>, Status> {
        let (_, user) = self.caller(&request, Some(Scope::ChatWrite))?;
        let r = request.into_inner();
        let room_id = RoomId::parse("room_id", &r.room_id)?;
        let event = self
            .engine
            .prepare_room_update(&user, room_id.clone(), r.name, r.password, r.client_id)
            .await?;
        let stored = self.write(Write::Event(event)).await?;
        let event = match stored.event.as_ref().and_then(StoredEvent::frame) {
            Some(Frame::RoomUpdated(updated)) => Some(updated.clone()),
            _ => None,
        };
        let room = self
            .engine
            .store()
            .room(&room_id)
            .await?
            .ok_or_else(|| Error::RoomNotFound(room_id.to_string()))?;
        Ok(Response::new(UpdateRoomResponse {
            room: Some(room.to_proto()),
            event,
        }))
    }

    async fn delete_room(
        &self,
        request: Request<DeleteRoomRequest>,
    ) -> Result<Response<DeleteRoomResponse>, Status> {
        let (_, user) = self.caller(&request, Some(Scope::ChatWrite))?;
        let room_id = RoomId::parse("room_id", &request.get_ref().room_id)?;
        self.engine.delete_room(&user, &room_id).await?;
        Ok(Response::new(DeleteRoomResponse {}))
    }

    type GetChatHistoryStream =
        futures_util::stream::BoxStream<'static, Result<GetChatHistoryResponse, Status>>;

    async fn get_chat_history(
        &self,
        request: Request<GetChatHistoryRequest>,
    ) -> Result<Response<Self::GetChatHistoryStream>, Status> {
        let (_, user) = self.caller(&request, Some(Scope::ChatRead))?;
        let request = request.into_inner();
        let query = HistoryQuery::parse(&request.room_id, request.before_seq, request.limit)?;
        let (messages, has_more) = self.engine.history(&user, &query).await?;
        let room_id = request.room_id;
        let mut chunks: Vec<Vec<_>> = messages.chunks(HISTORY_CHUNK).map(<[_]>::to_vec).collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let last = chunks.len() - 1;
        let responses = chunks
            .into_iter()
            .enumerate()
            .map(move |(index, messages)| {
                Ok(GetChatHistoryResponse {
                    room_id: room_id.clone(),
                    messages,
                    has_more: index == last && has_more,
                })
            });
        Ok(Response::new(futures_util::stream::iter(responses).boxed()))
    }

    type ChatStream = OutboundStream<ChatResponse>;

    async fn chat(
        &self,
        request: Request<Streaming<ChatRequest>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        let (caller, user) = self.caller(&request, None)?;
        let (link, receiver, cut, controls) = Link::new(
            self.engine.limits().stream_queue,
            Some(user.id.clone()),
            "chat",
        );
        let token = bearer_token(request.metadata())
            .unwrap_or_default()
            .to_owned();
        let actor = StreamActor::client(self.engine.clone(), link, controls, &caller, &token)?;
        let incoming = request
            .into_inner()
            .map(|frame| frame.map(|frame| Incoming::Frame(0, frame, Default::default())));
        tokio::spawn(actor.run(incoming));
        Ok(Response::new(OutboundStream::new(receiver, cut, to_client)))
    }

    type GatewayStreamStream = OutboundStream<GatewayStreamResponse>;

    async fn gateway_stream(
        &self,
        request: Request<Streaming<GatewayStreamRequest>>,
    ) -> Result<Response<Self::GatewayStreamStream>, Status> {
        gateway_only(&request, self.gateway_secret.as_deref())?;
        let (link, receiver, cut, controls) =
            Link::new(self.engine.limits().stream_queue, None, "gateway");
        let actor = StreamActor::gateway(self.engine.clone(), link, controls);
        let incoming = request.into_inner().filter_map(|frame| async move {
            match frame {
                Ok(GatewayStreamRequest { kind: Some(kind) }) => Some(Ok(match kind {
                    GatewayIn::OpenSession(open) => {
                        Incoming::Open(open.session_id, open.access_token)
                    }
                    GatewayIn::SessionRequest(request) => Incoming::Frame(
                        request.session_id,
                        request.request.unwrap_or_default(),
                        Along {
                            trace: request.trace_context,
                            token: request.access_token,
                        },
                    ),
                    GatewayIn::CloseSession(close) => Incoming::Close(close.session_id),
                })),
                Ok(GatewayStreamRequest { kind: None }) => None,
                Err(status) => Some(Err(status)),
            }
        });
        tokio::spawn(actor.run(incoming));
        Ok(Response::new(OutboundStream::new(
            receiver, cut, to_gateway,
        )))
    }
}
