//! The usage export over 1,000 tenants: the catalog's counts and plan history, and each
//! tenant's own count of its tasks read from its database as the tenant, with the
//! fleet's fan-out (32 at once, 8 per server) against the same export one tenant at a
//! time. Goal: the fleet in ≤ 10 s.

use std::time::{Duration, Instant};

use tenantry_bench::{Deployment, Ratio, Report, Summary};
use tenantry_metering::{ExportOptions, Format, Period};
use tenantry_provision::CreateTenant;
use tenantry_testkit::TestCluster;

const TENANTS: usize = 1000;

async fn run() -> Report {
    let pg = TestCluster::start();
    let d = Deployment::new(&pg, &[], tenantry_bench::templates_dir(), 150).await;
    eprintln!("creating {TENANTS} tenants…");
    d.provisioner
        .create_many(
            (0..TENANTS)
                .map(|i| CreateTenant {
                    slug: format!("u{i:04}"),
                    ..Default::default()
                })
                .collect(),
            4,
        )
        .await
        .unwrap();
    // What routers would have flushed: three agents and a dozen (route, status class)
    // pairs per tenant; each tenant's creation in its plan history.
    let client = d.catalog.client().await.unwrap();
    client
        .batch_execute(
            "INSERT INTO task_counts (tenant_id, period, agent, tasks, cost_cents)
             SELECT t.id, date_trunc('month', now() AT TIME ZONE 'UTC')::date, a, 10, 100
             FROM tenants t, unnest(ARRAY['claude', 'codex', 'opencode']) a;
             INSERT INTO api_request_counts (tenant_id, period, route, status_class, count)
             SELECT t.id, date_trunc('month', now() AT TIME ZONE 'UTC')::date, r, c, 7
             FROM tenants t,
                  unnest(ARRAY['/v1/tasks', '/v1/tasks/{id}', '/v1/usage', '/v1/sql', '/admin/x', '/v1/y']) r,
                  unnest(ARRAY['2xx', '4xx']) c;
             INSERT INTO plan_changes (tenant_id, from_plan, to_plan, changed_at)
             SELECT id, NULL, plan, created_at FROM tenants;",
        )
        .await
        .unwrap();
    let period = Period::of(chrono::Utc::now());
    let export = |concurrency: usize, per_server: usize| {
        let opts = ExportOptions {
            concurrency,
            per_server,
            ..ExportOptions::new(period)
        };
        let provisioner = d.provisioner.clone();
        async move {
            let started = Instant::now();
            let export = tenantry_metering::export(
                provisioner.catalog(),
                provisioner.fleet_connector(),
                &opts,
            )
            .await
            .unwrap();
            let rendered: usize = [
                Format::Json,
                Format::Csv,
                Format::Stripe,
                Format::CloudEvents,
            ]
            .into_iter()
            .map(|f| f.render(&export).len())
            .sum();
            assert!(export.errors.is_empty(), "{:?}", export.errors);
            assert_eq!(export.tenants, TENANTS);
            (started.elapsed(), export.records.len(), rendered)
        }
    };
    eprintln!("one tenant at a time…");
    let (one, _, _) = export(1, 1).await;
    eprintln!("the fan-out…");
    let (fanned, records, bytes) = export(32, 8).await;
    let summary = |name: String, wall: Duration| Summary::new(name, &[wall], wall);
    Report {
        name: "usage".into(),
        notes: vec![
            format!("{TENANTS} tenants on one throwaway server (2 cores): {records} records, {bytes} bytes in the four formats"),
            format!(
                "tenantry usage export: {:.2} s for the fleet (goal ≤ 10 s), 32 tenant databases at once, 8 per server, each read as the tenant",
                fanned.as_secs_f64()
            ),
            format!("one tenant at a time: {:.2} s", one.as_secs_f64()),
        ],
        scenarios: vec![
            summary("usage export, one tenant at a time".into(), one),
            summary("usage export, fan-out 32 / 8 per server".into(), fanned),
        ],
        ratios: vec![Ratio {
            name: "one at a time / fan-out".into(),
            value: one.as_secs_f64() / fanned.as_secs_f64(),
            meaning: "the fan-out's gain".into(),
            ..Default::default()
        }],
    }
}

fn main() {
    tenantry_bench::main(run());
}
