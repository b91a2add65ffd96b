-- Agent keys (SPEC §2.1): the Ed25519 public key bound by an agent's first signed exchange and
-- when, both NULL while unbound (and again after a reset); and whether the build declared that
-- the agent must sign. Read by the candidate query; binding is the only write an exchange makes.
ALTER TABLE workspace_agents ADD COLUMN agent_public_key BLOB;
ALTER TABLE workspace_agents ADD COLUMN agent_key_bound_at TIMESTAMP;
ALTER TABLE workspace_agents ADD COLUMN require_agent_key BOOLEAN NOT NULL DEFAULT FALSE;
