//! `parley-cli`: Parley from a terminal and from scripts (README: "Client
//! libraries"). Commands print plain lines, or JSON lines with `--json`;
//! the exit code says what failed: 3 the request (fix it), 4 the sign-in
//! (log in again), 5 the server or the network (retry), 1 anything else.

mod chat;
mod credentials;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use parley_client::{Action, Client, Draft, Error, Event};
use serde_json::json;

/// Parley from a terminal and from scripts.
#[derive(Debug, Parser)]
#[command(name = "parley-cli", version, about)]
struct Cli {
    /// The gateway's URL.
    #[arg(long, env = "PARLEY_SERVER", default_value = "http://localhost:8080")]
    server: String,
    /// JSON lines instead of plain ones.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates an account (password from PARLEY_PASSWORD, else the first
    /// line of standard input).
    Register {
        /// The sign-in name.
        username: String,
    },
    /// Signs in and saves the session (mode 0600, in the config directory).
    Login {
        /// The sign-in name.
        username: String,
    },
    /// Signs out and forgets the session.
    Logout,
    /// Rooms: list yours or create one.
    Rooms {
        #[command(subcommand)]
        command: RoomsCommand,
    },
    /// Sends TEXT (with any --file attached) to ROOM and prints its seq.
    Send {
        /// The room's id.
        room: String,
        /// The message; may be empty with files.
        text: String,
        /// A file to upload and attach (up to 10).
        #[arg(long = "file", value_name = "PATH")]
        files: Vec<std::path::PathBuf>,
        /// The seq of the message this answers.
        #[arg(long, default_value_t = 0)]
        reply_to: i64,
    },
    /// Uploads a file as an attachment and prints its id.
    Upload {
        /// The file.
        path: std::path::PathBuf,
    },
    /// Writes an attachment to a file (or standard output with `-`).
    Download {
        /// The attachment's id.
        id: String,
        /// Where to write it: a path, or `-`.
        #[arg(long, short, default_value = "-")]
        output: String,
        /// The thumbnail instead of the file.
        #[arg(long)]
        thumbnail: bool,
    },
    /// An interactive chat in ROOM: messages with replies, edits and
    /// reactions, members, typing, and the connection's state.
    Chat {
        /// The room's id.
        room: String,
    },
    /// Prints ROOM's latest messages, oldest first.
    History {
        /// The room's id.
        room: String,
        /// How many (at most 200).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Prints ROOM's events as they happen, until interrupted.
    Tail {
        /// The room's id.
        room: String,
    },
}

#[derive(Debug, Subcommand)]
enum RoomsCommand {
    /// Your rooms, latest activity first.
    List,
    /// A new room with a server-made id (private with --password).
    Create {
        /// Its name.
        name: String,
        /// Makes it private: others need this to join.
        #[arg(long)]
        password: Option<String>,
    },
    /// Joins a room, which makes you a member (a public room is created by
    /// its first join).
    Join {
        /// The room's id.
        room: String,
        /// A private room's password.
        #[arg(long)]
        password: Option<String>,
    },
    /// The direct room with a user (made on first use); prints its id.
    Dm {
        /// The other user's id.
        user_id: String,
    },
}

/// Why a command failed.
enum Failure {
    Client(Error),
    Local(String),
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        Self::Client(err)
    }
}

impl From<std::io::Error> for Failure {
    fn from(err: std::io::Error) -> Self {
        Self::Local(err.to_string())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Client(err)) => {
            eprintln!("parley-cli: {err}");
            ExitCode::from(match err.action() {
                Action::FixInput => 3,
                Action::SignIn => 4,
                Action::Retry => 5,
            })
        }
        Err(Failure::Local(message)) => {
            eprintln!("parley-cli: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let json = cli.json;
    match cli.command {
        Command::Register { username } => {
            let client = Client::new(&cli.server)?;
            let user = client.register(&username, &password()?).await?;
            print(json, &json!(user), &user.id);
        }
        Command::Login { username } => {
            let client = Client::new(&cli.server)?;
            client.login(&username, &password()?).await?;
            keep(&cli.server, &client).await?;
            let me = client.me().await?;
            print(json, &json!(me), &format!("signed in as {}", me.username));
        }
        Command::Logout => {
            if let Some(saved) = credentials::load()? {
                let client = Client::new(&saved.server)?;
                // A session that no longer works needs no revoking.
                if client.resume(&saved.session).await.is_ok() {
                    client.logout().await?;
                }
            }
            credentials::remove()?;
        }
        Command::Rooms { command } => {
            let client = signed_in(&cli.server).await?;
            match command {
                RoomsCommand::List => {
                    for room in client.my_rooms().await? {
                        let line = format!(
                            "{}\t{}\t{} unread",
                            room["id"].as_str().unwrap_or_default(),
                            room["name"].as_str().unwrap_or_default(),
                            room["unread"].as_i64().unwrap_or_default()
                        );
                        print(json, &room, &line);
                    }
                }
                RoomsCommand::Create { name, password } => {
                    let room = client.create_room(&name, password.as_deref()).await?;
                    print(json, &json!(room), &room.id);
                }
                RoomsCommand::Join { room, password } => {
                    let connection = client.connect().await?;
                    let joined = connection
                        .join_with_password(&room, password.as_deref())
                        .await?;
                    print(json, &json!({"id": joined.id()}), joined.id());
                }
                RoomsCommand::Dm { user_id } => {
                    let room = client.open_direct(&user_id).await?;
                    print(json, &json!(room), &room.id);
                }
            }
        }
        Command::Send {
            room,
            text,
            files,
            reply_to,
        } => {
            let client = signed_in(&cli.server).await?;
            let mut attachments = Vec::new();
            for path in &files {
                attachments.push(client.upload_file(path, None, |_, _| {}).await?.id);
            }
            let connection = client.connect().await?;
            let room = connection.join(&room).await?;
            let ack = room
                .send_draft(Draft {
                    content: text,
                    reply_to,
                    attachments,
                    client_id: None,
                })
                .await?;
            let answer =
                json!({"seq": ack.seq, "message_id": ack.message_id, "client_id": ack.client_id});
            print(json, &answer, &ack.seq.to_string());
        }
        Command::Upload { path } => {
            let client = signed_in(&cli.server).await?;
            let attachment = client.upload_file(&path, None, |_, _| {}).await?;
            print(json, &json!(attachment), &attachment.id);
        }
        Command::Download {
            id,
            output,
            thumbnail,
        } => {
            let client = signed_in(&cli.server).await?;
            let written = if output == "-" {
                let mut out = tokio::io::stdout();
                client.download(&id, thumbnail, &mut out, |_, _| {}).await?
            } else {
                // Written beside the target and renamed when whole, so a
                // failed download leaves no half file under its name.
                let partial = format!("{output}.part");
                let mut file = tokio::fs::File::create(&partial).await?;
                let written = client.download(&id, thumbnail, &mut file, |_, _| {}).await;
                drop(file);
                match written {
                    Ok(written) => {
                        tokio::fs::rename(&partial, &output).await?;
                        written
                    }
                    Err(err) => {
                        let _ = tokio::fs::remove_file(&partial).await;
                        return Err(err.into());
                    }
                }
            };
            if output != "-" {
                let answer = json!({"id": id, "path": output, "bytes": written});
                print(json, &answer, &format!("{written} bytes to {output}"));
            }
        }
        Command::Chat { room } => {
            let client = signed_in(&cli.server).await?;
            chat::run(&client, &room).await?;
        }
        Command::History { room, limit } => {
            let client = signed_in(&cli.server).await?;
            let page = client.history(&room, 0, limit).await?;
            for message in &page.messages {
                print(json, message, &message_line(message));
            }
        }
        Command::Tail { room } => {
            let client = signed_in(&cli.server).await?;
            let connection = client.connect().await?;
            let mut room = connection.join(&room).await?;
            // On standard error, so scripts reading events see only events.
            eprintln!("following {}", room.id());
            loop {
                let event = tokio::select! {
                    event = room.next_event() => event,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                };
                match event {
                    Some(Event::Timeline(event)) => {
                        let mut frame = event.frame.clone();
                        frame["kind"] = json!(event.kind);
                        let line = if event.kind == "message" {
                            message_line(&event.frame)
                        } else {
                            format!("#{} {}", event.seq, event.kind)
                        };
                        print(json, &frame, &line);
                    }
                    Some(Event::Left) | None => return Ok(()),
                    Some(_) => {}
                }
            }
        }
    }
    Ok(())
}

/// A client signed in with the saved session, whose rotated refresh
/// token is saved again at once.
async fn signed_in(server: &str) -> Result<Client, Failure> {
    let saved = credentials::load()?.ok_or(Error::NotSignedIn)?;
    let server = if saved.server == server {
        server
    } else {
        &saved.server
    };
    let client = Client::new(server)?;
    client.resume(&saved.session).await?;
    keep(server, &client).await?;
    Ok(client)
}

async fn keep(server: &str, client: &Client) -> Result<(), Failure> {
    let session = client.session().await.ok_or(Error::NotSignedIn)?;
    credentials::save(&credentials::Saved {
        server: server.to_owned(),
        session,
    })?;
    Ok(())
}

/// The password: `PARLEY_PASSWORD`, else the first line of standard input.
fn password() -> Result<String, Failure> {
    if let Ok(password) = std::env::var("PARLEY_PASSWORD") {
        return Ok(password);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn message_line(message: &serde_json::Value) -> String {
    format!(
        "#{} {}: {}",
        message["seq"].as_i64().unwrap_or_default(),
        message["sender_name"].as_str().unwrap_or_default(),
        message["content"].as_str().unwrap_or_default()
    )
}

fn print(json: bool, value: &serde_json::Value, line: &str) {
    if json {
        println!("{value}");
    } else {
        println!("{line}");
    }
}
