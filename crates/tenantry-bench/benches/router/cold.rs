//! A cold tenant's first request: timed over HTTP, and taken apart.

use std::time::{Duration, Instant};

use tenantry_bench::Summary;
use tenantry_testkit::TestCluster;

use super::Tenant;

/// One `GET` with its token, which must succeed; how long it took.
pub async fn timed_get(http: &reqwest::Client, url: &str, auth: &str) -> Duration {
    let t = Instant::now();
    let r = http
        .get(url)
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    t.elapsed()
}

/// A cold request's parts, each timed alone on cold tenants (never resolved, no
/// connection): the catalog lookup (the resolver's, sealed password opened), the TCP
/// connect, the start-up with SCRAM authentication, and the first query (prepare and
/// run). Then the same connection as the pools open it for a tenant they have never
/// seen (its pools built, a budget permit, the TCP connect and the start-up), in pools
/// of their own with room for every tenant: what the pool adds to the connect and the
/// start-up.
#[derive(Default)]
pub struct Parts {
    samples: [Vec<Duration>; 5],
}

const NAMES: [&str; 4] = [
    "catalog lookup",
    "TCP connect",
    "start-up + SCRAM",
    "first query",
];

impl Parts {
    /// Times the parts on `tenants`, which are `t{first}` onwards.
    pub async fn measure(
        pg: &TestCluster,
        resolver: &tenantry_router::resolve::Resolver,
        tenants: &[Tenant],
        first: usize,
    ) -> Self {
        let mut parts: [Vec<Duration>; 5] = Default::default();
        let pools =
            tenantry_pools::Pools::new(tenantry_pools::PoolConfig::default(), tenants.len());
        for (k, t) in tenants.iter().enumerate() {
            let clock = Instant::now();
            let route = resolver.resolve(&format!("t{}", first + k)).await.unwrap();
            parts[0].push(clock.elapsed());
            let route = route.expect("a cold tenant's route");
            let clock = Instant::now();
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", pg.port()))
                .await
                .unwrap();
            tcp.set_nodelay(true).unwrap();
            parts[1].push(clock.elapsed());
            let clock = Instant::now();
            let mut config = tokio_postgres::Config::new();
            config
                .dbname(&t.database)
                .user(&t.role)
                .password(&t.password)
                .application_name("bench-cold");
            let (client, conn) = config
                .connect_raw(tcp, tokio_postgres::NoTls)
                .await
                .unwrap();
            parts[2].push(clock.elapsed());
            let driver = tokio::spawn(conn);
            let clock = Instant::now();
            let st = client.prepare(super::TASK_BY_ID).await.unwrap();
            client.query_opt(&st, &[&t.task]).await.unwrap();
            parts[3].push(clock.elapsed());
            drop(client);
            let _ = driver.await;
            // A backend goes on exiting after it has closed its socket: let it finish, or
            // the next start-up timed shares the server with it.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let clock = Instant::now();
            let lease = pools.get(&route.target).await.unwrap();
            parts[4].push(clock.elapsed());
            drop(lease);
        }
        // Close the pools' connections and let their backends exit before whatever is
        // timed next.
        drop(pools);
        tokio::time::sleep(Duration::from_millis(500)).await;
        Parts { samples: parts }
    }

    pub fn add(&mut self, other: Parts) {
        for (mine, theirs) in self.samples.iter_mut().zip(other.samples) {
            mine.extend(theirs);
        }
    }

    /// Each tenant's TCP connect, start-up and first query together: a cold request to
    /// the server with no router, HTTP or catalog in front of it.
    pub fn server_alone(&self) -> Vec<Duration> {
        (0..self.samples[1].len())
            .map(|k| self.samples[1][k] + self.samples[2][k] + self.samples[3][k])
            .collect()
    }

    /// Each part as `median [p99]` in ms, the sum of the medians, and the pools' first
    /// connection.
    pub fn describe(&self) -> String {
        let mut sum = 0.0;
        let described: Vec<String> = NAMES
            .iter()
            .zip(&self.samples)
            .map(|(name, samples)| {
                let s = Summary::new(*name, samples, Duration::ZERO);
                sum += s.p50_ms;
                format!("{name} {:.2} [{:.2}]", s.p50_ms, s.p99_ms)
            })
            .collect();
        let pool = Summary::new("", &self.samples[4], Duration::ZERO);
        format!(
            "{}; {sum:.2} ms together (the rest of a first request: HTTP, the token, the pool, bookkeeping); the pools' first connection for a tenant (pools built, a permit, TCP connect, start-up + SCRAM) {:.2} [{:.2}]",
            described.join(", "),
            pool.p50_ms,
            pool.p99_ms
        )
    }
}
