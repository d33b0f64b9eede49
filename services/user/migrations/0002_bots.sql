-- Portable SQL, as 0001. Bots (README, "Bots and API keys"): a user with an
-- owner is a bot; people have none.
ALTER TABLE user_profile ADD COLUMN owner_id TEXT;

CREATE INDEX user_profile_owner_id ON user_profile (owner_id);
