//! `/metrics` in the Prometheus text format: requests by route and status, latency,
//! the tenant cache, pool budgets and open connections per server, tenants by state.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::AppState;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    cache: IntGaugeVec,
    pools: IntGaugeVec,
    tenants: IntGaugeVec,
    business: BusinessGauges,
}

/// The fleet's business figures (`crate::business`); no tenant label, ever.
struct BusinessGauges {
    tenants: IntGaugeVec,
    lifecycle: IntGaugeVec,
    plan_changes: IntGaugeVec,
    mrr: IntGaugeVec,
    tasks: IntGaugeVec,
    cost: IntGaugeVec,
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl BusinessGauges {
    fn new(r: &Registry) -> Self {
        Self {
            tenants: gauge(
                r,
                "tenantry_tenants_by_plan",
                "tenants by plan and state",
                &["plan", "state"],
            ),
            lifecycle: gauge(
                r,
                "tenantry_tenants_lifecycle",
                "tenants ever created (past creating) and deleted: growth and churn",
                &["event"],
            ),
            plan_changes: gauge(
                r,
                "tenantry_plan_changes",
                "plan changes by direction of price (up, down, lateral)",
                &["direction"],
            ),
            mrr: gauge(
                r,
                "tenantry_mrr_cents",
                "monthly recurring revenue in cents: ready tenants times the plan's price",
                &["plan"],
            ),
            tasks: gauge(
                r,
                "tenantry_tasks_month",
                "tasks created this month (UTC), by agent",
                &["agent"],
            ),
            cost: gauge(
                r,
                "tenantry_task_cost_cents_month",
                "cost of the tasks created this month (UTC) in cents, by agent",
                &["agent"],
            ),
        }
    }

    fn set(&self, f: &crate::business::Figures) {
        for g in [
            &self.tenants,
            &self.plan_changes,
            &self.mrr,
            &self.tasks,
            &self.cost,
        ] {
            g.reset();
        }
        for (plan, state, n) in &f.tenants {
            self.tenants.with_label_values(&[plan, state]).set(*n);
        }
        self.lifecycle
            .with_label_values(&["created"])
            .set(f.created);
        self.lifecycle
            .with_label_values(&["deleted"])
            .set(f.deleted);
        for (direction, n) in &f.plan_changes {
            self.plan_changes.with_label_values(&[direction]).set(*n);
        }
        for (plan, cents) in &f.mrr_cents {
            self.mrr.with_label_values(&[plan]).set(*cents);
        }
        for (agent, tasks, cost) in &f.tasks {
            self.tasks.with_label_values(&[agent]).set(*tasks);
            self.cost.with_label_values(&[agent]).set(*cost);
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "tenantry_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["route", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "tenantry_http_request_duration_seconds",
                "HTTP request latency",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        let cache = IntGaugeVec::new(
            Opts::new(
                "tenantry_tenant_cache_lookups_total",
                "tenant route lookups by result (stale: served as cached while the catalog could not be read)",
            ),
            &["result"],
        )
        .expect("valid metric");
        let pools = IntGaugeVec::new(
            Opts::new(
                "tenantry_server_connections",
                "per server: budget, open connections, tenant pools, requests waiting for a permit, evicted connections not yet closed, connections being opened",
            ),
            &["server", "kind"],
        )
        .expect("valid metric");
        let tenants = IntGaugeVec::new(
            Opts::new("tenantry_tenants", "tenants by state"),
            &["state"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(cache.clone()),
            Box::new(pools.clone()),
            Box::new(tenants.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            business: BusinessGauges::new(&registry),
            registry,
            requests,
            latency,
            cache,
            pools,
            tenants,
        }
    }

    /// A request answered on `route` (its pattern) with `status` after `seconds`.
    pub(crate) fn request(&self, route: &str, status: actix_web::http::StatusCode, seconds: f64) {
        self.requests
            .with_label_values(&[route, status.as_str()])
            .inc();
        self.latency.with_label_values(&[route]).observe(seconds);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let m = &state.metrics;
    m.cache
        .with_label_values(&["hit"])
        .set(state.resolver.stats.hits.load(Ordering::Relaxed) as i64);
    m.cache
        .with_label_values(&["miss"])
        .set(state.resolver.stats.misses.load(Ordering::Relaxed) as i64);
    m.cache
        .with_label_values(&["stale"])
        .set(state.resolver.stats.stale.load(Ordering::Relaxed) as i64);
    for u in state.pools.usage() {
        let server = u.server.to_string();
        for (kind, n) in [
            ("budget", u.budget),
            ("open", u.open),
            ("pools", u.pools),
            ("waiting", u.waiting),
            ("evicting", u.evicting),
            ("opening", u.opening),
            ("waiting_to_open", u.waiting_to_open),
        ] {
            m.pools.with_label_values(&[&server, kind]).set(n as i64);
        }
    }
    // From the probe's last look: a scrape costs the catalog nothing.
    m.tenants.reset();
    for (tenant_state, n) in state.probe.tenants() {
        m.tenants.with_label_values(&[&tenant_state]).set(n);
    }
    if let Some(figures) = state.business.figures() {
        m.business.set(&figures);
    }
    let mut out = Vec::new();
    if TextEncoder::new()
        .encode(&m.registry.gather(), &mut out)
        .is_err()
    {
        return HttpResponse::InternalServerError().finish();
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out)
}
