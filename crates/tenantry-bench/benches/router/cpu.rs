//! The machine's CPU over a stretch of time, from `/proc` (Linux): how busy it was, and
//! how much of it this process took (the router and its HTTP clients, or the ideal's
//! loops); the rest of the busy time is the server's. Also this process's threads'
//! context switches: each time one of them parks and is woken again, the cost of a
//! hand-off between threads or of waiting on a socket.

/// Jiffies so far (the machine's busy ones, all of them, and this process's), and this
/// process's context switches.
#[derive(Clone, Copy)]
pub struct Clock {
    busy: u64,
    all: u64,
    mine: u64,
    switches: u64,
}

/// Context switches so far, voluntary or not, summed over this process's threads (those
/// still running: the router's workers and the runtime's threads live throughout).
fn switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

impl Clock {
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let all: u64 = fields.iter().sum();
        // idle and iowait
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        // utime and stime: fields 14 and 15 of /proc/self/stat, counted after the
        // command's closing parenthesis (the command may hold spaces).
        let me = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let after = me.rfind(')').map_or("", |i| &me[i + 1..]);
        let times: Vec<u64> = after
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|f| f.parse().ok())
            .collect();
        Clock {
            busy: all.saturating_sub(idle),
            all,
            mine: times.iter().sum(),
            switches: switches(),
        }
    }

    /// Since `self`: the share of the machine that was busy, the share this process
    /// took, and this process's context switches.
    pub fn shares(&self) -> (f64, f64, u64) {
        let now = Clock::now();
        let all = now.all.saturating_sub(self.all).max(1) as f64;
        (
            now.busy.saturating_sub(self.busy) as f64 / all,
            now.mine.saturating_sub(self.mine) as f64 / all,
            now.switches.saturating_sub(self.switches),
        )
    }
}

/// The machine's CPU in one measured round.
pub struct Round {
    /// The share of the machine that was busy.
    busy: f64,
    /// The share this process took.
    mine: f64,
    /// This process's CPU time for each request served, in µs.
    per_request_us: f64,
    /// This process's context switches for each request served.
    switches: f64,
}

impl Round {
    /// From what [`Clock::shares`] says of a round, its length and the requests it
    /// served.
    pub fn new(
        (busy, mine, switches): (f64, f64, u64),
        wall: std::time::Duration,
        served: usize,
    ) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let served = served.max(1) as f64;
        Round {
            busy,
            mine,
            per_request_us: mine * cores * wall.as_secs_f64() * 1e6 / served,
            switches: switches as f64 / served,
        }
    }

    /// Rounds' medians, as "busy B%: this process P% (U µs and S context switches a
    /// request), the server R%".
    pub fn describe(rounds: &[Round]) -> String {
        let median = |f: fn(&Round) -> f64| {
            let mut v: Vec<f64> = rounds.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        let (busy, mine) = (median(|r| r.busy), median(|r| r.mine));
        format!(
            "busy {:.0}%: this process {:.0}% ({:.0} µs and {:.1} context switches a request), the rest (the server) {:.0}%",
            busy * 100.0,
            mine * 100.0,
            median(|r| r.per_request_us),
            median(|r| r.switches),
            (busy - mine) * 100.0
        )
    }
}
