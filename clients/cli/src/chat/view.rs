//! The interactive chat's state and screen, apart from the terminal and
//! the network: events and keys go in, a frame comes out. So the whole
//! screen is tested with ratatui's test backend.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use parley_client::{ConnectionState, Event, TimelineEvent};
use ratatui::{
    Frame,
    crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Block, Paragraph},
};
use serde_json::Value;
use unicode_width::UnicodeWidthChar as _;

/// How long a `typing` frame shows its sender as typing.
const TYPING_SHOWS: Duration = Duration::from_secs(4);
/// Members are listed beside the messages from this terminal width on.
const MEMBERS_FROM_WIDTH: u16 = 70;
const MEMBERS_WIDTH: u16 = 22;

/// What the user asked for with the input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    Send {
        content: String,
        reply_to: i64,
    },
    Edit {
        seq: i64,
        content: String,
    },
    Delete {
        seq: i64,
    },
    React {
        seq: i64,
        emoji: String,
        remove: bool,
    },
    Help,
    Quit,
}

/// What a key press leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    None,
    /// The user is typing: worth telling the room (throttled by the caller).
    Typing,
    Do(Input),
    Quit,
}

/// Parses the input line: text is a message; `/reply N text`, `/edit N
/// text`, `/delete N`, `/react N emoji`, `/unreact N emoji`, `/help` and
/// `/quit` are commands.
pub(crate) fn parse(line: &str) -> Result<Input, String> {
    let line = line.trim_end();
    let Some(command) = line.strip_prefix('/') else {
        return Ok(Input::Send {
            content: line.to_owned(),
            reply_to: 0,
        });
    };
    let mut words = command.splitn(3, ' ');
    let name = words.next().unwrap_or_default();
    let seq = |word: Option<&str>| -> Result<i64, String> {
        word.and_then(|w| w.trim_start_matches('#').parse().ok())
            .filter(|seq: &i64| *seq > 0)
            .ok_or_else(|| format!("/{name} needs a message number, e.g. /{name} 12"))
    };
    let rest = |word: Option<&str>| -> Result<String, String> {
        word.map(str::trim)
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| format!("/{name} needs text after the number"))
    };
    match name {
        "reply" => Ok(Input::Send {
            reply_to: seq(words.next())?,
            content: rest(words.next())?,
        }),
        "edit" => Ok(Input::Edit {
            seq: seq(words.next())?,
            content: rest(words.next())?,
        }),
        "delete" => Ok(Input::Delete {
            seq: seq(words.next())?,
        }),
        "react" | "unreact" => Ok(Input::React {
            seq: seq(words.next())?,
            emoji: rest(words.next())?,
            remove: name == "unreact",
        }),
        "help" | "?" => Ok(Input::Help),
        "quit" | "q" => Ok(Input::Quit),
        _ => Err(format!("no command /{name}: /help lists them")),
    }
}

#[derive(Debug, Clone, Default)]
struct Message {
    sender_id: String,
    sender: String,
    content: String,
    time: String,
    reply_to: i64,
    edited: bool,
    deleted: bool,
    /// Emoji, count and (some of) the users who reacted.
    reactions: Vec<(String, i64, Vec<String>)>,
    /// File name and size.
    attachments: Vec<(String, u64)>,
}

#[derive(Debug, Clone)]
enum Entry {
    Message(Message),
    /// A member or room update, as a line of its own.
    Notice(String),
}

/// The chat's state.
#[derive(Debug)]
pub(crate) struct View {
    room_id: String,
    name: String,
    me: String,
    entries: BTreeMap<i64, Entry>,
    /// Online members by id.
    members: BTreeMap<String, String>,
    typing: HashMap<String, (String, Instant)>,
    connection: String,
    /// The last error or notice, until the next key.
    status: String,
    input: String,
    /// Lines scrolled up from the bottom.
    scroll: usize,
    help: bool,
}

impl View {
    pub(crate) fn new(room_id: &str, me: &str) -> Self {
        Self {
            room_id: room_id.to_owned(),
            name: room_id.to_owned(),
            me: me.to_owned(),
            entries: BTreeMap::new(),
            members: BTreeMap::new(),
            typing: HashMap::new(),
            connection: "connecting".into(),
            status: String::new(),
            input: String::new(),
            scroll: 0,
            help: false,
        }
    }

    /// Messages of a history page, in their current state.
    pub(crate) fn history(&mut self, messages: &[Value]) {
        for message in messages {
            let seq = message["seq"].as_i64().unwrap_or_default();
            self.entries
                .insert(seq, Entry::Message(message_of(message)));
        }
    }

    pub(crate) fn set_status(&mut self, status: impl Into<String>) {
        self.status = status.into();
    }

    pub(crate) fn connection(&mut self, state: &ConnectionState) {
        self.connection = match state {
            ConnectionState::Connecting => "connecting".into(),
            ConnectionState::Connected => "online".into(),
            ConnectionState::Reconnecting { attempt, reason } => {
                format!("reconnecting (try {attempt}: {reason})")
            }
            ConnectionState::Failed(reason) => format!("signed out: {reason}"),
        };
    }

    pub(crate) fn toggle_help(&mut self) {
        self.help = !self.help;
    }

    /// Applies an event of the room.
    pub(crate) fn apply(&mut self, event: &Event) {
        match event {
            Event::Timeline(event) => self.timeline(event),
            Event::Joined(frame) => {
                if let Some(name) = frame["name"].as_str().filter(|n| !n.is_empty()) {
                    name.clone_into(&mut self.name);
                }
                self.members = frame["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| (text(&m["user_id"]), text(&m["name"])))
                    .collect();
            }
            Event::Ephemeral { kind, frame } => {
                let user = text(&frame["user_id"]);
                match kind.as_str() {
                    "typing" if user != self.me => {
                        self.typing
                            .insert(user, (text(&frame["name"]), Instant::now()));
                    }
                    "presence" if frame["state"] == "joined" => {
                        self.members.insert(user, text(&frame["name"]));
                    }
                    "presence" => {
                        self.members.remove(&user);
                        self.typing.remove(&user);
                    }
                    _ => {}
                }
            }
            Event::ReplayTruncated => {
                self.status =
                    "more was missed than the server replays; older messages are in history".into();
            }
            Event::Left => self.status = "you are no longer in this room".into(),
            Event::Error { code, message } => self.status = format!("{code}: {message}"),
        }
    }

    fn timeline(&mut self, event: &TimelineEvent) {
        let frame = &event.frame;
        let target = frame["target_seq"].as_i64().unwrap_or_default();
        match event.kind.as_str() {
            "message" => {
                self.typing.remove(&text(&frame["sender_id"]));
                self.entries
                    .insert(event.seq, Entry::Message(message_of(frame)));
            }
            "message_edited" => {
                if let Some(Entry::Message(message)) = self.entries.get_mut(&target) {
                    message.content = text(&frame["content"]);
                    message.edited = true;
                }
            }
            "message_deleted" => {
                if let Some(Entry::Message(message)) = self.entries.get_mut(&target) {
                    message.deleted = true;
                    message.content.clear();
                    message.reactions.clear();
                    message.attachments.clear();
                }
            }
            "reaction" => {
                if let Some(Entry::Message(message)) = self.entries.get_mut(&target) {
                    react(message, frame);
                }
            }
            "member_update" => {
                let notice = format!(
                    "{} was {} by {}",
                    text(&frame["name"]),
                    match frame["action"].as_str().unwrap_or_default() {
                        "kick" => "removed",
                        "ban" => "banned",
                        "unban" => "unbanned",
                        "mute" => "muted",
                        "unmute" => "unmuted",
                        _ => "given a new role",
                    },
                    text(&frame["by_name"]).if_empty("a moderator")
                );
                self.entries.insert(event.seq, Entry::Notice(notice));
            }
            "room_updated" => {
                if let Some(name) = frame["name"].as_str().filter(|n| !n.is_empty()) {
                    name.clone_into(&mut self.name);
                }
                let notice = format!("the room is now “{}”", self.name);
                self.entries.insert(event.seq, Entry::Notice(notice));
            }
            _ => {}
        }
    }

    /// Handles a key: edits the input line, scrolls, or says what to do.
    pub(crate) fn key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        let control = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c' | 'd') if control => return Action::Quit,
            KeyCode::Esc if self.help => self.help = false,
            KeyCode::Esc => return Action::Quit,
            KeyCode::F(1) => self.toggle_help(),
            KeyCode::Enter => {
                let line = std::mem::take(&mut self.input);
                if line.trim().is_empty() {
                    return Action::None;
                }
                self.scroll = 0;
                return match parse(&line) {
                    Ok(input) => Action::Do(input),
                    Err(error) => {
                        self.status = error;
                        self.input = line;
                        Action::None
                    }
                };
            }
            KeyCode::Backspace => {
                self.input.pop();
            }
            KeyCode::Up => self.scroll = self.scroll.saturating_add(1),
            KeyCode::Down => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_add(10),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_sub(10),
            KeyCode::End => self.scroll = 0,
            KeyCode::Char(c) if !control => {
                self.input.push(c);
                self.status.clear();
                return if self.input.starts_with('/') {
                    Action::None
                } else {
                    Action::Typing
                };
            }
            _ => {}
        }
        Action::None
    }

    /// Text pasted at once (bracketed paste): one line of input.
    pub(crate) fn paste(&mut self, text: &str) {
        self.input.push_str(&text.replace(['\r', '\n'], " "));
    }

    /// Draws the whole screen.
    pub(crate) fn render(&self, frame: &mut Frame<'_>) {
        let [title, body, typing, input, footer] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(1),
            Constraint::Length(3),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        let online = self.connection == "online";
        frame.render_widget(
            Line::from(vec![
                Span::from(format!(" {} ", self.name)).bold(),
                Span::from(format!("({}) ", self.room_id)).dark_gray(),
                Span::from(format!("· {}", self.connection)).fg(if online {
                    Color::Green
                } else {
                    Color::Yellow
                }),
            ])
            .style(Style::new().bg(Color::Black)),
            title,
        );
        let (messages, members) = if body.width >= MEMBERS_FROM_WIDTH {
            let [messages, members] =
                Layout::horizontal([Constraint::Min(20), Constraint::Length(MEMBERS_WIDTH)])
                    .areas(body);
            (messages, Some(members))
        } else {
            (body, None)
        };
        if self.help {
            frame.render_widget(help(), messages);
        } else {
            frame.render_widget(self.messages(messages), messages);
        }
        if let Some(area) = members {
            frame.render_widget(self.members(), area);
        }
        frame.render_widget(Line::from(self.typing_line()).italic().dark_gray(), typing);
        let cursor = self.input.chars().count();
        frame.render_widget(
            Paragraph::new(self.input.as_str()).block(Block::bordered().title(" message ")),
            input,
        );
        let x = input.x
            + 1
            + u16::try_from(cursor)
                .unwrap_or(u16::MAX)
                .min(input.width.saturating_sub(3));
        frame.set_cursor_position((x, input.y + 1));
        let footer_line = if self.status.is_empty() {
            Line::from(
                " Enter send · /reply N text · /react N 👍 · /edit N text · /delete N · F1 help · Esc quit",
            )
            .dark_gray()
        } else {
            Line::from(format!(" {}", self.status)).yellow()
        };
        frame.render_widget(footer_line, footer);
    }

    fn typing_line(&self) -> String {
        let now = Instant::now();
        let mut names: Vec<&str> = self
            .typing
            .values()
            .filter(|(_, at)| now.duration_since(*at) < TYPING_SHOWS)
            .map(|(name, _)| name.as_str())
            .collect();
        names.sort_unstable();
        match names.as_slice() {
            [] => String::new(),
            [one] => format!(" {one} is typing…"),
            many => format!(" {} are typing…", many.join(", ")),
        }
    }

    fn members(&self) -> Paragraph<'_> {
        let mut names: Vec<&str> = self.members.values().map(String::as_str).collect();
        names.sort_unstable();
        let lines: Vec<Line<'_>> = names
            .into_iter()
            .map(|n| Line::from(format!("● {n}")).green())
            .collect();
        Paragraph::new(lines)
            .block(Block::bordered().title(format!(" online {} ", self.members.len())))
    }

    /// The newest lines that fit, `scroll` lines up from the bottom.
    fn messages(&self, area: Rect) -> Paragraph<'_> {
        let width = usize::from(area.width.max(1));
        let mut lines = Vec::new();
        for (seq, entry) in &self.entries {
            let entry_lines = match entry {
                Entry::Message(message) => self.message_lines(*seq, message),
                Entry::Notice(notice) => vec![
                    Line::from(format!("#{seq} · {notice}"))
                        .dark_gray()
                        .italic(),
                ],
            };
            for line in entry_lines {
                lines.extend(wrap(line, width));
            }
        }
        let height = usize::from(area.height);
        let scroll = self.scroll.min(lines.len().saturating_sub(height));
        let end = lines.len() - scroll;
        let start = end.saturating_sub(height);
        Paragraph::new(lines[start..end].to_vec())
    }

    fn message_lines(&self, seq: i64, message: &Message) -> Vec<Line<'static>> {
        let own = message.sender_id == self.me;
        let sender = Span::from(format!("{}:", message.sender))
            .bold()
            .fg(if own { Color::Cyan } else { Color::Magenta });
        let mut head = vec![
            Span::from(format!("#{seq} ")).dark_gray(),
            Span::from(format!("{} ", message.time)).dark_gray(),
            sender,
            Span::from(" "),
        ];
        if message.deleted {
            head.push(Span::from("message deleted").dark_gray().italic());
        } else {
            head.push(Span::from(message.content.clone()));
            if message.edited {
                head.push(Span::from(" (edited)").dark_gray());
            }
        }
        let mut lines = Vec::new();
        if message.reply_to > 0 {
            let quoted = match self.entries.get(&message.reply_to) {
                Some(Entry::Message(original)) if !original.deleted => {
                    format!("{}: {}", original.sender, snippet(&original.content))
                }
                Some(Entry::Message(_)) => "a deleted message".to_owned(),
                _ => "an earlier message".to_owned(),
            };
            lines.push(Line::from(format!("  ↪ #{} {quoted}", message.reply_to)).dark_gray());
        }
        lines.push(Line::from(head));
        for (filename, size) in &message.attachments {
            lines.push(Line::from(format!("    📎 {filename} ({})", bytes(*size))).blue());
        }
        if !message.reactions.is_empty() {
            let mut spans = vec![Span::from("    ")];
            for (emoji, count, users) in &message.reactions {
                let mine = users.contains(&self.me);
                let style = if mine {
                    Style::new().add_modifier(Modifier::BOLD).fg(Color::Yellow)
                } else {
                    Style::new()
                };
                spans.push(Span::styled(format!("{emoji} {count}"), style));
                spans.push(Span::from("  "));
            }
            lines.push(Line::from(spans));
        }
        lines
    }
}

fn help() -> Paragraph<'static> {
    let lines = [
        "Type a message and press Enter to send it.",
        "",
        "/reply N text      answer message #N",
        "/react N 👍        react to #N (/unreact N 👍 takes it back)",
        "/edit N text       change your message #N",
        "/delete N          delete #N (yours, or any as a moderator)",
        "/quit              leave the chat (Esc and Ctrl-C too)",
        "",
        "↑ ↓ PgUp PgDn End  scroll the messages",
        "F1 or Esc          close this help",
        "",
        "Sends wait while the connection is down and go out once it is back;",
        "nothing is lost or sent twice.",
    ];
    Paragraph::new(lines.map(Line::from).to_vec()).block(Block::bordered().title(" help "))
}

fn message_of(frame: &Value) -> Message {
    let time = frame["sent_at"]
        .as_str()
        .and_then(|at| at.get(11..16))
        .unwrap_or_default()
        .to_owned();
    Message {
        sender_id: text(&frame["sender_id"]),
        sender: text(&frame["sender_name"]),
        content: text(&frame["content"]),
        time,
        reply_to: frame["reply_to"].as_i64().unwrap_or_default(),
        edited: frame["edited_at"].as_str().is_some_and(|at| !at.is_empty()),
        deleted: frame["deleted"].as_bool().unwrap_or_default(),
        reactions: frame["reactions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let users = r["user_ids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(text)
                    .collect();
                (
                    text(&r["emoji"]),
                    r["count"].as_i64().unwrap_or_default(),
                    users,
                )
            })
            .collect(),
        attachments: frame["attachments"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| (text(&a["filename"]), a["size"].as_u64().unwrap_or_default()))
            .collect(),
    }
}

/// Applies a `reaction` event once, also when history already had it.
fn react(message: &mut Message, frame: &Value) {
    let emoji = text(&frame["emoji"]);
    let user = text(&frame["user_id"]);
    let added = frame["state"] != "removed";
    let at = message.reactions.iter().position(|(e, _, _)| *e == emoji);
    let (_, count, users) = match at {
        Some(at) => &mut message.reactions[at],
        None if added => {
            message.reactions.push((emoji, 0, Vec::new()));
            let last = message.reactions.len() - 1;
            &mut message.reactions[last]
        }
        None => return,
    };
    let known = users.contains(&user);
    if added && !known {
        *count += 1;
        users.push(user);
    } else if !added && (known || usize::try_from(*count).unwrap_or_default() > users.len()) {
        *count = (*count - 1).max(0);
        users.retain(|u| *u != user);
    }
    message.reactions.retain(|(_, count, _)| *count > 0);
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

trait IfEmpty {
    fn if_empty(self, instead: &str) -> String;
}

impl IfEmpty for String {
    fn if_empty(self, instead: &str) -> String {
        if self.is_empty() {
            instead.to_owned()
        } else {
            self
        }
    }
}

fn snippet(content: &str) -> String {
    let mut short: String = content.chars().take(40).collect();
    if short.len() < content.len() {
        short.push('…');
    }
    short
}

fn bytes(size: u64) -> String {
    match size {
        0..1_024 => format!("{size} B"),
        1_024..1_048_576 => format!("{} KiB", size / 1_024),
        _ => format!("{:.1} MiB", size as f64 / 1_048_576.0),
    }
}

/// Splits `line` into lines at most `width` columns wide, keeping each
/// span's style.
fn wrap(line: Line<'static>, width: usize) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    let mut current: Vec<Span<'static>> = Vec::new();
    let mut used = 0;
    let base = line.style;
    for span in line.spans {
        let mut piece = String::new();
        for c in span.content.chars() {
            let w = c.width().unwrap_or(0);
            if used + w > width && used > 0 {
                if !piece.is_empty() {
                    current.push(Span::styled(std::mem::take(&mut piece), span.style));
                }
                lines.push(Line::from(std::mem::take(&mut current)).style(base));
                used = 0;
            }
            piece.push(c);
            used += w;
        }
        if !piece.is_empty() {
            current.push(Span::styled(piece, span.style));
        }
    }
    lines.push(Line::from(current).style(base));
    lines
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};
    use serde_json::json;

    use super::*;

    fn timeline(kind: &str, seq: i64, frame: Value) -> Event {
        Event::Timeline(TimelineEvent {
            kind: kind.into(),
            seq,
            frame,
        })
    }

    fn message(seq: i64, sender: &str, content: &str, reply_to: i64) -> Event {
        timeline(
            "message",
            seq,
            json!({"seq": seq, "sender_id": format!("id-{sender}"), "sender_name": sender,
                   "content": content, "sent_at": "2026-12-05T10:41:07.000Z", "reply_to": reply_to,
                   "edited_at": "", "deleted": false, "reactions": [], "attachments": []}),
        )
    }

    fn screen(view: &View, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|frame| view.render(frame)).unwrap();
        let buffer = terminal.backend().buffer();
        let mut text = String::new();
        for y in 0..height {
            let mut x = 0;
            while x < width {
                let symbol = buffer[(x, y)].symbol();
                text.push_str(symbol);
                // A wide character covers the next cell too.
                x += u16::try_from(unicode_width::UnicodeWidthStr::width(symbol).max(1)).unwrap();
            }
            text.push('\n');
        }
        text
    }

    #[test]
    fn a_screen_shows_messages_a_reply_a_reaction_members_and_typing() {
        let mut view = View::new("plans", "id-ada");
        view.connection(&ConnectionState::Connected);
        view.apply(&Event::Joined(json!({"name": "Plans", "members": [
            {"user_id": "id-ada", "name": "ada"}, {"user_id": "id-bob", "name": "bob"}]})));
        view.apply(&message(1, "ada", "shall we meet at noon?", 0));
        view.apply(&message(2, "bob", "noon works", 1));
        view.apply(&timeline(
            "reaction",
            3,
            json!({"target_seq": 2, "user_id": "id-ada", "name": "ada", "emoji": "👍", "state": "added"}),
        ));
        view.apply(&timeline(
            "message_edited",
            4,
            json!({"target_seq": 1, "content": "shall we meet at 12?"}),
        ));
        view.apply(&Event::Ephemeral {
            kind: "typing".into(),
            frame: json!({"user_id": "id-bob", "name": "bob"}),
        });
        let text = screen(&view, 90, 14);
        assert!(text.contains(" Plans (plans) · online"), "{text}");
        assert!(
            text.contains("#1 10:41 ada: shall we meet at 12? (edited)"),
            "{text}"
        );
        assert!(text.contains("↪ #1 ada: shall we meet at 12?"), "{text}");
        assert!(text.contains("#2 10:41 bob: noon works"), "{text}");
        assert!(text.contains("👍 1"), "{text}");
        assert!(text.contains("online 2"), "{text}");
        assert!(text.contains("● bob"), "{text}");
        assert!(text.contains("bob is typing…"), "{text}");
        // The reply comes after the line it quotes, the reaction after it.
        let (reply, reaction) = (text.find("↪ #1").unwrap(), text.find("👍 1").unwrap());
        assert!(text.find("#2 10:41").unwrap() > reply && reaction > reply);
    }

    #[test]
    fn deletions_attachments_and_notices_show() {
        let mut view = View::new("r", "id-ada");
        view.history(&[json!({"seq": 1, "sender_id": "id-bob", "sender_name": "bob",
            "content": "", "sent_at": "2026-12-05T09:00:00.000Z", "reply_to": 0, "edited_at": "",
            "deleted": false, "reactions": [{"emoji": "🎉", "count": 2, "user_ids": ["id-ada", "id-cy"]}],
            "attachments": [{"id": "a1", "filename": "photo.png", "size": 20480}]})]);
        view.apply(&message(2, "bob", "oops", 0));
        view.apply(&timeline("message_deleted", 3, json!({"target_seq": 2})));
        view.apply(&timeline(
            "member_update",
            4,
            json!({"name": "cy", "action": "mute", "by_name": "ada"}),
        ));
        let text = screen(&view, 60, 12);
        assert!(text.contains("📎 photo.png (20 KiB)"), "{text}");
        assert!(text.contains("🎉 2"), "{text}");
        assert!(text.contains("#2 10:41 bob: message deleted"), "{text}");
        assert!(!text.contains("oops"), "{text}");
        assert!(text.contains("#4 · cy was muted by ada"), "{text}");
        assert!(
            !text.contains("online"),
            "no members pane when narrow: {text}"
        );
    }

    #[test]
    fn a_reaction_counts_once_and_comes_off() {
        let mut view = View::new("r", "id-ada");
        view.apply(&message(1, "bob", "hi", 0));
        let add = json!({"target_seq": 1, "user_id": "id-cy", "emoji": "👍", "state": "added"});
        view.apply(&timeline("reaction", 2, add.clone()));
        view.apply(&timeline("reaction", 3, add));
        assert!(screen(&view, 40, 8).contains("👍 1"));
        let remove =
            json!({"target_seq": 1, "user_id": "id-cy", "emoji": "👍", "state": "removed"});
        view.apply(&timeline("reaction", 4, remove));
        assert!(!screen(&view, 40, 8).contains("👍"));
    }

    #[test]
    fn the_input_line_parses_messages_and_commands() {
        assert_eq!(
            parse("hello"),
            Ok(Input::Send {
                content: "hello".into(),
                reply_to: 0
            })
        );
        assert_eq!(
            parse("/reply 12 sounds good"),
            Ok(Input::Send {
                content: "sounds good".into(),
                reply_to: 12
            })
        );
        assert_eq!(
            parse("/react #3 👍"),
            Ok(Input::React {
                seq: 3,
                emoji: "👍".into(),
                remove: false
            })
        );
        assert_eq!(
            parse("/unreact 3 👍"),
            Ok(Input::React {
                seq: 3,
                emoji: "👍".into(),
                remove: true
            })
        );
        assert_eq!(
            parse("/edit 4 fixed"),
            Ok(Input::Edit {
                seq: 4,
                content: "fixed".into()
            })
        );
        assert_eq!(parse("/delete 4"), Ok(Input::Delete { seq: 4 }));
        assert!(parse("/reply x hi").is_err());
        assert!(parse("/edit 4").is_err());
        assert!(parse("/frobnicate").is_err());
    }

    #[test]
    fn keys_edit_the_line_and_enter_submits_it() {
        let mut view = View::new("r", "me");
        let press = |code| KeyEvent::new(code, KeyModifiers::NONE);
        assert_eq!(view.key(press(KeyCode::Char('h'))), Action::Typing);
        view.key(press(KeyCode::Char('x')));
        view.key(press(KeyCode::Backspace));
        view.key(press(KeyCode::Char('i')));
        assert_eq!(
            view.key(press(KeyCode::Enter)),
            Action::Do(Input::Send {
                content: "hi".into(),
                reply_to: 0
            })
        );
        for c in "/delete x".chars() {
            view.key(press(KeyCode::Char(c)));
        }
        assert_eq!(view.key(press(KeyCode::Enter)), Action::None);
        assert!(screen(&view, 60, 10).contains("/delete needs a message number"));
        assert_eq!(
            view.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Action::Quit
        );
    }

    #[test]
    fn long_lines_wrap_within_the_width() {
        let lines = wrap(Line::from("abcdefghij"), 4);
        let texts: Vec<String> = lines.iter().map(ToString::to_string).collect();
        assert_eq!(texts, ["abcd", "efgh", "ij"]);
    }
}
