DROP TABLE aia_cache;
