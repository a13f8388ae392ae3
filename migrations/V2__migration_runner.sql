-- The fleet migration runner.

-- A run whose runner died is marked interrupted by the next run (its rows stay, so
-- `migrate status` keeps the last result of each tenant).
ALTER TABLE migration_runs DROP CONSTRAINT migration_runs_state_check;
ALTER TABLE migration_runs ADD CONSTRAINT migration_runs_state_check
    CHECK (state IN ('running', 'finished', 'failed', 'cancelled', 'interrupted'));
ALTER TABLE migration_runs ADD COLUMN dry_run boolean NOT NULL DEFAULT false;

-- Every template migration applied anywhere (a template database or a tenant), with
-- refinery's checksum of its file: a file that later changes or disappears is refused
-- before a run applies anything.
CREATE TABLE applied_migrations (
    template     text NOT NULL,
    version      integer NOT NULL,
    name         text NOT NULL,
    checksum     text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template, version)
);
