-- The default tenant template `tasks`: an agent task queue and its usage log.

CREATE TABLE tasks (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     text NOT NULL,
    agent       text NOT NULL CHECK (agent IN ('claude', 'codex', 'perplexity', 'cursor', 'opencode')),
    title       text NOT NULL CHECK (length(title) BETWEEN 1 AND 500),
    input       jsonb,
    status      text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'done', 'failed')),
    output      jsonb,
    cost_cents  integer NOT NULL DEFAULT 0 CHECK (cost_cents >= 0),
    -- A client's retry of POST /v1/tasks with the same Idempotency-Key finds this task
    -- instead of making (and paying for) another.
    idempotency_key text UNIQUE CHECK (length(idempotency_key) <= 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- GET /v1/tasks pages newest first by (created_at, id), optionally filtered by status.
CREATE INDEX tasks_page ON tasks (created_at DESC, id DESC);
CREATE INDEX tasks_status_page ON tasks (status, created_at DESC, id DESC);

CREATE TABLE usage_logs (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     text NOT NULL,
    action      text NOT NULL,
    cost        integer NOT NULL DEFAULT 0 CHECK (cost >= 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- /v1/usage and the monthly quota count the current month.
CREATE INDEX usage_logs_created ON usage_logs (created_at, action);
