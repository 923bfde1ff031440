//! Thread pools. candle's element-wise pool spin-waits: on 2 cores with one core busy elsewhere,
//! an unpinned pool ran 2.9x slower (scripts/bench.sh). So tinylm pins that pool to one thread
//! (`CANDLE_NUM_THREADS=1`) and gives the matmul pool (rayon's, sized by `RAYON_NUM_THREADS`) the
//! configured count. This must run before candle first reads either variable, so `main` calls it
//! before any tensor work.
//! The count never reaches the weights: tinylm's kernels split a product into disjoint blocks of
//! output rows and columns (`kernels::matmul`'s `Plan`), and every output element is one fixed
//! fma chain whichever thread computes it (docs/numerics.md).

pub fn configure(threads: usize) {
    let n = threads.max(1);
    // Called once at start-up, before any other thread exists.
    // An explicit CANDLE_NUM_THREADS is respected (scripts/bench.sh uses it to measure
    // the spinning pool); otherwise the fast setting is chosen for the user.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
}

/// Full-pool steps slower than this times the fastest one count as slow.
const SLOW: f64 = 1.3;
/// Slow steps in a row before the smaller pool is tried.
const SLOW_STEPS: u32 = 3;
/// Steps between probes while one is not due for a reason (after a failed probe of the smaller
/// pool, or while on it).
const PROBE_EVERY: u32 = 50;

/// Runs each training step on the global pool or on one with a thread fewer, whichever is
/// faster now. When another process keeps one core busy, every parallel section of the full
/// pool waits for the thread that shares that core, and a pool that leaves that core alone is
/// faster (tiny shapes, 2 cores, `yes` on one: ~0.62 of the idle speed on 1 thread against
/// ~0.45 on 2). On an idle machine it costs nothing: the smaller pool is tried only after
/// `SLOW_STEPS` full-pool steps in a row ran `SLOW` times slower than the fastest so far; once
/// on it, one step in `PROBE_EVERY` tries the full pool again. Only the schedule depends on
/// this wall-clock choice: the thread count never changes a bit (docs/numerics.md, tested with
/// 1, 2 and 4 threads).
pub struct Pacer {
    fewer: Option<rayon::ThreadPool>,
    use_fewer: bool,
    best_full: f64,
    last_full: f64,
    last_fewer: f64,
    slow: u32,
    /// Steps until a probe may come.
    wait: u32,
    last_threads: usize,
    /// The smaller pool has not been tried yet: one probe right after the first settled step,
    /// so a core that is busy from the start is noticed at once (a slowdown against the fastest
    /// step cannot show it: every step is slow).
    opening: bool,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer::new()
    }
}

impl Pacer {
    pub fn new() -> Pacer {
        let n = rayon::current_num_threads();
        let fewer =
            if n > 1 { rayon::ThreadPoolBuilder::new().num_threads(n - 1).build().ok() } else { None };
        Pacer {
            fewer,
            use_fewer: false,
            best_full: f64::INFINITY,
            last_full: f64::INFINITY,
            last_fewer: f64::INFINITY,
            slow: 0,
            wait: 1, // the first step pays for page faults: not a speed
            last_threads: n,
            opening: true,
        }
    }

    /// Run one step `f` on the pool chosen for it.
    pub fn run<T: Send>(&mut self, f: impl FnOnce() -> T + Send) -> T {
        let Some(fewer) = &self.fewer else { return f() };
        let (on_fewer, probe) = self.choose();
        let start = std::time::Instant::now();
        let out = if on_fewer { fewer.install(f) } else { f() };
        let secs = start.elapsed().as_secs_f64();
        self.last_threads = if on_fewer { fewer.current_num_threads() } else { rayon::current_num_threads() };
        self.observe(on_fewer, probe, secs);
        out
    }

    /// (run the next step on the smaller pool, it is a probe).
    fn choose(&self) -> (bool, bool) {
        let opening = self.opening && self.best_full.is_finite();
        let probe = self.wait == 0 && (self.use_fewer || self.slow >= SLOW_STEPS || opening);
        (self.use_fewer != probe, probe)
    }

    /// Learn from a step that took `secs`.
    fn observe(&mut self, on_fewer: bool, probe: bool, secs: f64) {
        let settled = self.wait == 0;
        self.wait = self.wait.saturating_sub(1);
        if on_fewer {
            self.last_fewer = secs;
        } else {
            self.last_full = secs;
            if settled {
                self.best_full = self.best_full.min(secs);
            }
            self.slow = if secs > SLOW * self.best_full { self.slow + 1 } else { 0 };
        }
        if probe {
            // The probed pool against the last step of the other one.
            self.use_fewer = self.last_fewer < self.last_full;
            self.slow = 0;
            // A lost opening probe leaves the usual watch for a slowdown free to act at once.
            self.wait = if self.opening && !self.use_fewer { 0 } else { PROBE_EVERY };
            self.opening = false;
        }
    }

    /// The threads of the pool that ran the last step.
    pub fn last_threads(&self) -> usize {
        self.last_threads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed the pacer step times from `secs(step, on_fewer)`; returns the pool of each step.
    fn drive(steps: usize, secs: impl Fn(usize, bool) -> f64) -> Vec<bool> {
        let mut p = Pacer {
            fewer: None,
            use_fewer: false,
            best_full: f64::INFINITY,
            last_full: f64::INFINITY,
            last_fewer: f64::INFINITY,
            slow: 0,
            wait: 1,
            last_threads: 2,
            opening: true,
        };
        (0..steps)
            .map(|i| {
                let (on_fewer, probe) = p.choose();
                p.observe(on_fewer, probe, secs(i, on_fewer));
                on_fewer
            })
            .collect()
    }

    #[test]
    fn an_idle_machine_tries_the_smaller_pool_once_at_the_start_only() {
        // A slow first step (page faults) and noise up to 25% do not count as slow.
        let pools = drive(300, |i, fewer| match (i, fewer) {
            (_, true) => 2.0,
            (0, _) => 5.0,
            _ => 1.0 + (i % 4) as f64 * 0.08,
        });
        assert_eq!(pools.iter().filter(|&&f| f).count(), 1, "{pools:?}");
        assert!(pools[2], "the opening probe comes right after the first settled step");
    }

    #[test]
    fn a_core_busy_from_the_start_moves_steps_to_the_smaller_pool_at_once() {
        // Every full-pool step is slow from the first: no slowdown against the fastest shows.
        let pools = drive(100, |_, fewer| if fewer { 1.2 } else { 1.6 });
        assert!(pools[2..50].iter().filter(|&&f| f).count() >= 47, "{pools:?}");
    }

    #[test]
    fn a_busy_core_moves_steps_to_the_smaller_pool_and_back_when_it_frees() {
        // Steps 20..200: the full pool slows to 1.6, the smaller pool runs at 1.2.
        let busy = |i: usize| (20..200).contains(&i);
        let pools = drive(400, |i, fewer| match (busy(i), fewer) {
            (true, true) => 1.2,
            (true, false) => 1.6,
            (false, true) => 2.0,
            (false, false) => 1.0,
        });
        // Three slow steps, then a probe that wins.
        assert!(!pools[22] && pools[23] && pools[24..70].iter().all(|&f| f), "{pools:?}");
        // While busy, one step in PROBE_EVERY tries the full pool and loses.
        let full_while_busy = pools[24..200].iter().filter(|&&f| !f).count();
        assert!((1..=4).contains(&full_while_busy), "{full_while_busy}");
        // Freed at 200: the next probe of the full pool wins, and it stays there.
        let back = (200..400).find(|&i| !pools[i]).unwrap();
        assert!(back <= 200 + PROBE_EVERY as usize && pools[back..].iter().all(|&f| !f), "{back}");
    }

    #[test]
    fn a_probe_that_loses_waits_before_the_next() {
        // The full pool is slow, but the smaller one is slower still: probes stay rare.
        let pools = drive(300, |i, fewer| match (i < 10, fewer) {
            (_, true) => 3.0,
            (true, false) => 1.0,
            (false, false) => 2.0,
        });
        let probes = pools.iter().filter(|&&f| f).count();
        // The opening probe, then one per PROBE_EVERY + SLOW_STEPS steps.
        assert!((2..=7).contains(&probes), "{probes}");
    }
}
