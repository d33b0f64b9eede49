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

        impl chat_request::Frame {
            /// The `client_id` and `room_id` an `error` frame about this
            /// frame echoes ("" where the frame has none).
            pub fn echo(&self) -> (&str, &str) {
                match self {
                    Self::Send(f) => (&f.client_id, &f.room_id),
                    Self::Edit(f) => (&f.client_id, &f.room_id),
                    Self::Delete(f) => (&f.client_id, &f.room_id),
                    Self::React(f) => (&f.client_id, &f.room_id),
                    Self::Moderate(f) => (&f.client_id, &f.room_id),
                    Self::Join(f) => ("", &f.room_id),
                    Self::Leave(f) => ("", &f.room_id),
                    Self::Typing(f) => ("", &f.room_id),
                    Self::GetChatHistory(f) => ("", &f.room_id),
                    Self::Read(f) => ("", &f.room_id),
                    Self::Ping(_) | Self::Refresh(_) => ("", ""),
                }
            }
        }

        impl ChatRequest {
            /// The `client_id` and `room_id` an `error` frame about this
            /// frame echoes ("" where the frame has none).
            pub fn echo(&self) -> (String, String) {
                let (client_id, room_id) = self.frame.as_ref().map_or(("", ""), |f| f.echo());
                (client_id.to_owned(), room_id.to_owned())
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
