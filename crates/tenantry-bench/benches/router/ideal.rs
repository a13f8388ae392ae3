//! The most any router could serve of the 1,000-tenant Zipf traffic on this machine,
//! measured rather than computed: no HTTP, no router, and a cache better than a budget
//! allows — a connection kept open for each of the `kept` most popular tenants, and every
//! request to another one served on a connection of its own, opened, queried and closed,
//! `parallel` at a time, on top of those ([`serve`]). The same behind a bare HTTP
//! handler, as it is or kept to the router's budget and turns ([`over_http`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, HttpResponse};
use tenantry_testkit::TestCluster;
use tokio::sync::Semaphore;
use uuid::Uuid;

pub use super::misses::Target;

/// The kept connections of [`serve`], opened once for all its rounds.
pub struct Kept {
    clients: Vec<(tokio_postgres::Client, tokio_postgres::Statement)>,
}

impl Kept {
    /// A connection each, the scenario's query prepared, for `targets` (the most popular
    /// first).
    pub async fn open(pg: &TestCluster, targets: &[Target]) -> Self {
        let mut clients = Vec::new();
        for t in targets {
            let (client, _driver) = super::misses::connect("127.0.0.1", pg.port(), t).await;
            let st = client.prepare(super::TASK_BY_ID).await.unwrap();
            clients.push((client, st));
        }
        Kept { clients }
    }

    /// The task `task` read on the kept connection of the `k`th most popular tenant;
    /// `None` if that tenant has none.
    async fn read(&self, k: usize, task: &Uuid) -> Option<Option<tokio_postgres::Row>> {
        let (client, st) = self.clients.get(k)?;
        Some(client.query_opt(st, &[task]).await.unwrap())
    }
}

/// The ideal behind a bare actix handler on the router's number of workers:
/// `GET /tasks/{k}/{id}` for the `k`th tenant of `targets` (the most popular first),
/// served as [`serve`] serves it and answered as the router answers it, on the first
/// `keep` of `kept`'s connections (the rest stay open, unused) and `parallel` more at a
/// time. It against [`serve`] is what HTTP costs; with `keep` and `parallel` the
/// router's own (the budget less its turns, and its turns), the router against it is
/// what the router's own work costs.
pub fn over_http(
    pg: &TestCluster,
    (kept, keep): (Arc<Kept>, usize),
    targets: Arc<Vec<Target>>,
    parallel: usize,
) -> (ServerHandle, String) {
    struct Ideal {
        kept: Arc<Kept>,
        keep: usize,
        targets: Arc<Vec<Target>>,
        opens: Semaphore,
        port: u16,
    }
    async fn get(ideal: web::Data<Ideal>, path: web::Path<(usize, Uuid)>) -> HttpResponse {
        let (k, id) = path.into_inner();
        if k < ideal.keep {
            if let Some(row) = ideal.kept.read(k, &id).await {
                return super::baseline::answer(row);
            }
        }
        let Some(target) = ideal.targets.get(k) else {
            return HttpResponse::NotFound().finish();
        };
        let _turn = ideal.opens.acquire().await.unwrap();
        super::baseline::answer(super::misses::one_shot("127.0.0.1", ideal.port, target).await)
    }
    let data = web::Data::new(Ideal {
        kept,
        keep,
        targets,
        opens: Semaphore::new(parallel),
        port: pg.port(),
    });
    super::baseline::serve(move |app| {
        app.app_data(data.clone())
            .route("/tasks/{k}/{id}", web::get().to(get));
    })
}

/// Requests per second that ended inside `run_for` (after the scenarios' warm-up), and
/// the machine's CPU then, served by as many concurrent loops as the scenarios have
/// HTTP clients, each choosing its tenant with `pick` among `targets` (the Zipf order,
/// the most popular first) as the clients do: a tenant with a connection in `kept` is
/// served on it (concurrent requests pipelined on it); any other opens a connection,
/// runs the query and closes it, at most `parallel` at a time.
pub async fn serve(
    pg: &TestCluster,
    kept: &Arc<Kept>,
    targets: &Arc<Vec<Target>>,
    pick: Arc<dyn Fn(usize) -> usize + Send + Sync>,
    parallel: usize,
    run_for: Duration,
) -> (f64, super::cpu::Round) {
    let opens = Arc::new(Semaphore::new(parallel));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now() + super::WARM_UP;
    let ends = started + run_for;
    let loops: Vec<_> = (0..super::CLIENTS)
        .map(|c| {
            let (kept, targets, pick) = (kept.clone(), targets.clone(), pick.clone());
            let (opens, stop) = (opens.clone(), stop.clone());
            let (host, port) = ("127.0.0.1", pg.port());
            tokio::spawn(async move {
                let mut served = 0usize;
                let mut i = c * 7919;
                while !stop.load(Ordering::Relaxed) {
                    let k = pick(i);
                    i += 1;
                    if kept.read(k, &targets[k].3).await.is_none() {
                        let _turn = opens.acquire().await.unwrap();
                        super::misses::one_shot(host, port, &targets[k]).await;
                    }
                    let done = Instant::now();
                    if done >= started && done < ends {
                        served += 1;
                    }
                }
                served
            })
        })
        .collect();
    tokio::time::sleep_until(started.into()).await;
    let clock = super::cpu::Clock::now();
    tokio::time::sleep_until(ends.into()).await;
    let cpu = clock.shares();
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for l in loops {
        served += l.await.unwrap();
    }
    // What ended inside the window, as the router's scenarios count it.
    let cpu = super::cpu::Round::new(cpu, run_for, served);
    (served as f64 / run_for.as_secs_f64(), cpu)
}
