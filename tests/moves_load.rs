//! Moves under load over real HTTP, with two router processes: a tenant moved online
//! while both serve it steady mixed traffic (every acknowledged write is on the target
//! afterwards; requests during the cutover are held, not failed), and a server of 30
//! tenants evacuated under load and then removed.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::routers::bearer;
use support::{token, Deployment, Router};
use tenantry_testkit::TestCluster;
use uuid::Uuid;

/// What the load saw: statuses, and each tenant's acknowledged writes with their times.
#[derive(Default)]
struct Seen {
    statuses: HashMap<u16, u64>,
    server_errors: Vec<String>,
    acked: HashMap<String, Vec<(Instant, Uuid)>>,
}

/// Clients over `slugs` (one each), through the routers in turn, until `stop`: a new
/// task, a page of tasks, the last task written; every `pause`.
fn load(
    routers: &[&Router],
    slugs: &[String],
    pause: Duration,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let bases: Vec<String> = routers.iter().map(|r| r.base.clone()).collect();
    slugs
        .iter()
        .enumerate()
        .map(|(c, slug)| {
            let (bases, stop, seen, slug) =
                (bases.clone(), stop.clone(), seen.clone(), slug.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                let auth = bearer(&token(&slug, None));
                let mut i = c;
                while !stop.load(Ordering::SeqCst) {
                    let base = &bases[i % bases.len()];
                    let last = seen
                        .lock()
                        .unwrap()
                        .acked
                        .get(&slug)
                        .and_then(|a| a.last().map(|l| l.1));
                    let request = match (i % 3, last) {
                        (1, _) => http.get(format!("{base}/v1/tasks?limit=5")),
                        (2, Some(id)) => http.get(format!("{base}/v1/tasks/{id}")),
                        _ => http
                            .post(format!("{base}/v1/tasks"))
                            .json(&json!({"agent": "opencode", "title": "under a move"})),
                    };
                    i += 1;
                    if let Ok(resp) = request.header("authorization", &auth).send().await {
                        let status = resp.status().as_u16();
                        let body: Value = resp.json().await.unwrap_or_default();
                        let mut s = seen.lock().unwrap();
                        *s.statuses.entry(status).or_default() += 1;
                        if status >= 500 && status != 503 {
                            s.server_errors.push(format!("{status} {body}"));
                        }
                        if status == 201 {
                            let id = body["id"].as_str().unwrap().parse().unwrap();
                            s.acked
                                .entry(slug.clone())
                                .or_default()
                                .push((Instant::now(), id));
                        }
                    }
                    tokio::time::sleep(pause).await;
                }
            })
        })
        .collect()
}

/// Runs `work` (a CLI command) under [`load`] over `slugs`, a request every 250 ms per
/// client, with `settle` of load before and after it; what it returned and what the
/// load saw.
async fn under_load<T>(
    routers: &[&Router],
    slugs: &[String],
    settle: Duration,
    work: impl FnOnce() -> T,
) -> (T, Seen) {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let clients = load(
        routers,
        slugs,
        Duration::from_millis(250),
        stop.clone(),
        seen.clone(),
    );
    tokio::time::sleep(settle).await;
    // The command blocks: the load goes on in the runtime's other worker meanwhile.
    let out = tokio::task::block_in_place(work);
    tokio::time::sleep(settle).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (out, seen)
}

/// How many of `slug`'s acknowledged writes its database (wherever the catalog says it
/// is now) lacks; and the server it is on.
async fn missing(
    d: &Deployment,
    clusters: &[&TestCluster],
    slug: &str,
    ids: &[Uuid],
) -> (i64, String) {
    let row = d
        .catalog()
        .await
        .query_one(
            "SELECT t.database_name, s.name, s.port FROM tenants t JOIN servers s ON s.id = t.server_id
             WHERE t.slug = $1 AND t.state <> 'deleted'",
            &[&slug],
        )
        .await
        .unwrap();
    let (database, server, port): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
    let cluster = clusters
        .iter()
        .find(|c| i32::from(c.port()) == port)
        .unwrap();
    let found: i64 = cluster
        .connect(&database)
        .await
        .query_one("SELECT count(*) FROM tasks WHERE id = ANY($1)", &[&ids])
        .await
        .unwrap()
        .get(0);
    (ids.len() as i64 - found, server)
}

/// The longest gap between consecutive acknowledged writes.
fn longest_gap(acks: &[(Instant, Uuid)]) -> Duration {
    acks.windows(2)
        .map(|w| w[1].0.duration_since(w[0].0))
        .max()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_moved_online_under_load_from_two_routers_loses_no_acknowledged_write() {
    let d = Deployment::new().await;
    let s2 = d.second_server();
    d.json(&["server", "drain", "s2"], 0);
    for slug in ["busy", "bystander"] {
        d.json(&["tenant", "create", slug, "--plan", "enterprise"], 0);
    }
    d.json(&["server", "activate", "s2"], 0);
    let vars = [("TENANTRY__ROUTER__HEARTBEAT_S", "1")];
    let (one, two) = (d.serve(&vars).await, d.serve(&vars).await);
    // Within enterprise's 600 requests a minute per tenant: two clients of the moving
    // tenant and one of a bystander, a request every 250 ms each.
    let slugs: Vec<String> = ["busy", "busy", "bystander"].map(String::from).to_vec();
    let (moved, seen) = under_load(&[&one, &two], &slugs, Duration::from_secs(2), || {
        d.json(&["tenant", "move", "busy", "--to", "s2"], 0)
    })
    .await;
    let clusters = [&d.pg, &s2];
    let busy: Vec<Uuid> = seen.acked["busy"].iter().map(|a| a.1).collect();
    let (lost, server) = missing(&d, &clusters, "busy", &busy).await;
    let bystander: Vec<Uuid> = seen.acked["bystander"].iter().map(|a| a.1).collect();
    let (lost_bystander, _) = missing(&d, &clusters, "bystander", &bystander).await;
    eprintln!(
        "moved: {moved}; statuses {:?}; busy: {} writes acknowledged, longest gap between them {:?}",
        seen.statuses,
        busy.len(),
        longest_gap(&seen.acked["busy"])
    );
    assert_eq!(server, "s2");
    assert_eq!((lost, lost_bystander), (0, 0), "acknowledged writes lost");
    assert!(seen.server_errors.is_empty(), "{:?}", seen.server_errors);
    assert!(busy.len() > 5 && bystander.len() > 2);
}

/// `server evacuate` moves 30 tenants off a server to two others while two routers
/// serve some of them, loses no acknowledged write, and leaves a server `remove` takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_of_30_tenants_is_evacuated_under_load_and_then_removed() {
    let d = Deployment::new().await;
    d.enterprise_tenants(30).await;
    let s2 = d.second_server();
    let s3 = TestCluster::start();
    d.json(&["server", "add", "s3", "--url", &s3.url("postgres")], 0);
    let vars = [("TENANTRY__ROUTER__HEARTBEAT_S", "1")];
    let (one, two) = (d.serve(&vars).await, d.serve(&vars).await);
    let slugs: Vec<String> = (0..6).map(|i| format!("load-{i}")).collect();
    let (report, seen) = under_load(&[&one, &two], &slugs, Duration::from_secs(1), || {
        d.json(&["server", "evacuate", "s1", "--concurrency", "4"], 0)
    })
    .await;
    assert_eq!(
        (report["moved"].as_u64(), report["failed"].as_u64()),
        (Some(30), Some(0)),
        "{report}"
    );
    let clusters = [&d.pg, &s2, &s3];
    let mut on = HashMap::new();
    for i in 0..30 {
        let slug = format!("load-{i}");
        let ids: Vec<Uuid> = seen
            .acked
            .get(&slug)
            .map(|a| a.iter().map(|x| x.1).collect())
            .unwrap_or_default();
        let (lost, server) = missing(&d, &clusters, &slug, &ids).await;
        assert_eq!(lost, 0, "{slug}: acknowledged writes lost");
        *on.entry(server).or_insert(0) += 1;
    }
    eprintln!(
        "evacuated in {} s: tenants now per server {on:?}; statuses under load {:?}",
        report["seconds"], seen.statuses
    );
    assert!(!on.contains_key("s1"));
    assert!(
        on.get("s2").is_some_and(|n| *n >= 10) && on.get("s3").is_some_and(|n| *n >= 10),
        "{on:?}"
    );
    assert!(seen.server_errors.is_empty(), "{:?}", seen.server_errors);
    d.json(&["server", "remove", "s1"], 0);
}
