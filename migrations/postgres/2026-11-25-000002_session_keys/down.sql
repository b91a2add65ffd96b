ALTER TABLE workspace_agents DROP COLUMN session_generation;
DROP TABLE server_keys;
