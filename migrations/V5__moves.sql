-- Moving tenants between servers (`tenant move`).

-- While an offline move copies a tenant, `moving` is 'offline'; during an online move's
-- cutover (writes blocked at the source), 'cutover'. Either way routers refuse the
-- tenant's writes (503 tenant_moving, with Retry-After); reads go on. NULL otherwise.
ALTER TABLE tenants
    ADD COLUMN moving text CHECK (moving IN ('offline', 'cutover'));

-- One row per move: where from and to, how far it got. At most one runs per tenant.
-- `operation_id` is the ledger row of the move's first step: the id the API and the CLI
-- give out for the move (`GET /admin/v1/operations/{id}`).
CREATE TABLE moves (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    operation_id      bigint UNIQUE REFERENCES operations (id),
    tenant_id         uuid NOT NULL REFERENCES tenants (id),
    source_server_id  bigint REFERENCES servers (id) ON DELETE SET NULL,
    target_server_id  bigint REFERENCES servers (id) ON DELETE SET NULL,
    mode              text NOT NULL CHECK (mode IN ('online', 'offline')),
    phase             text NOT NULL,
    status            text NOT NULL CHECK (status IN ('running', 'done', 'failed', 'undone')),
    bytes_total       bigint,
    bytes_copied      bigint,
    lag_bytes         bigint,
    cutover_timeout_s integer NOT NULL DEFAULT 30,
    error             text,
    started_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz
);

CREATE UNIQUE INDEX moves_one_running ON moves (tenant_id) WHERE status = 'running';

-- The source database and role a finished move left behind, kept (CONNECT revoked)
-- until `purge_after` (provision.retention_hours), then dropped by reconcile.
-- `server remove` drops a removed server's copies at once (cascade).
CREATE TABLE retained_copies (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    move_id        bigint REFERENCES moves (id),
    server_id      bigint NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    database_name  text NOT NULL,
    role_name      text NOT NULL,
    purge_after    timestamptz NOT NULL,
    purged_at      timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX retained_copies_due ON retained_copies (purge_after) WHERE purged_at IS NULL;
