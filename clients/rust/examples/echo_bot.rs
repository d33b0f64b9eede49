//! An echo bot: joins a room and answers every message that is not its own.
//!
//! ```sh
//! PARLEY_SERVER=http://localhost:8080 PARLEY_KEY=<an API key of a bot> \
//!   cargo run -p parley-client --example echo_bot -- general
//! ```
//!
//! The bot's API key comes from `POST /api/v1/bots/{bot_id}/keys` (README:
//! "Bots and API keys"); with `PARLEY_USERNAME` and `PARLEY_PASSWORD`
//! instead it signs in as a user.

use parley_client::{Client, Event};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server =
        std::env::var("PARLEY_SERVER").unwrap_or_else(|_| "http://localhost:8080".to_owned());
    let room_id = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "general".to_owned());
    let client = match std::env::var("PARLEY_KEY") {
        Ok(key) => Client::with_api_key(&server, &key)?,
        Err(_) => {
            let client = Client::new(&server)?;
            let username = std::env::var("PARLEY_USERNAME")?;
            let password = std::env::var("PARLEY_PASSWORD")?;
            client.login(&username, &password).await?;
            client
        }
    };
    let me = client.me().await?;
    let connection = client.connect().await?;
    let mut room = connection.join(&room_id).await?;
    println!("{} echoes in {room_id}", me.username);
    while let Some(event) = room.next_event().await {
        if let Event::Timeline(event) = event
            && event.kind == "message"
            && event.frame["sender_id"] != me.id.as_str()
        {
            room.send(&format!(
                "{} said: {}",
                event.sender_name(),
                event.content()
            ))
            .await?;
        }
    }
    Ok(())
}
