//! Moving a tenant of about 100 MB of tasks while a client writes to it at a steady
//! rate: online (logical replication, a short cutover) and offline (`pg_dump |
//! pg_restore` while writes are refused), against a bare `pg_dump | pg_restore` of the
//! same database (the baseline). Printed: each move's total time against the baseline,
//! the write pause (the longest gap between acknowledged writes as the client saw it),
//! and writes lost (every acknowledged write is looked for on the target).
//! Goals: online pause ≤ 1 s, online total ≤ 1.5× the baseline, nothing lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use tenantry_bench::{spread, Deployment, Ratio, Report, Summary};
use tenantry_provision::{AddServer, CreateTenant, MoveTenant};
use tenantry_router::auth::{issue_hs256, Claims};
use tenantry_testkit::TestCluster;
use uuid::Uuid;

/// Rows of about 1 KB each: about 100 MB with their indexes.
const ROWS: i64 = 90_000;
/// One write every this long.
const WRITE_EVERY: Duration = Duration::from_millis(10);
/// Rounds of baseline, online move and offline move.
const ROUNDS: usize = 5;

/// Acknowledged writes: when, and which task.
type Acks = Arc<Mutex<Vec<(Instant, Uuid)>>>;

/// Writes tasks through the router until `stop`; a refused or failed write is tried
/// again at the next tick (it was never acknowledged).
fn writer(
    url: String,
    auth: String,
    stop: Arc<AtomicBool>,
    acks: Acks,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut refused = 0;
        let mut tick = tokio::time::interval(WRITE_EVERY);
        while !stop.load(Ordering::SeqCst) {
            tick.tick().await;
            let sent = http
                .post(&url)
                .header("authorization", &auth)
                .json(&serde_json::json!({"agent": "opencode", "title": "during the move"}))
                .send()
                .await;
            match sent {
                Ok(r) if r.status().as_u16() == 201 => {
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    if let Some(id) = body["id"].as_str().and_then(|i| i.parse().ok()) {
                        acks.lock().unwrap().push((Instant::now(), id));
                    }
                }
                _ => refused += 1,
            }
        }
        refused
    })
}

/// The longest gap between consecutive acknowledgements within `[from, to]`.
fn longest_gap(acks: &[(Instant, Uuid)], from: Instant, to: Instant) -> Duration {
    let times: Vec<Instant> = acks
        .iter()
        .map(|a| a.0)
        .filter(|t| *t >= from && *t <= to)
        .collect();
    let mut gap = times
        .first()
        .map_or(Duration::ZERO, |t| t.duration_since(from));
    for w in times.windows(2) {
        gap = gap.max(w[1].duration_since(w[0]));
    }
    gap.max(
        times
            .last()
            .map_or(Duration::ZERO, |t| to.duration_since(*t)),
    )
}

/// How many of `ids` are missing from the tasks of `database` on `pg`.
async fn lost(pg: &TestCluster, database: &str, ids: &[Uuid]) -> i64 {
    let found: i64 = pg
        .connect(database)
        .await
        .query_one("SELECT count(*) FROM tasks WHERE id = ANY($1)", &[&ids])
        .await
        .unwrap()
        .get(0);
    ids.len() as i64 - found
}

/// `pg_dump -Fc | pg_restore` of `database` from `from` into a new database on `to`.
fn dump_and_restore(from: &TestCluster, to: &TestCluster, database: &str, copy: &str) -> Duration {
    let started = Instant::now();
    let mut dump = std::process::Command::new(from.binaries().tool("pg_dump"))
        .args([
            "-Fc",
            "--no-owner",
            "--no-privileges",
            "-d",
            &from.url(database),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let restore = std::process::Command::new(to.binaries().tool("pg_restore"))
        .args(["--no-owner", "--no-privileges", "-d", &to.url(copy)])
        .stdin(dump.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(dump.wait().unwrap().success() && restore.success());
    started.elapsed()
}

async fn run() -> Report {
    let a = TestCluster::start();
    let b = TestCluster::start();
    let d = Deployment::new(
        &a,
        &[
            ("TENANTRY__HTTP__BIND", "127.0.0.1:0"),
            (
                "TENANTRY__PLANS__ENTERPRISE__REQUESTS_PER_MINUTE",
                "100000000",
            ),
            ("TENANTRY__ROUTER__HEARTBEAT_S", "1"),
        ],
        tenantry_bench::templates_dir(),
        100,
    )
    .await;
    let (info, _) = d
        .provisioner
        .create_tenant(CreateTenant {
            slug: "big".into(),
            plan: Some("enterprise".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    d.provisioner
        .add_server(AddServer {
            name: "b".into(),
            url: SecretString::from(b.url("postgres")),
            capacity: Some(100),
            max_connections: Some(100),
        })
        .await
        .unwrap();
    eprintln!("writing about 100 MB of tasks…");
    a.connect(&info.database)
        .await
        .execute(
            "INSERT INTO tasks (id, user_id, agent, title, input)
             SELECT gen_random_uuid(), 'bench', 'opencode', 'task ' || n,
                    jsonb_build_object('text', repeat(md5(n::text), 28))
             FROM generate_series(1, $1::int8) n",
            &[&ROWS],
        )
        .await
        .unwrap();
    let size: i64 = a
        .connect("postgres")
        .await
        .query_one("SELECT pg_database_size($1)", &[&info.database])
        .await
        .unwrap()
        .get(0);

    let router = d.serve(2).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = issue_hs256(
        d.settings.auth.hs256_secret.as_ref().unwrap(),
        &Claims {
            sub: "bench".into(),
            tenant: Some("big".into()),
            exp: now + 3600,
            iss: d.settings.auth.issuer.clone(),
            aud: d.settings.auth.audience.clone(),
            nbf: None,
            iat: Some(now),
            scope: None,
            tenant_id: Some(info.id),
        },
    )
    .unwrap();
    let url = format!("http://{}/v1/tasks", router.addr);
    let auth = format!("Bearer {token}");

    // Each round, alternating: the baseline (a bare dump and restore of the tenant's
    // database onto b), the online move to b, the offline move back to a, each move
    // under the writer.
    let mut rounds: Vec<Round> = Vec::new();
    for round in 0..ROUNDS {
        let copy = format!("baseline_copy_{round}");
        b.create_database(&copy).await;
        let baseline = dump_and_restore(&a, &b, &info.database, &copy);
        b.connect("postgres")
            .await
            .batch_execute(&format!("DROP DATABASE {copy}"))
            .await
            .unwrap();
        let mut moves = Vec::new();
        for (to, offline, target) in [("b", false, &b), ("bench", true, &a)] {
            let before: i64 = d
                .catalog
                .client()
                .await
                .unwrap()
                .query_one("SELECT coalesce(max(id), 0) FROM operations", &[])
                .await
                .unwrap()
                .get(0);
            let acks: Acks = Arc::default();
            let stop = Arc::new(AtomicBool::new(false));
            let w = writer(url.clone(), auth.clone(), stop.clone(), acks.clone());
            tokio::time::sleep(Duration::from_secs(1)).await;
            let started = Instant::now();
            let moved = d
                .provisioner
                .move_tenant(MoveTenant {
                    slug: "big".into(),
                    to: to.into(),
                    offline,
                    cutover_timeout: Duration::from_secs(30),
                })
                .await
                .unwrap();
            let took = started.elapsed();
            let ended = Instant::now();
            tokio::time::sleep(Duration::from_secs(1)).await;
            stop.store(true, Ordering::SeqCst);
            let refused = w.await.unwrap();
            let acks = acks.lock().unwrap().clone();
            let pause = longest_gap(&acks, started, ended);
            let database = d.provisioner.show_tenant("big").await.unwrap().database;
            let ids: Vec<Uuid> = acks.iter().map(|a| a.1).collect();
            let lost = lost(target, &database, &ids).await;
            let steps: Vec<(String, f64)> = d
                .catalog
                .client()
                .await
                .unwrap()
                .query(
                    "SELECT step, extract(epoch FROM finished_at - started_at)::float8
                     FROM operations WHERE kind = 'move' AND id > $1 AND finished_at IS NOT NULL
                     ORDER BY id",
                    &[&before],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            eprintln!(
                "round {round}: baseline {baseline:?}; {} move: {took:?}, pause {pause:?}, {} acknowledged, {refused} refused, {lost} lost ({})",
                if offline { "offline" } else { "online" },
                ids.len(),
                moved.phase
            );
            moves.push(Move {
                took,
                pause,
                acknowledged: ids.len(),
                refused,
                lost,
                steps,
            });
        }
        let offline = moves.pop().unwrap();
        let online = moves.pop().unwrap();
        rounds.push(Round {
            baseline,
            online,
            offline,
        });
    }
    router.stop().await;

    let secs = |f: &dyn Fn(&Round) -> Duration| -> Vec<f64> {
        rounds.iter().map(|r| f(r).as_secs_f64()).collect()
    };
    let baseline = secs(&|r| r.baseline);
    let online = secs(&|r| r.online.took);
    let offline = secs(&|r| r.offline.took);
    let online_pause = secs(&|r| r.online.pause);
    let offline_pause = secs(&|r| r.offline.pause);
    let ratio =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x / y).collect() };
    // Where the online move's time goes: each step's median over the rounds.
    let mut step_names: Vec<String> = Vec::new();
    for (name, _) in &rounds[0].online.steps {
        if !step_names.contains(name) {
            step_names.push(name.clone());
        }
    }
    let breakdown: Vec<String> = step_names
        .iter()
        .map(|name| {
            let mut ms: Vec<f64> = rounds
                .iter()
                .map(|r| {
                    r.online
                        .steps
                        .iter()
                        .filter(|(n, _)| n == name)
                        .map(|(_, s)| s * 1000.0)
                        .sum()
                })
                .collect();
            format!("{name} {} ms", spread(&mut ms))
        })
        .collect();
    let count = |f: &dyn Fn(&Round) -> usize| -> usize { rounds.iter().map(f).sum() };
    let notes = vec![
        format!(
            "one enterprise tenant of {:.0} MB ({ROWS} tasks of about 1 KB), two throwaway clusters on this machine; a client writes a task through the router every {} ms during each move and retries what is refused; {ROUNDS} rounds, each: the baseline, the online move to b, the offline move back",
            size as f64 / 1e6,
            WRITE_EVERY.as_millis()
        ),
        format!(
            "baseline: pg_dump -Fc | pg_restore of the same database onto the other server: {} s",
            spread(&mut baseline.clone())
        ),
        format!(
            "online move (to b): {} s; longest gap between acknowledged writes {} ms; {} writes acknowledged, {} refused, {} lost in all",
            spread(&mut online.clone()),
            spread(&mut online_pause.iter().map(|s| s * 1000.0).collect::<Vec<_>>()),
            count(&|r| r.online.acknowledged),
            count(&|r| r.online.refused),
            count(&|r| r.online.lost as usize)
        ),
        format!("online move's steps (median [range]): {}", breakdown.join(", ")),
        format!(
            "offline move (back): {} s; longest gap between acknowledged writes {} ms; {} writes acknowledged, {} refused, {} lost in all",
            spread(&mut offline.clone()),
            spread(&mut offline_pause.iter().map(|s| s * 1000.0).collect::<Vec<_>>()),
            count(&|r| r.offline.acknowledged),
            count(&|r| r.offline.refused),
            count(&|r| r.offline.lost as usize)
        ),
    ];
    let summary = |name: &str, v: &[f64]| {
        let samples: Vec<Duration> = v.iter().map(|s| Duration::from_secs_f64(*s)).collect();
        Summary::new(name, &samples, Duration::ZERO)
    };
    let lost_in_all = rounds
        .iter()
        .map(|r| (r.online.lost + r.offline.lost) as f64)
        .collect::<Vec<_>>();
    Report {
        name: "move".into(),
        notes,
        scenarios: vec![
            summary("baseline: pg_dump | pg_restore", &baseline),
            summary("online move, total", &online),
            summary("online move, write pause", &online_pause),
            summary("offline move, total", &offline),
            summary("offline move, write pause", &offline_pause),
        ],
        ratios: vec![
            Ratio::of_rounds(
                "online move / dump and restore (time)",
                &ratio(&online, &baseline),
                "goal ≤ 1.5",
            ),
            Ratio::of_rounds("online write pause (s)", &online_pause, "goal ≤ 1 s"),
            Ratio::of_rounds(
                "offline move / dump and restore (time)",
                &ratio(&offline, &baseline),
                "writes refused meanwhile",
            ),
            Ratio::of_rounds("writes lost", &lost_in_all, "must be 0"),
        ],
    }
}

/// One move as the writer saw it, and its ledger steps (name, seconds).
struct Move {
    took: Duration,
    pause: Duration,
    acknowledged: usize,
    refused: usize,
    lost: i64,
    steps: Vec<(String, f64)>,
}

struct Round {
    baseline: Duration,
    online: Move,
    offline: Move,
}

fn main() {
    tenantry_bench::main(run());
}
