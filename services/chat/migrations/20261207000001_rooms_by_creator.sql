-- Rooms are counted per creator, so one user cannot make rooms without end
-- by joining unknown ids (README, "Behaviour").
CREATE INDEX room_created_by ON room (created_by);
