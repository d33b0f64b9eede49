//! The `parley.chat.v1.ChatService` handlers: thin adapters from protobuf
//! to the [`Engine`].

use futures_util::StreamExt as _;
use parley_proto::chat::v1::{
    ChatRequest, ChatResponse, CreateRoomRequest, CreateRoomResponse, GatewayStreamRequest,
    GatewayStreamResponse, GetChatHistoryRequest, GetChatHistoryResponse, JoinRoomRequest,
    JoinRoomResponse, LeaveRoomRequest, LeaveRoomResponse, ListRoomMembersRequest,
    ListRoomMembersResponse, SendMessageRequest, SendMessageResponse, SessionClosed,
    SessionResponse, chat_service_server, gateway_stream_request::Kind as GatewayIn,
    gateway_stream_response::Kind as GatewayOut,
};
use parley_runtime::{grpc::status::code_name, token::Caller};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    domain::{HistoryQuery, JoinRequest, RoomId},
    engine::{Engine, PrepareError, User},
    error::Error,
    link::{Link, Outbound, OutboundStream},
    session::{Incoming, StreamActor},
    writer::Reply,
};

/// Messages per `GetChatHistoryResponse`.
const HISTORY_CHUNK: usize = 50;

/// The chat service.
#[derive(Debug, Clone)]
pub(crate) struct ChatService {
    engine: Engine,
}

impl ChatService {
    /// Handlers over `engine`.
    pub(crate) fn new(engine: Engine) -> Self {
        Self { engine }
    }

    /// The caller, from the request's bearer token. Every method checks it
    /// itself (rather than through an interceptor) because
    /// `GatewayStream` authenticates each session instead of the stream.
    fn caller<T>(&self, request: &Request<T>) -> Result<(Caller, User), Status> {
        let caller = self.engine.verifier().verify_metadata(request.metadata())?;
        let user = User::from(&caller);
        Ok((caller, user))
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
        let (_, user) = self.caller(&request)?;
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
        let (_, user) = self.caller(&request)?;
        let request = request.into_inner();
        let request = JoinRequest::parse(&request.room_id, &request.short_code, request.password)?;
        let room = self.engine.admit(&user, &request).await?;
        Ok(Response::new(JoinRoomResponse {
            room: Some(room.to_proto()),
        }))
    }

    async fn leave_room(
        &self,
        request: Request<LeaveRoomRequest>,
    ) -> Result<Response<LeaveRoomResponse>, Status> {
        let (_, user) = self.caller(&request)?;
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
        let (_, user) = self.caller(&request)?;
        let room_id = RoomId::parse("room_id", &request.get_ref().room_id)?;
        self.engine.check_readable(&user, &room_id).await?;
        let members = self.engine.members(&room_id).await;
        Ok(Response::new(ListRoomMembersResponse { members }))
    }

    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        let (_, user) = self.caller(&request)?;
        let request = request.into_inner();
        let room_id = RoomId::parse("room_id", &request.room_id)?;
        if !self.engine.is_member(&user, &room_id).await? {
            return Err(Error::NotAMember(request.room_id).into());
        }
        let stored =
            match self
                .engine
                .prepare_send(&user, room_id, request.content, request.client_id)
            {
                Ok(message) => {
                    let (sender, receiver) = oneshot::channel();
                    self.engine
                        .submit(message, Reply::Unary(sender), tracing::Span::current());
                    receiver
                        .await
                        .map_err(|_| Status::unavailable("the message writer stopped"))??
                }
                Err(PrepareError::Invalid(err)) => return Err(err.into()),
                Err(PrepareError::RateLimited(message)) => self.engine.find_retry(&message).await?,
            };
        Ok(Response::new(SendMessageResponse {
            message: Some((*stored).clone()),
        }))
    }

    type GetChatHistoryStream =
        futures_util::stream::BoxStream<'static, Result<GetChatHistoryResponse, Status>>;

    async fn get_chat_history(
        &self,
        request: Request<GetChatHistoryRequest>,
    ) -> Result<Response<Self::GetChatHistoryStream>, Status> {
        let (_, user) = self.caller(&request)?;
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
        let (caller, user) = self.caller(&request)?;
        let (link, receiver, cut) = Link::new(
            self.engine.limits().stream_queue,
            Some(user.id.clone()),
            "chat",
        );
        let actor = StreamActor::client(self.engine.clone(), link, &caller);
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
        let (link, receiver, cut) = Link::new(self.engine.limits().stream_queue, None, "gateway");
        let actor = StreamActor::gateway(self.engine.clone(), link);
        let incoming = request.into_inner().filter_map(|frame| async move {
            match frame {
                Ok(GatewayStreamRequest { kind: Some(kind) }) => Some(Ok(match kind {
                    GatewayIn::OpenSession(open) => {
                        Incoming::Open(open.session_id, open.access_token)
                    }
                    GatewayIn::SessionRequest(request) => Incoming::Frame(
                        request.session_id,
                        request.request.unwrap_or_default(),
                        request.trace_context,
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
