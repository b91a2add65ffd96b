-- Session signing keys, by id: the newest signs; a rotated key keeps verifying the tokens it
-- signed until they expire (`retired_at` + the session TTL), then it is deleted. The key that
-- signed `ias1_` tokens (server_keys 'session-hmac') becomes key 1, so those tokens stay valid.
CREATE TABLE session_keys (
    id INTEGER PRIMARY KEY,
    secret BLOB NOT NULL,
    created_at TIMESTAMP NOT NULL,
    retired_at TIMESTAMP
);
INSERT INTO session_keys (id, secret, created_at)
    SELECT 1, secret, created_at FROM server_keys WHERE name = 'session-hmac';
DROP TABLE server_keys;
