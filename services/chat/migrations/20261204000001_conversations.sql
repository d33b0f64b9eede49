-- Conversations: edits, deletions, replies and reactions as timeline
-- events, read markers, and what the room list needs, kept up to date as
-- events are stored. Portable SQL, like the first migration.

-- A message row holds the message's current state, so history pages are
-- still range scans of one room's seqs and never replay events.
-- `original_content` keeps the text as sent once an edit replaced it:
-- replays send every message as it was sent, followed by its events.
-- `ordinal` numbers a room's messages (events other than messages take
-- seqs but no ordinal), which makes unread counts cheap (see
-- `room.message_count`).
ALTER TABLE message ADD COLUMN reply_to BIGINT NOT NULL DEFAULT 0;
ALTER TABLE message ADD COLUMN edited_at BIGINT;
ALTER TABLE message ADD COLUMN original_content TEXT;
ALTER TABLE message ADD COLUMN deleted_at BIGINT;
ALTER TABLE message ADD COLUMN deleted_by TEXT;
ALTER TABLE message ADD COLUMN ordinal BIGINT NOT NULL DEFAULT 0;
-- Until now every seq was a message.
UPDATE message SET ordinal = seq;

-- How many messages the room ever stored, and when its timeline last
-- moved (the room list's order). Both are bumped with `last_seq`, in the
-- statement that already locks the room's row.
ALTER TABLE room ADD COLUMN message_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE room ADD COLUMN last_event_at BIGINT NOT NULL DEFAULT 0;
UPDATE room SET message_count = last_seq,
    last_event_at = COALESCE(
        (SELECT max(m.sent_at) FROM message m WHERE m.room_id = room.room_id),
        created_at);

-- Each member's read marker. Sending a message moves the sender's marker to
-- it (what you answer, you have read), so a member never has messages of
-- their own after the marker, and their unread messages are the room's
-- messages after it (message_count minus the ordinal at the marker) less
-- the deleted ones, counted in `message_deletion`.
--
-- No new index on `message`: every index there is paid by every message
-- stored, and measured, a partial index on deleted messages cut the batch
-- writer's throughput to a third (BENCHMARKS.md).
ALTER TABLE room_member ADD COLUMN read_seq BIGINT NOT NULL DEFAULT 0;
UPDATE room_member SET read_seq = COALESCE(
    (SELECT max(m.seq) FROM message m
        WHERE m.room_id = room_member.room_id AND m.sender_id = room_member.user_id),
    0);
CREATE INDEX room_member_user ON room_member (user_id);

-- One row per deleted message, written with its deletion.
CREATE TABLE message_deletion (
    room_id   TEXT   NOT NULL,
    seq       BIGINT NOT NULL,
    sender_id TEXT   NOT NULL,
    PRIMARY KEY (room_id, seq),
    FOREIGN KEY (room_id, seq) REFERENCES message (room_id, seq) ON DELETE CASCADE
);

-- Timeline events other than messages, each with the seq it took: what a
-- replay sends after the messages. `kind` is `edit`, `delete`,
-- `reaction_added` or `reaction_removed`; `detail` is the new text of an
-- edit or the emoji of a reaction.
CREATE TABLE room_event (
    room_id    TEXT   NOT NULL REFERENCES room (room_id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    target_seq BIGINT NOT NULL,
    actor_id   TEXT   NOT NULL,
    actor_name TEXT   NOT NULL,
    detail     TEXT   NOT NULL,
    -- The actor's idempotency key; NULL when none was given.
    client_id  TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (room_id, seq)
);
CREATE UNIQUE INDEX room_event_client_key ON room_event (room_id, actor_id, client_id);

-- Who reacts with what to which message now. `seq` is the event that
-- added the reaction, which orders a message's emoji and users.
CREATE TABLE reaction (
    room_id    TEXT   NOT NULL,
    target_seq BIGINT NOT NULL,
    emoji      TEXT   NOT NULL,
    user_id    TEXT   NOT NULL,
    seq        BIGINT NOT NULL,
    PRIMARY KEY (room_id, target_seq, emoji, user_id),
    FOREIGN KEY (room_id, target_seq) REFERENCES message (room_id, seq) ON DELETE CASCADE
);
