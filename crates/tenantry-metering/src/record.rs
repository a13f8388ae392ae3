//! A bill's records: one per tenant, period and meter, with a derived idempotency key;
//! and the proration of plan days.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::Period;

/// What a record measures; its name carries its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Meter {
    /// Tasks created, by agent.
    Tasks,
    /// Their cost in cents, by agent.
    TaskCostCents,
    /// API requests, by route template and status class.
    ApiRequests,
    /// Days on a plan within the period (prorated to the second), by plan.
    PlanDays,
}

impl Meter {
    pub fn as_str(self) -> &'static str {
        match self {
            Meter::Tasks => "tasks",
            Meter::TaskCostCents => "task_cost_cents",
            Meter::ApiRequests => "api_requests",
            Meter::PlanDays => "plan_days",
        }
    }
}

/// One tenant's use of one meter (and dimension) in one period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// Derived from (tenant id, period, meter, dimensions): the same in every export.
    pub idempotency_key: String,
    pub tenant_id: Uuid,
    pub slug: String,
    pub period: String,
    pub meter: Meter,
    /// `agent`; `route` and `status_class`; or `plan`.
    pub dimensions: BTreeMap<String, String>,
    /// A whole number, but for `plan_days` (six decimals).
    pub value: serde_json::Number,
    /// When the usage is stated to have happened: the period's last second, or now for
    /// the month under way.
    #[serde(skip)]
    pub at: DateTime<Utc>,
}

impl Record {
    pub fn new(
        tenant_id: Uuid,
        slug: &str,
        period: Period,
        meter: Meter,
        dimensions: &[(&str, &str)],
        value: serde_json::Number,
    ) -> Self {
        let dimensions: BTreeMap<String, String> = dimensions
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let now = Utc::now();
        let last = period.end() - chrono::Duration::seconds(1);
        Self {
            idempotency_key: key(tenant_id, period, meter, &dimensions),
            tenant_id,
            slug: slug.to_owned(),
            period: period.to_string(),
            meter,
            dimensions,
            value,
            at: last.min(now),
        }
    }
}

/// sha256 (hex) of the record's identity; fits Stripe's 100-character `identifier`.
fn key(tenant: Uuid, period: Period, meter: Meter, dims: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    h.update(b"tenantry.usage.v1\0");
    h.update(tenant.as_bytes());
    h.update(period.to_string().as_bytes());
    h.update([0]);
    h.update(meter.as_str().as_bytes());
    for (k, v) in dims {
        // Lengths first, so no two dimension lists hash alike.
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_be_bytes());
        h.update(v.as_bytes());
    }
    hex::encode(h.finalize())
}

/// A plan change as the catalog records it.
#[derive(Debug, Clone)]
pub struct Change {
    pub from_plan: Option<String>,
    pub to_plan: String,
    pub at: DateTime<Utc>,
}

/// Seconds on each plan within `[from, to)`, from the tenant's plan changes (in time
/// order) and its current plan: before its first change a tenant was on that change's
/// `from_plan` (or, for its creation row, its `to_plan`); without changes, on `current`.
pub fn plan_seconds(
    changes: &[Change],
    current: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    if to <= from {
        return out;
    }
    let mut plan = match changes.first() {
        Some(c) => c.from_plan.clone().unwrap_or_else(|| c.to_plan.clone()),
        None => current.to_owned(),
    };
    let mut since = from;
    for c in changes {
        if c.at >= to {
            break;
        }
        if c.at > since {
            *out.entry(plan.clone()).or_default() += (c.at - since).num_seconds();
            since = c.at;
        }
        plan = c.to_plan.clone();
    }
    *out.entry(plan).or_default() += (to - since).num_seconds();
    out.retain(|_, s| *s > 0);
    out
}

/// Days, to six decimals.
pub(crate) fn days(seconds: i64) -> serde_json::Number {
    let d = (seconds as f64 / 86_400.0 * 1e6).round() / 1e6;
    if d.fract() == 0.0 {
        serde_json::Number::from(d as i64)
    } else {
        serde_json::Number::from_f64(d).unwrap_or_else(|| serde_json::Number::from(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn change(from: Option<&str>, to: &str, at: &str) -> Change {
        Change {
            from_plan: from.map(str::to_owned),
            to_plan: to.into(),
            at: t(at),
        }
    }

    #[test]
    fn plan_days_are_prorated_over_the_changes() {
        let p = Period::parse("2025-10").unwrap();
        let changes = [
            change(None, "free", "2025-09-01T00:00:00Z"),
            change(Some("free"), "pro", "2025-10-11T00:00:00Z"),
            change(Some("pro"), "enterprise", "2025-10-31T12:00:00Z"),
        ];
        let s = plan_seconds(&changes, "enterprise", p.start(), p.end());
        assert_eq!(s["free"], 10 * 86_400);
        assert_eq!(s["pro"], 20 * 86_400 + 12 * 3600);
        assert_eq!(s["enterprise"], 12 * 3600);
        assert_eq!(days(s["pro"]).to_string(), "20.5");
        assert_eq!(days(s["free"]).to_string(), "10");
        // Created mid-month, no recorded changes: its plan from creation on.
        let s = plan_seconds(&[], "pro", t("2025-10-21T00:00:00Z"), p.end());
        assert_eq!(
            s.into_iter().collect::<Vec<_>>(),
            vec![("pro".into(), 11 * 86_400)]
        );
        // A first recorded change that is no creation row: before it, its from_plan.
        let s = plan_seconds(
            &[change(Some("free"), "pro", "2025-10-02T00:00:00Z")],
            "pro",
            p.start(),
            p.end(),
        );
        assert_eq!(s["free"], 86_400);
        assert_eq!(s["pro"], 30 * 86_400);
        assert!(plan_seconds(&changes, "pro", p.end(), p.start()).is_empty());
    }

    #[test]
    fn a_key_is_derived_from_the_identity_alone() {
        let id = Uuid::now_v7();
        let p = Period::parse("2025-10").unwrap();
        let n = serde_json::Number::from(3);
        let a = Record::new(
            id,
            "acme",
            p,
            Meter::Tasks,
            &[("agent", "codex")],
            n.clone(),
        );
        let b = Record::new(
            id,
            "renamed",
            p,
            Meter::Tasks,
            &[("agent", "codex")],
            7.into(),
        );
        assert_eq!(a.idempotency_key, b.idempotency_key);
        assert_eq!(a.idempotency_key.len(), 64);
        let others = [
            Record::new(
                id,
                "acme",
                p,
                Meter::TaskCostCents,
                &[("agent", "codex")],
                n.clone(),
            ),
            Record::new(
                id,
                "acme",
                p,
                Meter::Tasks,
                &[("agent", "claude")],
                n.clone(),
            ),
            Record::new(
                id,
                "acme",
                Period::parse("2025-11").unwrap(),
                Meter::Tasks,
                &[("agent", "codex")],
                n.clone(),
            ),
            Record::new(
                Uuid::now_v7(),
                "acme",
                p,
                Meter::Tasks,
                &[("agent", "codex")],
                n,
            ),
        ];
        for o in others {
            assert_ne!(a.idempotency_key, o.idempotency_key);
        }
    }
}
