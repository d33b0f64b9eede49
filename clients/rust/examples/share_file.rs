//! Uploads a file with a progress line and sends it to a room.
//!
//! ```sh
//! PARLEY_SERVER=http://localhost:8080 PARLEY_USERNAME=ada PARLEY_PASSWORD=... \
//!   cargo run -p parley-client --example share_file -- general ./photo.png "the view"
//! ```

use std::{io::Write as _, path::PathBuf};

use parley_client::{Client, Draft};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server =
        std::env::var("PARLEY_SERVER").unwrap_or_else(|_| "http://localhost:8080".to_owned());
    let mut args = std::env::args().skip(1);
    let (Some(room_id), Some(path)) = (args.next(), args.next().map(PathBuf::from)) else {
        return Err("usage: share_file ROOM PATH [TEXT]".into());
    };
    let text = args.next().unwrap_or_default();
    let client = Client::new(&server)?;
    client
        .login(
            &std::env::var("PARLEY_USERNAME")?,
            &std::env::var("PARLEY_PASSWORD")?,
        )
        .await?;

    let attachment = client
        .upload_file(&path, None, |sent, total| {
            eprint!("\ruploading: {sent} of {total} bytes");
            let _ = std::io::stderr().flush();
        })
        .await?;
    eprintln!();
    let connection = client.connect().await?;
    let room = connection.join(&room_id).await?;
    let ack = room
        .send_draft(Draft {
            content: text,
            attachments: vec![attachment.id.clone()],
            ..Draft::default()
        })
        .await?;
    println!(
        "{} ({}, {} bytes) sent as #{}",
        attachment.filename, attachment.content_type, attachment.size, ack.seq
    );
    Ok(())
}
