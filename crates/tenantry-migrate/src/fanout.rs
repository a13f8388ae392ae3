//! The fan-out: work over many tenants, `concurrency` at once and at most `per_server` on
//! one server, each item started no earlier than it is due. `migrate run` and `usage
//! export` both visit the fleet through it; what a finished item means (a retry, a
//! failure that halts the rest) is the caller's.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::task::{JoinError, JoinSet};

/// How much runs at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub concurrency: usize,
    pub per_server: usize,
}

struct Waiting<T> {
    item: T,
    server: i64,
    not_before: Instant,
}

/// Items waiting, and those running as tasks of their own. `work` makes each item's
/// future; [`FanOut::next`] starts what may start and hands back each item as it finishes
/// (with its result, or the panic that ended its task).
pub struct FanOut<T, R, F> {
    limits: Limits,
    work: F,
    queue: VecDeque<Waiting<T>>,
    per_server: HashMap<i64, usize>,
    running: JoinSet<R>,
    inflight: HashMap<tokio::task::Id, (T, i64)>,
    halted: bool,
    cancel: Option<Arc<AtomicBool>>,
}

impl<T, R, F, Fut> FanOut<T, R, F>
where
    T: Clone + Send + 'static,
    R: Send + 'static,
    F: FnMut(T) -> Fut,
    Fut: Future<Output = R> + Send + 'static,
{
    pub fn new(limits: Limits, work: F) -> Self {
        Self {
            limits: Limits {
                concurrency: limits.concurrency.max(1),
                per_server: limits.per_server.max(1),
            },
            work,
            queue: VecDeque::new(),
            per_server: HashMap::new(),
            running: JoinSet::new(),
            inflight: HashMap::new(),
            halted: false,
            cancel: None,
        }
    }

    /// Halts (see [`FanOut::halt`]) once `cancel` is set, say by a signal handler.
    pub fn cancel_on(mut self, cancel: Arc<AtomicBool>) -> Self {
        self.cancel = Some(cancel);
        self
    }

    /// Queues `item`, on `server`, to start as soon as the limits let it.
    pub fn push(&mut self, item: T, server: i64) {
        self.push_after(item, server, Instant::now());
    }

    /// Queues `item` to start no earlier than `not_before` (a retry's backoff).
    pub fn push_after(&mut self, item: T, server: i64, not_before: Instant) {
        self.queue.push_back(Waiting {
            item,
            server,
            not_before,
        });
    }

    /// Starts nothing more; what runs finishes and is still handed back.
    pub fn halt(&mut self) {
        self.halted = true;
    }

    /// Items never started (after a halt).
    pub fn waiting(&self) -> impl Iterator<Item = &T> {
        self.queue.iter().map(|w| &w.item)
    }

    fn busy(&self, server: i64) -> bool {
        self.per_server.get(&server).copied().unwrap_or(0) >= self.limits.per_server
    }

    fn start_what_may(&mut self) {
        if self
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
        {
            self.halted = true;
        }
        while !self.halted && self.running.len() < self.limits.concurrency {
            let now = Instant::now();
            let Some(i) = self
                .queue
                .iter()
                .position(|w| w.not_before <= now && !self.busy(w.server))
            else {
                break;
            };
            let w = self.queue.remove(i).expect("index from position");
            *self.per_server.entry(w.server).or_default() += 1;
            let handle = self.running.spawn((self.work)(w.item.clone()));
            self.inflight.insert(handle.id(), (w.item, w.server));
        }
    }

    /// The next item to finish, with its result (`Err` if its task panicked); `None`
    /// once nothing runs and nothing more will start (all done, or halted).
    pub async fn next(&mut self) -> Option<(T, Result<R, JoinError>)> {
        loop {
            self.start_what_may();
            if self.running.is_empty() {
                if self.halted || self.queue.is_empty() {
                    return None;
                }
                // Everything left waits for its time.
                let wake = self
                    .queue
                    .iter()
                    .map(|w| w.not_before)
                    .min()
                    .unwrap_or_else(Instant::now);
                tokio::time::sleep_until(wake.into()).await;
                continue;
            }
            // Wait for an item to finish, or for a waiting one that could start to be due.
            let wake = (!self.halted && self.running.len() < self.limits.concurrency)
                .then(|| {
                    self.queue
                        .iter()
                        .filter(|w| !self.busy(w.server))
                        .map(|w| w.not_before)
                        .min()
                })
                .flatten();
            let joined = match wake {
                Some(wake) => {
                    match tokio::time::timeout_at(wake.into(), self.running.join_next_with_id())
                        .await
                    {
                        Ok(j) => j,
                        Err(_) => continue,
                    }
                }
                None => self.running.join_next_with_id().await,
            };
            let (id, result) = match joined {
                Some(Ok((id, r))) => (id, Ok(r)),
                Some(Err(e)) => (e.id(), Err(e)),
                None => continue,
            };
            let Some((item, server)) = self.inflight.remove(&id) else {
                continue;
            };
            if let Some(n) = self.per_server.get_mut(&server) {
                *n = n.saturating_sub(1);
            }
            return Some((item, result));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;
    use std::time::Duration;

    #[tokio::test]
    async fn it_keeps_both_caps_and_hands_back_every_item() {
        let now = Arc::new(Mutex::new(HashMap::<i64, usize>::new()));
        let peak_total = Arc::new(AtomicUsize::new(0));
        let peak_server = Arc::new(AtomicUsize::new(0));
        let total = Arc::new(AtomicUsize::new(0));
        let (n, pt, ps, t) = (
            now.clone(),
            peak_total.clone(),
            peak_server.clone(),
            total.clone(),
        );
        let mut fan = FanOut::new(
            Limits {
                concurrency: 4,
                per_server: 2,
            },
            move |(item, server): (u32, i64)| {
                let (n, pt, ps, t) = (n.clone(), pt.clone(), ps.clone(), t.clone());
                async move {
                    let running = t.fetch_add(1, Ordering::SeqCst) + 1;
                    pt.fetch_max(running, Ordering::SeqCst);
                    let on_server = {
                        let mut m = n.lock().unwrap();
                        let e = m.entry(server).or_default();
                        *e += 1;
                        *e
                    };
                    ps.fetch_max(on_server, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    *n.lock().unwrap().get_mut(&server).unwrap() -= 1;
                    t.fetch_sub(1, Ordering::SeqCst);
                    item * 2
                }
            },
        );
        for i in 0..30u32 {
            let server = i64::from(i % 3);
            fan.push((i, server), server);
        }
        let mut seen = Vec::new();
        while let Some(((i, _), r)) = fan.next().await {
            assert_eq!(r.unwrap(), i * 2);
            seen.push(i);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..30).collect::<Vec<_>>());
        assert!(peak_total.load(Ordering::SeqCst) <= 4);
        assert_eq!(peak_server.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_halt_starts_nothing_more_and_a_panic_is_handed_back() {
        let mut fan = FanOut::new(
            Limits {
                concurrency: 1,
                per_server: 1,
            },
            |i: u32| async move {
                assert!(i != 1, "item 1 fails");
                i
            },
        );
        for i in 0..4 {
            fan.push(i, 0);
        }
        let (first, r) = fan.next().await.unwrap();
        assert_eq!((first, r.unwrap()), (0, 0));
        let (second, r) = fan.next().await.unwrap();
        assert_eq!(second, 1);
        assert!(r.unwrap_err().is_panic());
        fan.halt();
        assert!(fan.next().await.is_none());
        assert_eq!(fan.waiting().copied().collect::<Vec<_>>(), vec![2, 3]);
    }
}
