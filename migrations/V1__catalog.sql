-- Tenantry's catalog: where every server, plan, tenant and lifecycle step is written down.

CREATE TABLE agents (
    name        text PRIMARY KEY,
    cost_cents  integer NOT NULL CHECK (cost_cents >= 0)
);

INSERT INTO agents (name, cost_cents) VALUES
    ('claude', 50), ('codex', 30), ('perplexity', 20), ('cursor', 25), ('opencode', 0);

CREATE TABLE plans (
    name                 text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9-]{1,39}$'),
    tasks_per_month      integer CHECK (tasks_per_month >= 0),          -- NULL: unlimited
    requests_per_minute  integer NOT NULL CHECK (requests_per_minute > 0),
    agents               text[] NOT NULL,
    api_access           boolean NOT NULL,
    pool_size            integer NOT NULL CHECK (pool_size BETWEEN 1 AND 100),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

INSERT INTO plans (name, tasks_per_month, requests_per_minute, agents, api_access, pool_size) VALUES
    ('free',       10,   5,   ARRAY['opencode'], false, 2),
    ('pro',        100,  60,  ARRAY['claude', 'codex', 'perplexity', 'cursor', 'opencode'], false, 5),
    ('enterprise', NULL, 600, ARRAY['claude', 'codex', 'perplexity', 'cursor', 'opencode'], true, 10);

-- PostgreSQL servers that hold tenant databases. The admin password is sealed with
-- AES-256-GCM under the master key of `key_version`, bound to the server's name.
CREATE TABLE servers (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             text NOT NULL UNIQUE CHECK (name ~ '^[a-z][a-z0-9-]{0,39}$'),
    host             text NOT NULL,
    port             integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    admin_user       text NOT NULL,
    admin_database   text NOT NULL DEFAULT 'postgres',
    admin_password   bytea,
    key_version      smallint,
    state            text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'draining')),
    capacity         integer NOT NULL CHECK (capacity > 0),
    max_connections  integer NOT NULL CHECK (max_connections > 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- One row per tenant, kept as a tombstone after a purge. `generation` grows with every
-- change that routers must see (state, plan, credentials, placement).
CREATE TABLE tenants (
    id              uuid PRIMARY KEY,
    slug            text NOT NULL CHECK (slug ~ '^[a-z][a-z0-9-]{1,39}$'),
    plan            text NOT NULL REFERENCES plans (name),
    template        text NOT NULL,
    server_id       bigint REFERENCES servers (id),
    database_name   text NOT NULL,
    role_name       text NOT NULL,
    state           text NOT NULL CHECK (state IN
                        ('requested', 'creating', 'ready', 'suspended', 'deleting', 'deleted', 'failed')),
    generation      bigint NOT NULL DEFAULT 1,
    schema_version  integer NOT NULL DEFAULT 0,
    credentials     bytea,             -- sealed like servers.admin_password, bound to the tenant id
    key_version     smallint,
    failed_step     text,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz,
    purge_after     timestamptz,
    purged_at       timestamptz
);

-- A slug names one live tenant; tombstones keep theirs.
CREATE UNIQUE INDEX tenants_live_slug ON tenants (slug) WHERE state <> 'deleted';
CREATE INDEX tenants_server ON tenants (server_id) WHERE state <> 'deleted';
CREATE INDEX tenants_state ON tenants (state);

-- The ledger: every lifecycle step is written here before it acts and again after.
-- A row left `started` (a crash) or `failed` (an error) is what reconcile finishes or
-- undoes; it marks the row `reconciled` then.
CREATE TABLE operations (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    uuid REFERENCES tenants (id),
    server_id    bigint REFERENCES servers (id) ON DELETE SET NULL,
    kind         text NOT NULL,
    step         text NOT NULL,
    status       text NOT NULL CHECK (status IN ('started', 'done', 'failed', 'reconciled')),
    detail       jsonb NOT NULL DEFAULT '{}',
    error        text,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

CREATE INDEX operations_tenant ON operations (tenant_id, id);
CREATE INDEX operations_open ON operations (tenant_id) WHERE status IN ('started', 'failed');

-- Fleet migration runs, and each tenant's part in one.
CREATE TABLE migration_runs (
    id           uuid PRIMARY KEY,
    state        text NOT NULL CHECK (state IN ('running', 'finished', 'failed', 'cancelled')),
    options      jsonb NOT NULL DEFAULT '{}',
    summary      jsonb,
    started_by   text,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

CREATE TABLE migration_run_tenants (
    run_id        uuid NOT NULL REFERENCES migration_runs (id) ON DELETE CASCADE,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    status        text NOT NULL CHECK (status IN ('pending', 'running', 'ok', 'failed', 'skipped')),
    from_version  integer,
    to_version    integer,
    duration_ms   bigint,
    error         text,
    finished_at   timestamptz,
    PRIMARY KEY (run_id, tenant_id)
);

CREATE INDEX migration_run_tenants_tenant ON migration_run_tenants (tenant_id, finished_at DESC);

-- Pre-migrated template databases, one per server, template and content checksum.
-- A tenant database is a clone of its server's ready template.
CREATE TABLE template_databases (
    server_id      bigint NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    template       text NOT NULL,
    checksum       text NOT NULL,
    version        integer NOT NULL,
    database_name  text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (server_id, template, checksum)
);

-- Routers cache tenants; every change to a tenant row tells them which slug to drop.
CREATE FUNCTION tenants_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tenantry_tenants', OLD.slug);
    ELSE
        PERFORM pg_notify('tenantry_tenants', NEW.slug);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_notify AFTER INSERT OR UPDATE OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenants_notify();

-- Live router processes: each heartbeats here, and each server's connection budget is
-- split among the live ones.
CREATE TABLE router_replicas (
    id            uuid PRIMARY KEY,
    host          text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);
