-- schema_version_table_exists --
SELECT to_regclass(%(table)s) IS NOT NULL AS present;

-- schema_versions --
SELECT version, name, applied_at FROM {schema}.reliable_schema_version ORDER BY version;

-- record_schema_version --
INSERT INTO {schema}.reliable_schema_version (version, name) VALUES (%(version)s, %(name)s);
