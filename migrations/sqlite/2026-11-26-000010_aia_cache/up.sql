-- Azure issuing CAs fetched from a signer's Authority Information Access URL and admitted by a
-- server (they chained to a pinned root and issued a signer), by URL, so that other replicas
-- and restarts do not download them again. What is read back is checked again before use.
CREATE TABLE aia_cache (
    url TEXT PRIMARY KEY,
    der BLOB NOT NULL,
    stored_at TIMESTAMP NOT NULL
);
