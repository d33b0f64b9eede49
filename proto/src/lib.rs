//! Parley's gRPC contracts: `parley.auth.v1`, `parley.user.v1`,
//! `parley.chat.v1` and `parley.media.v1`, compiled once for every service, plus what server
//! reflection and the metrics layer need to describe them.
//!
//! The module tree mirrors the proto packages, so `parley.user.v1.User` is
//! [`user::v1::User`].

// Generated code: its documentation comes from the `.proto` files and it is
// not held to the workspace lints.
#![allow(missing_docs, clippy::all, unreachable_pub)]

/// `parley.auth.v1`: accounts and tokens.
pub mod auth {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("parley.auth.v1");
    }
}

/// `parley.user.v1`: user profiles.
pub mod user {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("parley.user.v1");
    }
}

/// `parley.chat.v1`: rooms, messages, presence.
pub mod chat {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("parley.chat.v1");

        impl ChatRequest {
            /// The `client_id` and `room_id` an `error` frame about this
            /// frame echoes ("" where the frame has none).
            pub fn echo(&self) -> (String, String) {
                use chat_request::Frame;
                match &self.frame {
                    Some(Frame::Send(send)) => (send.client_id.clone(), send.room_id.clone()),
                    Some(Frame::Join(join)) => (String::new(), join.room_id.clone()),
                    Some(Frame::Leave(leave)) => (String::new(), leave.room_id.clone()),
                    Some(Frame::Typing(typing)) => (String::new(), typing.room_id.clone()),
                    Some(Frame::GetChatHistory(history)) => {
                        (String::new(), history.room_id.clone())
                    }
                    Some(Frame::Edit(edit)) => (edit.client_id.clone(), edit.room_id.clone()),
                    Some(Frame::Delete(delete)) => {
                        (delete.client_id.clone(), delete.room_id.clone())
                    }
                    Some(Frame::React(react)) => (react.client_id.clone(), react.room_id.clone()),
                    Some(Frame::Read(read)) => (String::new(), read.room_id.clone()),
                    _ => (String::new(), String::new()),
                }
            }
        }
    }
}

/// `parley.media.v1`: attachments.
pub mod media {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("parley.media.v1");
    }
}

/// The encoded `FileDescriptorSet` of every Parley proto and everything it
/// imports, with source comments, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("parley_descriptor");

pub use prost;
pub use prost_types;
pub use tonic;
