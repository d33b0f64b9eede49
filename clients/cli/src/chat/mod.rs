//! `parley-cli chat ROOM`: the interactive terminal chat (README: "Client
//! libraries"). The screen is [`view::View`]; this loop feeds it the
//! room's events, the connection's state and the keyboard, and carries out
//! what the user asks. Sends go through the client, so a message typed
//! while the connection is down goes out once it is back, stored once.

mod view;

use std::time::{Duration, Instant};

use parley_client::{Client, Draft, Event, RoomSender};
use ratatui::crossterm::event::{self as terminal_event, Event as TerminalEvent};
use tokio::sync::mpsc;

use self::view::{Action, Input, View};
use crate::Failure;

/// A `typing` frame at most this often.
const TYPING_EVERY: Duration = Duration::from_secs(3);
/// How often the screen is redrawn without events (typing expiry).
const TICK: Duration = Duration::from_secs(1);

/// Runs the chat in ROOM until the user quits.
pub(crate) async fn run(client: &Client, room_id: &str) -> Result<(), Failure> {
    let me = client.me().await?;
    let connection = client.connect().await?;
    let mut room = connection.join(room_id).await?;
    let mut state = connection.state();
    let mut view = View::new(room_id, &me.id);
    view.connection(&state.borrow_and_update());
    match client.history(room_id, 0, 100).await {
        Ok(page) => view.history(&page.messages),
        Err(err) => view.set_status(format!("history: {err}")),
    }

    // The terminal's events come from a thread: reading them blocks.
    let (keys, mut keys_rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        while let Ok(event) = terminal_event::read() {
            if keys.blocking_send(event).is_err() {
                return;
            }
        }
    });

    let mut terminal = ratatui::init();
    let (done, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut last_typing: Option<Instant> = None;
    let mut tick = tokio::time::interval(TICK);
    let outcome = loop {
        if let Err(err) = terminal.draw(|frame| view.render(frame)) {
            break Err(Failure::Local(format!("drawing the screen: {err}")));
        }
        tokio::select! {
            event = room.next_event() => match event {
                Some(Event::Left) => {
                    view.apply(&Event::Left);
                    break Ok(());
                }
                Some(event) => view.apply(&event),
                None => break Ok(()),
            },
            changed = state.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
                view.connection(&state.borrow_and_update());
            }
            key = keys_rx.recv() => match key {
                Some(TerminalEvent::Key(key)) => match view.key(key) {
                    Action::Quit | Action::Do(Input::Quit) => break Ok(()),
                    Action::Do(Input::Help) => view.toggle_help(),
                    Action::Do(input) => perform(room.sender(), input, &done),
                    Action::Typing => {
                        if last_typing.is_none_or(|at| at.elapsed() >= TYPING_EVERY) {
                            room.typing();
                            last_typing = Some(Instant::now());
                        }
                    }
                    Action::None => {}
                },
                Some(TerminalEvent::Paste(text)) => view.paste(&text),
                Some(_) => {}
                None => break Ok(()),
            },
            Some(outcome) = done_rx.recv() => view.set_status(outcome),
            _ = tick.tick() => {}
        }
    };
    ratatui::restore();
    outcome
}

/// Carries out `input` without blocking the screen: its outcome (an
/// error, say) comes back on `done`.
fn perform(room: RoomSender, input: Input, done: &mpsc::UnboundedSender<String>) {
    let done = done.clone();
    tokio::spawn(async move {
        let outcome = match input {
            Input::Send { content, reply_to } => {
                room.send_draft(Draft {
                    content,
                    reply_to,
                    ..Draft::default()
                })
                .await
            }
            Input::Edit { seq, content } => room.edit(seq, &content).await,
            Input::Delete { seq } => room.delete(seq).await,
            Input::React { seq, emoji, remove } => room.react(seq, &emoji, remove).await,
            Input::Help | Input::Quit => return,
        };
        if let Err(err) = outcome {
            let _ = done.send(err.to_string());
        }
    });
}
