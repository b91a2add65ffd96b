CREATE TABLE agent_sessions (
    token_hash BLOB PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES workspace_agents (id),
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL
);
CREATE INDEX agent_sessions_expiry ON agent_sessions (expires_at);
CREATE INDEX agent_sessions_agent ON agent_sessions (agent_id);
