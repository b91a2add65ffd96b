-- Every change that can end an agent's sessions (a new build, a deleted workspace or agent, a
-- bumped session generation) notifies channel `instauth_liveness` with the workspace's id, so
-- that every replica drops what it cached about that workspace's agents. NOTIFY is
-- transactional: it is delivered at commit and never for a change that rolled back. Identical
-- notifications of one transaction are delivered once (deleting a workspace of 10,000 agents
-- sends one).
CREATE FUNCTION instauth_liveness_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'workspaces' THEN
        PERFORM pg_notify('instauth_liveness', NEW.id);
    ELSE
        PERFORM pg_notify('instauth_liveness', NEW.workspace_id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER workspaces_liveness
    AFTER UPDATE OF latest_build_id, deleted_at ON workspaces
    FOR EACH ROW
    WHEN (OLD.latest_build_id IS DISTINCT FROM NEW.latest_build_id
          OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at)
    EXECUTE FUNCTION instauth_liveness_notify();

CREATE TRIGGER workspace_agents_liveness
    AFTER UPDATE OF session_generation, deleted_at ON workspace_agents
    FOR EACH ROW
    WHEN (OLD.session_generation IS DISTINCT FROM NEW.session_generation
          OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at)
    EXECUTE FUNCTION instauth_liveness_notify();

-- Heartbeats rewrite agent rows all day; none of the columns they set is indexed, so free room
-- on the page lets PostgreSQL update in place (HOT) instead of touching every index.
ALTER TABLE workspace_agents SET (fillfactor = 80);
