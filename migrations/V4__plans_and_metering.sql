-- The business side: what a plan costs and how it ranks, every plan a tenant has had,
-- and the API requests routers count.

-- `price_cents`: the monthly price, for recurring revenue. `priority`: when a server's
-- connection budget is contended, waiting requests of a higher priority get
-- connections first (free 0, pro 1, enterprise 2), within a bound so none starves.
ALTER TABLE plans
    ADD COLUMN price_cents integer NOT NULL DEFAULT 0 CHECK (price_cents >= 0),
    ADD COLUMN priority smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 9);
UPDATE plans SET price_cents = 1900, priority = 1 WHERE name = 'pro';
UPDATE plans SET price_cents = 9900, priority = 2 WHERE name = 'enterprise';

-- Every plan a tenant has had and since when: creation writes the first row (no
-- `from_plan`), each plan change another, so a period's bill can be prorated.
CREATE TABLE plan_changes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    from_plan   text REFERENCES plans (name),
    to_plan     text NOT NULL REFERENCES plans (name),
    changed_at  timestamptz NOT NULL DEFAULT now(),
    changed_by  text
);

CREATE INDEX plan_changes_tenant ON plan_changes (tenant_id, changed_at);
CREATE INDEX plan_changes_time ON plan_changes (changed_at);

INSERT INTO plan_changes (tenant_id, from_plan, to_plan, changed_at, changed_by)
SELECT id, NULL, plan, created_at, 'catalog migration' FROM tenants;

-- API requests per tenant, month, route and status class. Each router counts in memory
-- and adds its counts here at a bounded rate, never one write per request.
CREATE TABLE api_request_counts (
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    period        date NOT NULL CHECK (extract(day FROM period) = 1),
    route         text NOT NULL,
    status_class  text NOT NULL CHECK (status_class IN ('1xx', '2xx', '3xx', '4xx', '5xx')),
    count         bigint NOT NULL CHECK (count >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, period, route, status_class)
);

-- Tasks created per tenant, month and agent, counted by the routers as they commit
-- them and added here like the request counts. The bill takes, per agent, the larger
-- of this and the tenant's own `usage_logs`: a tenant that edits its own database
-- cannot lower its bill, and counts a crashed router never flushed are still billed.
CREATE TABLE task_counts (
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    period      date NOT NULL CHECK (extract(day FROM period) = 1),
    agent       text NOT NULL REFERENCES agents (name),
    tasks       bigint NOT NULL CHECK (tasks >= 0),
    cost_cents  bigint NOT NULL CHECK (cost_cents >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, period, agent)
);
