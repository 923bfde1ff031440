//! Time `dist::combine` alone (no training): the ordered chain that adds the ranks' gradients,
//! on N floats, under mpirun. Rank 0 prints the median seconds per call and the bytes each
//! rank sent.
//!
//!   cargo build --release --features mpi --example combinebench
//!   mpirun --allow-run-as-root --oversubscribe -np 2 target/release/examples/combinebench 4000000
use tinylm::dist;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(4_000_000);
    let reps = 15;
    let link = dist::init().expect("MPI");
    let (r, w) = (link.rank(), link.size());
    let mut acc = vec![0.5f32; n];
    let mine = if r > 0 { vec![vec![0.25f32; n]] } else { Vec::new() };
    let losses = if r > 0 { vec![1.0] } else { Vec::new() };
    let mut times = Vec::new();
    for _ in 0..reps {
        let mut head = [0.0, 0.0];
        let t = std::time::Instant::now();
        dist::combine(&*link, &mut acc, &mine, &losses, &mut head);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    if r == 0 {
        let med = times[reps / 2];
        let bytes = 4.0 * n as f64;
        println!(
            "W={w} floats={n} median {:.4} s per combine ({:.2} GB/s of gradient; each link carries it twice)",
            med,
            bytes / med / 1e9
        );
    }
}
