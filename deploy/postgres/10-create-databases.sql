-- Run once by the official postgres image, when its data volume is empty
-- (files in /docker-entrypoint-initdb.d run in name order, as POSTGRES_USER).
-- Each service gets a database of its own; inside it the service keeps its
-- tables in its own schema (auth, users, chat, media) and runs its own
-- migrations.
CREATE DATABASE parley_auth;
CREATE DATABASE parley_user;
CREATE DATABASE parley_chat;
CREATE DATABASE parley_media;
