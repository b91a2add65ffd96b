-- Session tokens are signed (HMAC-SHA256) with a key shared by every server replica, so an
-- exchange issues a session without writing to the database. A token names its agent and the
-- agent's session generation; bumping the generation revokes all of the agent's sessions.
CREATE TABLE server_keys (
    name TEXT PRIMARY KEY,
    secret BLOB NOT NULL,
    created_at TIMESTAMP NOT NULL
);
ALTER TABLE workspace_agents ADD COLUMN session_generation INTEGER NOT NULL DEFAULT 0;
