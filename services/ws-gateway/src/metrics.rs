//! The gateway's metrics (README: "Metrics"). Per-frame counters are resolved once
//! and kept, so counting a frame is one atomic add on the hot path.

use std::sync::OnceLock;

use metrics::Counter;
use parley_proto::chat::v1::{chat_request::Frame as In, chat_response::Frame as Out};

/// Every kind of frame the gateway counts, in and out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum FrameKind {
    /// `join`
    Join,
    /// `leave`
    Leave,
    /// `send`
    Send,
    /// `typing` (both directions)
    Typing,
    /// `get_chat_history`
    GetChatHistory,
    /// `ping`
    Ping,
    /// `refresh`
    Refresh,
    /// `joined`
    Joined,
    /// `left`
    Left,
    /// `message`
    Message,
    /// `ack`
    Ack,
    /// `presence`
    Presence,
    /// `history`
    History,
    /// `pong`
    Pong,
    /// `refreshed`
    Refreshed,
    /// `error`
    Error,
    /// A frame that could not be read.
    Invalid,
    /// A binary frame.
    Binary,
    /// `edit`
    Edit,
    /// `delete`
    Delete,
    /// `react`
    React,
    /// `read` (both directions)
    Read,
    /// `message_edited`
    MessageEdited,
    /// `message_deleted`
    MessageDeleted,
    /// `reaction`
    Reaction,
    /// `moderate`
    Moderate,
    /// `member_update`
    MemberUpdate,
    /// `room_updated`
    RoomUpdated,
}

const KINDS: [FrameKind; 28] = [
    FrameKind::Join,
    FrameKind::Leave,
    FrameKind::Send,
    FrameKind::Typing,
    FrameKind::GetChatHistory,
    FrameKind::Ping,
    FrameKind::Refresh,
    FrameKind::Joined,
    FrameKind::Left,
    FrameKind::Message,
    FrameKind::Ack,
    FrameKind::Presence,
    FrameKind::History,
    FrameKind::Pong,
    FrameKind::Refreshed,
    FrameKind::Error,
    FrameKind::Invalid,
    FrameKind::Binary,
    FrameKind::Edit,
    FrameKind::Delete,
    FrameKind::React,
    FrameKind::Read,
    FrameKind::MessageEdited,
    FrameKind::MessageDeleted,
    FrameKind::Reaction,
    FrameKind::Moderate,
    FrameKind::MemberUpdate,
    FrameKind::RoomUpdated,
];

impl FrameKind {
    /// The kind of a client frame.
    pub(crate) fn of_request(frame: &In) -> Self {
        match frame {
            In::Join(_) => Self::Join,
            In::Leave(_) => Self::Leave,
            In::Send(_) => Self::Send,
            In::Typing(_) => Self::Typing,
            In::GetChatHistory(_) => Self::GetChatHistory,
            In::Ping(_) => Self::Ping,
            In::Refresh(_) => Self::Refresh,
            In::Edit(_) => Self::Edit,
            In::Delete(_) => Self::Delete,
            In::React(_) => Self::React,
            In::Read(_) => Self::Read,
            In::Moderate(_) => Self::Moderate,
        }
    }

    /// The kind of a server frame.
    pub(crate) fn of_response(frame: &Out) -> Self {
        match frame {
            Out::Joined(_) => Self::Joined,
            Out::Left(_) => Self::Left,
            Out::Message(_) => Self::Message,
            Out::Ack(_) => Self::Ack,
            Out::Typing(_) => Self::Typing,
            Out::Presence(_) => Self::Presence,
            Out::History(_) => Self::History,
            Out::Pong(_) => Self::Pong,
            Out::Refreshed(_) => Self::Refreshed,
            Out::Error(_) => Self::Error,
            Out::MessageEdited(_) => Self::MessageEdited,
            Out::MessageDeleted(_) => Self::MessageDeleted,
            Out::Reaction(_) => Self::Reaction,
            Out::Read(_) => Self::Read,
            Out::MemberUpdate(_) => Self::MemberUpdate,
            Out::RoomUpdated(_) => Self::RoomUpdated,
        }
    }

    /// The frame's name, as in the protocol and the `type` label.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Leave => "leave",
            Self::Send => "send",
            Self::Typing => "typing",
            Self::GetChatHistory => "get_chat_history",
            Self::Ping => "ping",
            Self::Refresh => "refresh",
            Self::Joined => "joined",
            Self::Left => "left",
            Self::Message => "message",
            Self::Ack => "ack",
            Self::Presence => "presence",
            Self::History => "history",
            Self::Pong => "pong",
            Self::Refreshed => "refreshed",
            Self::Error => "error",
            Self::Invalid => "invalid",
            Self::Binary => "binary",
            Self::Edit => "edit",
            Self::Delete => "delete",
            Self::React => "react",
            Self::Read => "read",
            Self::MessageEdited => "message_edited",
            Self::MessageDeleted => "message_deleted",
            Self::Reaction => "reaction",
            Self::Moderate => "moderate",
            Self::MemberUpdate => "member_update",
            Self::RoomUpdated => "room_updated",
        }
    }
}

struct Counters {
    received: Vec<Counter>,
    sent: Vec<Counter>,
}

static COUNTERS: OnceLock<Counters> = OnceLock::new();

fn counters() -> &'static Counters {
    COUNTERS.get_or_init(|| Counters {
        received: KINDS
            .iter()
            .map(|kind| metrics::counter!("parley_ws_frames_received_total", "type" => kind.name()))
            .collect(),
        sent: KINDS
            .iter()
            .map(|kind| metrics::counter!("parley_ws_frames_sent_total", "type" => kind.name()))
            .collect(),
    })
}

/// Counts a frame read from a client.
pub(crate) fn frame_received(kind: FrameKind) {
    if let Some(counter) = counters().received.get(kind as usize) {
        counter.increment(1);
    }
}

/// Counts frames written to a client.
pub(crate) fn frames_sent(kind: FrameKind, count: u64) {
    if let Some(counter) = counters().sent.get(kind as usize) {
        counter.increment(count);
    }
}

/// Counts a frame that never reached its socket.
pub(crate) fn queue_dropped(reason: &'static str) {
    metrics::counter!("parley_ws_send_queue_dropped_total", "reason" => reason).increment(1);
}

/// Counts an upgrade attempt by outcome.
pub(crate) fn upgrade(result: &'static str) {
    metrics::counter!("parley_ws_upgrades_total", "result" => result).increment(1);
}

/// Counts a closed connection by reason.
pub(crate) fn closed(reason: &'static str) {
    metrics::counter!("parley_ws_closed_total", "reason" => reason).increment(1);
    if reason == "slow_consumer" {
        metrics::counter!("parley_ws_slow_consumer_disconnects_total").increment(1);
    }
}

/// Unlabelled series are exported from the start, at 0.
pub(crate) fn register() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

    metrics::gauge!("parley_ws_connections").set(0.0);
    metrics::counter!("parley_ws_slow_consumer_disconnects_total").increment(0);
    describe_gauge!("parley_ws_connections", "Open WebSocket connections.");
    describe_counter!(
        "parley_ws_upgrades_total",
        "WebSocket upgrade attempts, by result."
    );
    describe_counter!(
        "parley_ws_closed_total",
        "Closed WebSocket connections, by reason."
    );
    describe_counter!(
        "parley_ws_frames_received_total",
        "Frames read from clients, by type."
    );
    describe_counter!(
        "parley_ws_frames_sent_total",
        "Frames written to clients, by type."
    );
    describe_counter!(
        "parley_ws_send_queue_dropped_total",
        "Frames dropped before reaching a client, by reason."
    );
    describe_counter!(
        "parley_ws_slow_consumer_disconnects_total",
        "Connections closed with 4008 for not reading fast enough."
    );
    describe_counter!(
        "parley_http_requests_total",
        "REST and web client requests, by route and status."
    );
    describe_histogram!(
        "parley_http_request_duration_seconds",
        Unit::Seconds,
        "REST and web client request latency."
    );
}
