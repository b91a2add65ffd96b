-- Every change that can end an agent's sessions (a new build, a deleted workspace or agent, a
-- bumped session generation) appends the workspace's id here, in the changing transaction.
-- Each server process polls the rows after the last one it saw and drops what it cached about
-- those workspaces' agents, so a second process on the same file learns of a revocation within
-- a second. AUTOINCREMENT: a sequence number is never reused, so a gap means rows were pruned
-- before this process read them (it then drops its whole cache).
CREATE TABLE liveness_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TRIGGER workspaces_liveness
    AFTER UPDATE OF latest_build_id, deleted_at ON workspaces
    FOR EACH ROW
    WHEN OLD.latest_build_id IS NOT NEW.latest_build_id OR OLD.deleted_at IS NOT NEW.deleted_at
BEGIN
    INSERT INTO liveness_changes (workspace_id) VALUES (NEW.id);
END;

CREATE TRIGGER workspace_agents_liveness
    AFTER UPDATE OF session_generation, deleted_at ON workspace_agents
    FOR EACH ROW
    WHEN OLD.session_generation IS NOT NEW.session_generation
        OR OLD.deleted_at IS NOT NEW.deleted_at
BEGIN
    INSERT INTO liveness_changes (workspace_id) VALUES (NEW.workspace_id);
END;
