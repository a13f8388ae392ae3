-- The runner's word, given before each file it commits in a tenant database: the file's
-- version and the tenant-database transaction that applies it (and writes its history
-- row). Deleted when `tenants.schema_version` takes the version. A runner that died
-- between the two leaves it behind; the next one trusts that history row only if that
-- very transaction committed it — a row the tenant wrote itself never moves its version.
CREATE TABLE migration_intents (
    tenant_id   uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    run_id      uuid NOT NULL,
    version     integer NOT NULL,
    xid         bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
