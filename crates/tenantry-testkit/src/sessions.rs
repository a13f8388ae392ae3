//! The most sessions a server held at once while something ran: `pg_stat_activity`
//! sampled on a connection of its own, so a test can check a budget was never passed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::TestCluster;

/// Which sessions count.
#[derive(Debug, Clone)]
pub enum Sessions {
    /// Those whose `application_name` is this.
    Named(String),
    /// Those logged in as this role.
    OfRole(String),
}

/// Counts [`Sessions`] on the server every `every` from [`SessionPeak::start`] until
/// [`SessionPeak::stop`], and keeps the most seen. Each count scans `pg_stat_activity`,
/// which costs the server something per session it holds: a benchmark that compares
/// rounds runs a sampler in each of them.
pub struct SessionPeak {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<i64>,
}

impl SessionPeak {
    pub async fn start(pg: &TestCluster, which: Sessions, every: Duration) -> Self {
        let (sql, value) = match which {
            Sessions::Named(name) => (
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                name,
            ),
            Sessions::OfRole(role) => (
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                role,
            ),
        };
        let client = pg.connect("postgres").await;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = 0i64;
            loop {
                let n: i64 = client
                    .query_one(sql, &[&value])
                    .await
                    .expect("count the sessions")
                    .get(0);
                peak = peak.max(n);
                if stopped.load(Ordering::SeqCst) {
                    return peak;
                }
                tokio::time::sleep(every).await;
            }
        });
        SessionPeak { stop, task }
    }

    /// Stops sampling (after one more count); the most sessions seen.
    pub async fn stop(self) -> i64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the sampler ended")
    }
}
