-- Sessions are signed tokens checked against the agent's session generation; nothing stores them.
DROP TABLE agent_sessions;
