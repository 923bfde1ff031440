//! Data-parallel training: W processes ("ranks") share the `train.grad_accum` micro-batches of
//! every step, in contiguous blocks, and combine their gradients in exactly the single-process
//! order ((g0 + g1) + g2) + ... (docs/numerics.md, "Several processes").
//!
//! This module is the byte-moving layer, kept small and apart from the training step so that
//! another transport can take MPI's place: `Link` sends and receives byte, f32 and f64 buffers
//! between ranks, point to point. MPI (feature `mpi`, rsmpi over OpenMPI) only moves bytes; no
//! MPI reduction ever touches a float, so the summation order is ours, the same for any W.

use crate::error::{Error, Result};

/// Point-to-point messages between the ranks of one job. Every receive names its sender and
/// the exact length it expects.
pub trait Link: Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    fn send_bytes(&self, to: usize, data: &[u8]);
    fn recv_bytes(&self, from: usize) -> Vec<u8>;
    fn send_f32(&self, to: usize, data: &[f32]);
    fn recv_f32(&self, from: usize, buf: &mut [f32]);
    fn send_f64(&self, to: usize, data: &[f64]);
    fn recv_f64(&self, from: usize, buf: &mut [f64]);
    /// The host name this rank runs on.
    fn host(&self) -> String;
    /// End the whole job now with `code` (every rank), after an error on this one: no rank may
    /// wait forever on a peer that has stopped.
    fn abort(&self, code: i32) -> !;
}

/// One process: nothing to send.
pub struct Solo;

impl Link for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn send_bytes(&self, _: usize, _: &[u8]) {
        unreachable!("a single process sends nothing")
    }
    fn recv_bytes(&self, _: usize) -> Vec<u8> {
        unreachable!("a single process receives nothing")
    }
    fn send_f32(&self, _: usize, _: &[f32]) {
        unreachable!("a single process sends nothing")
    }
    fn recv_f32(&self, _: usize, _: &mut [f32]) {
        unreachable!("a single process receives nothing")
    }
    fn send_f64(&self, _: usize, _: &[f64]) {
        unreachable!("a single process sends nothing")
    }
    fn recv_f64(&self, _: usize, _: &mut [f64]) {
        unreachable!("a single process receives nothing")
    }
    fn host(&self) -> String {
        local_host()
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

pub fn local_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The rank and world size a launcher (mpirun, srun) announces in the environment, if any.
pub fn launcher_world() -> Option<(usize, usize)> {
    let get = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
    for (r, s) in [
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
        ("PMI_RANK", "PMI_SIZE"),
        ("PMIX_RANK", "PMIX_SIZE"),
    ] {
        if let (Some(r), Some(s)) = (get(r), get(s)) {
            return Some((r, s));
        }
    }
    None
}

/// How many ranks of this job run on this host, as the launcher says (OpenMPI's local size);
/// 1 when it says nothing.
pub fn ranks_on_host() -> usize {
    ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"]
        .iter()
        .find_map(|k| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok()))
        .unwrap_or(1)
}

#[cfg(feature = "mpi")]
mod mpi_link {
    use super::Link;
    use mpi::point_to_point::{Destination, Source};
    use mpi::topology::Communicator;

    /// rsmpi's world communicator. MPI is initialised once, here, and finalised when this
    /// is dropped (at the end of `main`).
    pub struct Mpi {
        _universe: mpi::environment::Universe,
        world: mpi::topology::SimpleCommunicator,
    }

    impl Mpi {
        /// MPI with `Serialized` threading: the training step (which sends and receives) runs
        /// on a pool thread, never two calls at once.
        pub fn init() -> Option<Mpi> {
            let (universe, _level) = mpi::initialize_with_threading(mpi::Threading::Serialized)?;
            let world = universe.world();
            Some(Mpi { _universe: universe, world })
        }
    }

    // SAFETY: MPI was initialised with MPI_THREAD_SERIALIZED, which allows calls from any
    // thread as long as no two overlap. tinylm calls MPI only from the training step (and
    // the start-up exchange before it), one call at a time.
    unsafe impl Sync for Mpi {}

    impl Link for Mpi {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn send_bytes(&self, to: usize, data: &[u8]) {
            self.world.process_at_rank(to as i32).send(data);
        }
        fn recv_bytes(&self, from: usize) -> Vec<u8> {
            self.world.process_at_rank(from as i32).receive_vec::<u8>().0
        }
        fn send_f32(&self, to: usize, data: &[f32]) {
            self.world.process_at_rank(to as i32).send(data);
        }
        fn recv_f32(&self, from: usize, buf: &mut [f32]) {
            self.world.process_at_rank(from as i32).receive_into(buf);
        }
        fn send_f64(&self, to: usize, data: &[f64]) {
            self.world.process_at_rank(to as i32).send(data);
        }
        fn recv_f64(&self, from: usize, buf: &mut [f64]) {
            self.world.process_at_rank(from as i32).receive_into(buf);
        }
        fn host(&self) -> String {
            mpi::environment::processor_name().unwrap_or_else(|_| super::local_host())
        }
        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
    }
}

/// The link this process trains over: MPI's world when built with `mpi` (a world of 1 without
/// a launcher), else a single process. A binary without `mpi` started as one of several ranks
/// refuses, instead of training W independent copies.
pub fn init() -> Result<Box<dyn Link>> {
    #[cfg(feature = "mpi")]
    {
        if let Some(m) = mpi_link::Mpi::init() {
            return Ok(Box::new(m));
        }
        Err(Error::msg("MPI could not be initialised"))
    }
    #[cfg(not(feature = "mpi"))]
    {
        match launcher_world() {
            Some((rank, size)) if size > 1 => Err(Error::hint(
                format!("this tinylm was built without MPI, but runs as rank {rank} of {size} under a launcher (mpirun)"),
                "build it with `cargo build --release --locked --features mpi`, or run it without mpirun",
            )),
            _ => Ok(Box::new(Solo)),
        }
    }
}

/// The micro-batches of rank `r` of `w`: a contiguous block; the first `accum % w` ranks take
/// one more.
pub fn block(accum: u64, w: usize, r: usize) -> (u64, u64) {
    let (w, r) = (w as u64, r as u64);
    let (base, extra) = (accum / w, accum % w);
    let lo = r * base + r.min(extra);
    (lo, lo + base + (r < extra) as u64)
}

/// Floats per message of the combination: 1 MiB, so the chain pipelines (rank r adds chunk
/// c while rank r-1 sends chunk c+1) at a small per-message overhead.
pub const CHUNK: usize = 1 << 18;

/// Combine the gradients of one step across the ranks, in micro-batch order.
///
/// On entry rank 0 holds in `acc` the left fold of its own block, g_0 + ... (its micro-batches
/// added one by one, as a single process adds them); a later rank holds its block's gradients
/// one by one in `mine`, in order. `head` is [loss sum of this rank's block so far, stop flag]
/// for rank 0, and the later ranks' per-micro losses are in `losses`.
///
/// Pass 1 sends the running sum along the chain 0 -> 1 -> ... -> W-1, chunk by chunk; each
/// rank adds its gradients in order, so the last holds ((g0 + g1) + g2) + .... Pass 2 sends the
/// result W-1 -> 0 -> 1 -> ... -> W-2. Every rank ends with the same `acc`, loss sum and stop
/// flag (any rank's). Cost: about 2 x the gradient bytes per link, as a ring all-reduce.
pub fn combine(link: &dyn Link, acc: &mut [f32], mine: &[Vec<f32>], losses: &[f64], head: &mut [f64; 2]) {
    let (r, w) = (link.rank(), link.size());
    if w == 1 {
        return;
    }
    let last = w - 1;
    // The header: loss sum and stop flag, along the same chain.
    if r > 0 {
        let mut h = [0f64; 2];
        link.recv_f64(r - 1, &mut h);
        let mut loss = h[0];
        for l in losses {
            loss += l;
        }
        *head = [loss, if h[1] != 0.0 || head[1] != 0.0 { 1.0 } else { 0.0 }];
    }
    if r < last {
        link.send_f64(r + 1, head);
    }
    for start in (0..acc.len()).step_by(CHUNK) {
        let end = (start + CHUNK).min(acc.len());
        let chunk = &mut acc[start..end];
        if r > 0 {
            link.recv_f32(r - 1, chunk);
            for g in mine {
                for (a, x) in chunk.iter_mut().zip(&g[start..end]) {
                    *a += *x;
                }
            }
        }
        if r < last {
            link.send_f32(r + 1, chunk);
        }
    }
    // Pass 2: the result to everyone.
    let from = if r == 0 { last } else { r - 1 };
    let to = if r + 1 < last { Some(r + 1) } else { None };
    if r == last {
        link.send_f64(0, head);
    } else {
        link.recv_f64(from, head);
        if let Some(t) = to {
            link.send_f64(t, head);
        }
    }
    for start in (0..acc.len()).step_by(CHUNK) {
        let end = (start + CHUNK).min(acc.len());
        let chunk = &mut acc[start..end];
        if r == last {
            link.send_f32(0, chunk);
        } else {
            link.recv_f32(from, chunk);
            if let Some(t) = to {
                link.send_f32(t, chunk);
            }
        }
    }
}

/// Send the same bytes from rank 0 to every other rank (or receive them there).
pub fn share_bytes(link: &dyn Link, data: Option<&[u8]>) -> Vec<u8> {
    if link.rank() == 0 {
        let d = data.unwrap_or_default();
        for to in 1..link.size() {
            link.send_bytes(to, d);
        }
        d.to_vec()
    } else {
        link.recv_bytes(0)
    }
}

/// Rank 0's floats to every other rank, in chunks.
pub fn share_f32(link: &dyn Link, buf: &mut [f32]) {
    for start in (0..buf.len()).step_by(CHUNK) {
        let end = (start + CHUNK).min(buf.len());
        if link.rank() == 0 {
            for to in 1..link.size() {
                link.send_f32(to, &buf[start..end]);
            }
        } else {
            link.recv_f32(0, &mut buf[start..end]);
        }
    }
}

/// W must not exceed the micro-batches of a step.
pub fn check_world(w: usize, accum: u64) -> Result<()> {
    if w as u64 > accum {
        return Err(Error::hint(
            format!("{w} ranks but train.grad_accum = {accum}: every rank needs at least one micro-batch per step"),
            format!("run with at most {accum} ranks (mpirun -np {accum}), or raise train.grad_accum to {w} or more (which changes the run)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_every_micro_batch_once_in_order() {
        for accum in 1..9u64 {
            for w in 1..=accum as usize {
                let mut next = 0;
                for r in 0..w {
                    let (lo, hi) = block(accum, w, r);
                    assert_eq!(lo, next);
                    assert!(hi > lo, "rank {r} of {w} has no micro-batch at accum {accum}");
                    next = hi;
                }
                assert_eq!(next, accum);
            }
        }
        assert_eq!(block(5, 2, 0), (0, 3));
        assert_eq!(block(5, 2, 1), (3, 5));
    }

    /// A world of threads over channels, to check `combine` gives the single-process sum.
    struct Chan {
        rank: usize,
        size: usize,
        tx: Vec<std::sync::mpsc::Sender<Vec<u8>>>,
        rx: Vec<std::sync::Mutex<std::sync::mpsc::Receiver<Vec<u8>>>>,
    }
    impl Link for Chan {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn send_bytes(&self, to: usize, d: &[u8]) {
            self.tx[to].send(d.to_vec()).unwrap();
        }
        fn recv_bytes(&self, from: usize) -> Vec<u8> {
            self.rx[from].lock().unwrap().recv().unwrap()
        }
        fn send_f32(&self, to: usize, d: &[f32]) {
            self.send_bytes(to, &d.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>());
        }
        fn recv_f32(&self, from: usize, b: &mut [f32]) {
            let v = self.recv_bytes(from);
            assert_eq!(v.len(), b.len() * 4);
            for (x, c) in b.iter_mut().zip(v.chunks_exact(4)) {
                *x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        fn send_f64(&self, to: usize, d: &[f64]) {
            self.send_bytes(to, &d.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>());
        }
        fn recv_f64(&self, from: usize, b: &mut [f64]) {
            let v = self.recv_bytes(from);
            for (x, c) in b.iter_mut().zip(v.chunks_exact(8)) {
                *x = f64::from_le_bytes(c.try_into().unwrap());
            }
        }
        fn host(&self) -> String {
            "test".into()
        }
        fn abort(&self, code: i32) -> ! {
            panic!("abort {code}")
        }
    }

    #[test]
    fn combine_gives_the_single_process_bits_for_any_world() {
        let accum = 7u64;
        let n = CHUNK + 1000; // two chunks, the second partial
        let grad = |m: u64| -> Vec<f32> {
            (0..n)
                .map(|i| (i as f32 * 0.37 + m as f32 * 1.91).sin() * 10f32.powi((i % 7) as i32 - 3))
                .collect()
        };
        let loss = |m: u64| 1.0 / (m as f64 + 3.0);
        let mut want = grad(0);
        let mut want_loss = 0f64;
        for m in 0..accum {
            if m > 0 {
                for (a, g) in want.iter_mut().zip(grad(m)) {
                    *a += g;
                }
            }
            want_loss += loss(m);
        }
        for w in 1..=4usize {
            // tx[from][to] sends what rx[to][from] receives.
            let mut tx: Vec<Vec<std::sync::mpsc::Sender<Vec<u8>>>> = (0..w).map(|_| Vec::new()).collect();
            let mut rx: Vec<Vec<std::sync::Mutex<std::sync::mpsc::Receiver<Vec<u8>>>>> =
                (0..w).map(|_| Vec::new()).collect();
            for sender in tx.iter_mut() {
                for receiver in rx.iter_mut() {
                    let (t, r) = std::sync::mpsc::channel();
                    sender.push(t);
                    receiver.push(std::sync::Mutex::new(r));
                }
            }
            let links: Vec<Chan> = tx
                .into_iter()
                .zip(rx)
                .enumerate()
                .map(|(r, (tx, rx))| Chan { rank: r, size: w, tx, rx })
                .collect();
            let results: Vec<(Vec<f32>, [f64; 2])> = std::thread::scope(|s| {
                let hs: Vec<_> = links
                    .iter()
                    .map(|l| {
                        s.spawn(move || {
                            let (lo, hi) = block(accum, w, l.rank);
                            let mut acc = vec![0f32; n];
                            let mut mine = Vec::new();
                            let mut losses = Vec::new();
                            let mut head = [0f64, (l.rank == 2) as u8 as f64];
                            for m in lo..hi {
                                if l.rank == 0 {
                                    if m == 0 {
                                        acc = grad(0);
                                    } else {
                                        for (a, g) in acc.iter_mut().zip(grad(m)) {
                                            *a += g;
                                        }
                                    }
                                    head[0] += loss(m);
                                } else {
                                    mine.push(grad(m));
                                    losses.push(loss(m));
                                }
                            }
                            combine(l, &mut acc, &mine, &losses, &mut head);
                            (acc, head)
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (r, (acc, head)) in results.iter().enumerate() {
                assert!(
                    acc.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "W={w} rank {r}: gradient bits differ"
                );
                assert_eq!(head[0].to_bits(), want_loss.to_bits(), "W={w} rank {r}: loss");
                assert_eq!(head[1] != 0.0, w > 2, "W={w} rank {r}: the stop flag of rank 2 reaches everyone");
            }
        }
    }
}
