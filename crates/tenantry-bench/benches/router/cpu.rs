//! The machine's CPU over a stretch of time, from `/proc` (Linux): how busy it was, and
//! how much of it this process took (the router and its HTTP clients, or the ideal's
//! loops); the rest of the busy time is the server's.

/// Jiffies so far: the machine's busy ones, all of them, and this process's.
#[derive(Clone, Copy)]
pub struct Clock {
    busy: u64,
    all: u64,
    mine: u64,
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
        }
    }

    /// Since `self`: the share of the machine that was busy, and that this process took.
    pub fn shares(&self) -> (f64, f64) {
        let now = Clock::now();
        let all = now.all.saturating_sub(self.all).max(1) as f64;
        (
            now.busy.saturating_sub(self.busy) as f64 / all,
            now.mine.saturating_sub(self.mine) as f64 / all,
        )
    }
}
