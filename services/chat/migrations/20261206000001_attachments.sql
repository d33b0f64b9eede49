-- The files a message carries (README, "Attachments"): a JSON array of
-- {id, filename, content_type, size, width, height} in the order the
-- sender gave them, NULL when none. Stored with the message because it
-- never changes once sent and every read of the message needs it.
ALTER TABLE message ADD COLUMN attachments TEXT;
