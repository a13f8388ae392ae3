//! The load the router's scenarios (and the bare handlers) are measured under: `CLIENTS`
//! concurrent HTTP clients with keep-alive, each request counted if it ends inside the
//! measured window.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantry_bench::Summary;
use tenantry_testkit::{SessionPeak, Sessions, TestCluster};

use super::{cpu, CLIENTS, WARM_UP};

/// One measured run: latencies of the successful requests, failures, the most
/// connections seen on the server, and the measured wall time.
#[derive(Default)]
pub struct Run {
    pub samples: Vec<Duration>,
    pub failed: usize,
    pub peak: i64,
    pub wall: Duration,
    /// Router connections opened, and idle ones evicted, in the measured time.
    pub opened: u64,
    pub evicted: u64,
    /// The machine's CPU in each measured round.
    pub cpu: Vec<cpu::Round>,
}

impl Run {
    pub fn add(&mut self, other: Run) {
        self.samples.extend(other.samples);
        self.failed += other.failed;
        self.peak = self.peak.max(other.peak);
        self.wall += other.wall;
        self.opened += other.opened;
        self.evicted += other.evicted;
        self.cpu.extend(other.cpu);
    }

    pub fn per_second(&self) -> f64 {
        self.samples.len() as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    pub fn summary(&self, name: &str) -> Summary {
        Summary::new(name, &self.samples, self.wall)
    }
}

/// Counts the sessions named `app` on the server every 50 ms, and keeps the peak. Its
/// queries (a scan of `pg_stat_activity`, some 200 sessions in the 1,000-tenant
/// rounds) cost the server 30–47 µs of CPU per request of that scenario, 1.5–2 % of
/// the server's work there; so every round compared with one that counts its sessions
/// runs it too, the open loops and the ideals included: with no `app`, it counts
/// sessions of a name nobody uses.
pub async fn sampler(pg: &TestCluster, app: Option<&'static str>) -> SessionPeak {
    let app = app.unwrap_or("bench-nobody");
    SessionPeak::start(pg, Sessions::Named(app.into()), Duration::from_millis(50)).await
}

/// Sends the requests `pick` chooses among `requests` from `CLIENTS` concurrent clients,
/// for `WARM_UP` and then `run_for` measured; counts the peak of `app`'s sessions on the
/// server (if it names them; [`sampler`]), and the router's opened and evicted
/// connections (`churn`) in the measured time.
///
/// What is measured is what ends inside the window, whenever it began, over the window's
/// length: a request that queued through the warm-up and ends inside the window is
/// counted, one still going when the window ends is not (the clients then finish theirs,
/// uncounted). Where requests queue for long (the 1,000-tenant scenario's, for a turn to
/// open a session), counting by start instead would leave out the work of those queued
/// at the start, and stretch the window over the last ones' drain.
pub async fn load(
    name: &str,
    run_for: Duration,
    requests: Arc<Vec<(String, String)>>,
    pick: Arc<dyn Fn(usize) -> usize + Send + Sync>,
    pg: &TestCluster,
    churn: &(dyn Fn() -> (u64, u64) + Sync),
    app: Option<&'static str>,
) -> Run {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    let sampler = sampler(pg, app).await;
    eprintln!("{name}…");
    let started = Instant::now() + WARM_UP;
    let ends = started + run_for;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (http, requests, pick) = (http.clone(), requests.clone(), pick.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut failed = 0usize;
                let mut reasons: Vec<String> = Vec::new();
                let mut i = c * 7919;
                while Instant::now() < ends {
                    let t = Instant::now();
                    let (url, auth) = &requests[pick(i)];
                    i += 1;
                    let outcome = match http.get(url).header("authorization", auth).send().await {
                        Ok(r) if r.status().is_success() => None,
                        Ok(r) => Some(format!("HTTP {}", r.status().as_u16())),
                        Err(e) => Some(format!("transport error: {e}")),
                    };
                    let done = Instant::now();
                    match outcome {
                        // Failures count during the warm-up and the drain too.
                        Some(why) => {
                            failed += 1;
                            if reasons.len() < 3 && !reasons.contains(&why) {
                                reasons.push(why);
                            }
                        }
                        None if done >= started && done < ends => samples.push(done - t),
                        None => {}
                    }
                }
                (samples, failed, reasons)
            })
        })
        .collect();
    tokio::time::sleep_until(started.into()).await;
    let churn_before = churn();
    let clock = cpu::Clock::now();
    tokio::time::sleep_until(ends.into()).await;
    let churn_after = churn();
    let cpu = clock.shares();
    let mut samples = Vec::new();
    let mut failed = 0;
    let mut reasons: Vec<String> = Vec::new();
    for c in clients {
        let (s, f, r) = c.await.unwrap();
        samples.extend(s);
        failed += f;
        for why in r {
            if !reasons.contains(&why) {
                reasons.push(why);
            }
        }
    }
    if !reasons.is_empty() {
        eprintln!("{name}: {failed} failed requests: {}", reasons.join("; "));
    }
    let peak = sampler.stop().await;
    let cpu = vec![cpu::Round::new(cpu, run_for, samples.len())];
    Run {
        samples,
        failed,
        peak,
        wall: run_for,
        opened: churn_after.0 - churn_before.0,
        evicted: churn_after.1 - churn_before.1,
        cpu,
    }
}
