-- The expectation of an agent's resource (SPEC §4), copied onto the agent's row when the build
-- is created, so that the exchange's candidate statement reads it without visiting
-- `workspace_resources`: at a million agents that join was half the pages each lookup touched
-- (docs/BENCHMARKS.md). Resources never change after their build is created, so the copy never
-- goes stale. NULL, as most resources declare no expectation; `expect_resource` is then the
-- resource's name, for the refusal's message.
ALTER TABLE workspace_agents ADD COLUMN expect_resource TEXT;
ALTER TABLE workspace_agents ADD COLUMN expect_provider TEXT;
ALTER TABLE workspace_agents ADD COLUMN expect_account TEXT;
ALTER TABLE workspace_agents ADD COLUMN expect_location TEXT;

-- Only the agents of resources with an expectation are rewritten.
UPDATE workspace_agents
SET expect_resource = (SELECT r.name FROM workspace_resources r WHERE r.id = workspace_agents.resource_id),
    expect_provider = (SELECT r.expect_provider FROM workspace_resources r WHERE r.id = workspace_agents.resource_id),
    expect_account = (SELECT r.expect_account FROM workspace_resources r WHERE r.id = workspace_agents.resource_id),
    expect_location = (SELECT r.expect_location FROM workspace_resources r WHERE r.id = workspace_agents.resource_id)
WHERE resource_id IN (SELECT id FROM workspace_resources WHERE expect_provider IS NOT NULL);
