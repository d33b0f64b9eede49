//! `parley-client`: an async Rust client of Parley's public gateway (README:
//! "Client libraries").
//!
//! It carries Parley's guarantees to the application: a room's timeline
//! arrives exactly once and in `seq` order across reconnects (the
//! connection rejoins with `since_seq`), a send is stored once however
//! often the connection breaks before its acknowledgement (it is resent
//! with its `client_id`), and tokens are renewed before they expire, over
//! REST and in band on the live connection.
//!
//! ```no_run
//! # async fn demo() -> parley_client::Result<()> {
//! use parley_client::{Client, Event};
//!
//! let client = Client::new("http://localhost:8080")?;
//! client.login("ada", "correct horse battery").await?;
//! let connection = client.connect().await?;
//! let mut room = connection.join("general").await?;
//! let ack = room.send("hello").await?;
//! println!("stored as #{}", ack.seq);
//! while let Some(event) = room.next_event().await {
//!     if let Event::Timeline(event) = event {
//!         println!("{}: {}", event.sender_name(), event.content());
//!     }
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod attachments;
mod connection;
mod error;
mod events;
mod rest;

pub use attachments::Attachment;
pub use connection::{Connection, ConnectionState, Draft, Room, RoomSender};
pub use error::{Action, Error, Result};
pub use events::{Ack, Event, TimelineEvent};
pub use rest::{Client, HistoryPage, RoomInfo, Session, User};
