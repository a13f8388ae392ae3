//! Usage per tenant and month, as a bill needs it.
//!
//! * **Records** (`record`): one per tenant, period and meter — `tasks` and
//!   `task_cost_cents` by agent, `api_requests` by route and status class, `plan_days` by
//!   plan — each with an idempotency key derived from (tenant, period, meter and its
//!   dimension), never random, so an export sent twice bills once.
//! * **Formats** (`format`): JSON, CSV, Stripe meter events, CloudEvents (OpenMeter).
//! * **The export** (`export`): the routers' counts and the plan history from the
//!   catalog, and each tenant's own count of its tasks read from its database as the
//!   tenant's login, over the fleet's fan-out ([`tenantry_migrate::fanout`]).

mod export;
mod format;
mod record;

pub use export::{export, Export, ExportOptions, TenantError};
pub use format::Format;
pub use record::{Meter, Record};

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};

/// A calendar month (UTC), the period of a bill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Period {
    first: NaiveDate,
}

impl Period {
    /// `YYYY-MM`.
    pub fn parse(text: &str) -> Result<Self, MeteringError> {
        let bad = || MeteringError::BadInput(format!("period {text:?} is not a month: YYYY-MM"));
        let (y, m) = text.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 || !(y.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let first = NaiveDate::from_ymd_opt(
            y.parse().map_err(|_| bad())?,
            m.parse().map_err(|_| bad())?,
            1,
        )
        .filter(|d| d.year() >= 2000)
        .ok_or_else(bad)?;
        Ok(Self { first })
    }

    /// The month `at` falls in.
    pub fn of(at: DateTime<Utc>) -> Self {
        Self {
            first: NaiveDate::from_ymd_opt(at.year(), at.month(), 1).expect("a month's first day"),
        }
    }

    /// Its first day (the catalog's `period` column).
    pub fn first_day(self) -> NaiveDate {
        self.first
    }

    pub fn start(self) -> DateTime<Utc> {
        Utc.from_utc_datetime(&self.first.and_hms_opt(0, 0, 0).expect("midnight"))
    }

    /// The start of the next month.
    pub fn end(self) -> DateTime<Utc> {
        let next = self
            .first
            .checked_add_months(chrono::Months::new(1))
            .expect("a next month");
        Utc.from_utc_datetime(&next.and_hms_opt(0, 0, 0).expect("midnight"))
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.first.year(), self.first.month())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MeteringError {
    /// A bad period, format or option: nothing read.
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Catalog(#[from] tenantry_catalog::CatalogError),
}

impl From<tokio_postgres::Error> for MeteringError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Catalog(tenantry_catalog::CatalogError::Query(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_period_is_a_month() {
        let p = Period::parse("2026-02").unwrap();
        assert_eq!(p.to_string(), "2026-02");
        assert_eq!(p.start().to_rfc3339(), "2026-02-01T00:00:00+00:00");
        assert_eq!(p.end().to_rfc3339(), "2026-03-01T00:00:00+00:00");
        assert_eq!(
            Period::parse("2026-12").unwrap().end().to_rfc3339(),
            "2027-01-01T00:00:00+00:00"
        );
        for bad in [
            "",
            "2026",
            "2026-13",
            "2026-00",
            "26-01",
            "2026-1",
            "2026-01-01",
            "１２３４-01",
            "1999-12",
            "+202-01",
        ] {
            assert!(Period::parse(bad).is_err(), "{bad}");
        }
    }
}
