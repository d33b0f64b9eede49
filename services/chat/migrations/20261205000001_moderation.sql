-- Roles, moderation, direct rooms and room deletion. Portable SQL, like
-- the first migration.

-- A member's role in the room: `owner`, `moderator` or `member`. The
-- owner is the room's creator (the first joiner of a public room); the
-- rows that exist now get their role from that.
ALTER TABLE room_member ADD COLUMN role TEXT NOT NULL DEFAULT 'member';
UPDATE room_member SET role = 'owner'
    WHERE user_id = (SELECT r.created_by FROM room r WHERE r.room_id = room_member.room_id);

-- Whether the room is the direct room of two users (`direct_room`).
ALTER TABLE room ADD COLUMN direct BIGINT NOT NULL DEFAULT 0;

-- Bans and mutes in force or expired. `until` is Unix milliseconds, NULL
-- for no end; a row whose `until` has passed is not in force, so a
-- duration ends by itself, also across restarts, without a timer.
CREATE TABLE room_sanction (
    room_id TEXT   NOT NULL REFERENCES room (room_id) ON DELETE CASCADE,
    user_id TEXT   NOT NULL,
    kind    TEXT   NOT NULL,
    until   BIGINT,
    PRIMARY KEY (room_id, user_id, kind)
);

-- The one direct room of each pair of users, `user_low` < `user_high`.
-- The primary key settles two replicas opening the same pair at once.
CREATE TABLE direct_room (
    user_low  TEXT NOT NULL,
    user_high TEXT NOT NULL,
    room_id   TEXT NOT NULL REFERENCES room (room_id) ON DELETE CASCADE,
    PRIMARY KEY (user_low, user_high)
);
CREATE UNIQUE INDEX direct_room_room ON direct_room (room_id);

-- Usernames chat has seen in access tokens: what a direct room is called
-- in the other user's room list, and who a moderation event is about.
CREATE TABLE known_user (
    user_id TEXT NOT NULL PRIMARY KEY,
    name    TEXT NOT NULL
);
INSERT INTO known_user (user_id, name)
    SELECT sender_id, max(sender_name) FROM message GROUP BY sender_id;

-- Ids of deleted rooms: a deleted room's id is never used again, so a
-- later join by id is NOT_FOUND instead of creating a public room.
CREATE TABLE deleted_room (
    room_id    TEXT   NOT NULL PRIMARY KEY,
    deleted_at BIGINT NOT NULL
);
