DROP TRIGGER workspace_agents_liveness ON workspace_agents;
DROP TRIGGER workspaces_liveness ON workspaces;
DROP FUNCTION instauth_liveness_notify();
ALTER TABLE workspace_agents RESET (fillfactor);
