#!/usr/bin/env bash
# The exchange's batched candidate statement alone, as docs/BENCHMARKS.md ("the fleet-size
# ratio") measures it: a database filled like `cargo xtask loadtest`'s (100 workspaces, 10
# agents per resource), then pgbench sending the statement with 30 instance IDs drawn from
# ACTIVE agents spread evenly over AGENTS, one client, prepared.
#
#   bash docs/bench/candidate-lookup.sh [AGENTS] [ACTIVE] [SECONDS]
#
# Needs PostgreSQL at $PGHOST:$PGPORT (default 127.0.0.1:5432, user postgres) and a release
# build of the server (target/release/instauth) for the migrations. Drops its database at exit.
set -euo pipefail
agents=${1:-1000000}
active=${2:-20000}
seconds=${3:-10}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
db=instauth_lookup_bench_$$
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'psql -q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"; rm -rf "$work"' EXIT
psql -q -d postgres -c "CREATE DATABASE $db"
"$root/target/release/instauth" migrate --postgres-url "postgres://$PGUSER@$PGHOST:$PGPORT/$db" >/dev/null
# Workspaces of 10,000 agents, as the load test registers them.
workspaces=$(( (agents + 9999) / 10000 ))
psql -q -d "$db" <<SQL
BEGIN;
INSERT INTO workspaces (id, name, created_at)
  SELECT 'w' || lpad(w::text, 35, '0'), 'ws-' || w, now() FROM generate_series(0, $workspaces - 1) w;
INSERT INTO workspace_builds (id, workspace_id, build_number, created_at)
  SELECT 'b' || substr(id, 2), id, 1, now() FROM workspaces;
UPDATE workspaces SET latest_build_id = 'b' || substr(id, 2);
INSERT INTO workspace_resources (id, build_id, name, type, created_at)
  SELECT md5('r' || r)::uuid::text, 'b' || lpad((r * 10 * $workspaces / $agents)::text, 35, '0'),
         'res-' || r, 'aws_instance', now()
  FROM generate_series(0, $agents / 10 - 1) r;
INSERT INTO workspace_agents (id, resource_id, build_id, workspace_id, name, auth, auth_instance_id, created_at)
  SELECT md5('a' || i)::uuid::text, md5('r' || (i / 10))::uuid::text,
         'b' || lpad((i::bigint * $workspaces / $agents)::text, 35, '0'),
         'w' || lpad((i::bigint * $workspaces / $agents)::text, 35, '0'),
         'agent-' || i, 'aws-instance-identity', 'i-' || lpad(to_hex(i), 17, '0'), now()
  FROM generate_series(0, $agents - 1) i;
COMMIT;
VACUUM (ANALYZE);
SQL
# The statement the server sends for a batch (crates/instauth-store/src/agents.rs), with the
# array of instance IDs built from pgbench's random variables.
{
  ids=()
  for j in $(seq 0 29); do
    echo "\\set k$j random(0, $active - 1) * ($agents / $active)"
    ids+=("'i-' || lpad(to_hex(:k$j::int), 17, '0')")
  done
  cat <<SQL
SELECT a.auth_instance_id, a.id, a.name, a.auth, w.id, w.name, a.session_generation,
       a.agent_public_key, a.require_agent_key, a.expect_resource, a.expect_provider,
       a.expect_account, a.expect_location
FROM workspace_agents a
JOIN workspaces w ON w.id = a.workspace_id AND w.latest_build_id = a.build_id
WHERE a.deleted_at IS NULL AND w.deleted_at IS NULL AND a.parent_id IS NULL
  AND a.auth_instance_id = ANY(ARRAY[$(IFS=,; echo "${ids[*]}")])
ORDER BY a.auth_instance_id, a.name, w.name;
SQL
} > "$work/lookup.pgb"
psql -q -d "$db" -c "SELECT pg_stat_reset()" >/dev/null
echo "$agents agents, $active active, 30 instance IDs a statement:"
pgbench -n -M prepared -c1 -j1 -T "$seconds" -f "$work/lookup.pgb" "$db" | grep -E '^(tps|latency average)'
psql -At -d "$db" -c "SELECT 'workspace_agents heap blocks read/hit: ' || heap_blks_read || ' / ' || heap_blks_hit FROM pg_statio_user_tables WHERE relname = 'workspace_agents'"
