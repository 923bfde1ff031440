//! Thread pools. candle's element-wise pool spin-waits: on 2 cores with one core busy elsewhere,
//! an unpinned pool ran 2.9x slower (scripts/bench.sh). So tinylm pins that pool to one thread
//! (`CANDLE_NUM_THREADS=1`) and gives the matmul pool (rayon's, sized by `RAYON_NUM_THREADS`) the
//! configured count. This must run before candle first reads either variable, so `main` calls it
//! before any tensor work.
//! The count never reaches the weights: tinylm's kernels split work over output rows only
//! (docs/numerics.md).

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
