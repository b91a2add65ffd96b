-- Each audit record carries an id made when the attempt was answered. A batch the writer
-- retries after a lost connection (the first try may have committed) inserts nothing twice.
-- (SQLite cannot add a NOT NULL column without a default; every insert sets it.)
ALTER TABLE audit_log ADD COLUMN uid TEXT NOT NULL DEFAULT '';
UPDATE audit_log SET uid = 'legacy-' || id;
CREATE UNIQUE INDEX audit_log_uid ON audit_log (uid);
