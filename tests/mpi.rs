//! SyncBatchNorm across MPI processes: runs `examples/sync_batch_norm` under
//! `mpirun -np 2` and `-np 3` (Open MPI, one machine) with even, uneven and
//! empty slices in both layouts. Each run compares every rank's y, dx,
//! dweight, dbias and running statistics with one device over the whole
//! batch and prints the largest difference, which must be at most 1e-5.
//! Needs `--features mpi` (scripts/test passes it and installs Open MPI).
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

const TOLERANCE: f64 = 1e-5;
/// A wedged collective fails the test instead of hanging CI.
const TIMEOUT: Duration = Duration::from_secs(180);

/// The example binary cargo built beside this test (target/<profile>/examples).
/// `cargo test` builds examples, `cargo test --test mpi` does not: a binary
/// older than the sources fails the test rather than testing old code.
fn example() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
    let path = profile_dir.join("examples").join("sync_batch_norm");
    let built = std::fs::metadata(&path).and_then(|m| m.modified());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = ["src", "shaders", "examples/sync_batch_norm.rs", "Cargo.toml"].map(|p| newest(&root.join(p)));
    let fresh = built.as_ref().is_ok_and(|built| sources.iter().all(|s| s <= built));
    assert!(
        fresh,
        "{} is missing or older than the sources: run the whole `cargo test --release --features mpi`, \
         or `cargo build --release --features mpi --example sync_batch_norm` first",
        path.display()
    );
    path
}

/// The latest modification time under `path`.
fn newest(path: &Path) -> SystemTime {
    let meta = std::fs::metadata(path).expect("source path");
    let mut latest = meta.modified().expect("mtime");
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).expect("source dir").flatten() {
            latest = latest.max(newest(&entry.path()));
        }
    }
    latest
}

/// Runs the example on `ranks` processes and returns rank 0's reported
/// difference. One job at a time: the machine has two cores.
fn mpirun(ranks: usize, args: &[&str]) -> f64 {
    static ONE_JOB: Mutex<()> = Mutex::new(());
    let _job = ONE_JOB.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = Command::new("mpirun")
        .args(["-np", &ranks.to_string()])
        .arg(example())
        .args(args)
        // Open MPI refuses root (CI containers) and more ranks than cores
        // (CI has 2) unless told otherwise.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun not found: install openmpi-bin");
    let start = Instant::now();
    while child.try_wait().expect("waiting for mpirun").is_none() {
        if start.elapsed() > TIMEOUT {
            child.kill().ok();
            panic!("mpirun -np {ranks} {args:?} ran past {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("mpirun output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mpirun -np {ranks} {args:?} failed ({}):\n{stdout}\n{stderr}", out.status);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("max difference vs single device: "))
        .unwrap_or_else(|| panic!("no difference line in:\n{stdout}\n{stderr}"));
    line.trim().parse().unwrap_or_else(|e| panic!("{line}: {e}"))
}

fn check(ranks: usize, args: &[&str]) {
    let diff = mpirun(ranks, args);
    assert!(diff <= TOLERANCE, "mpirun -np {ranks} {args:?}: difference {diff:e} > {TOLERANCE:e}");
}

#[test]
fn two_ranks_match_one_device() {
    check(2, &[]);
    check(2, &["--shape", "9,5,7", "--sizes", "7,2", "--layout", "nhwc"]);
    check(2, &["--shape", "6,12", "--sizes", "0,6"]);
}

#[test]
fn three_ranks_match_one_device() {
    check(3, &[]);
    check(3, &["--sizes", "5,0,3"]);
    check(3, &["--shape", "5,8,3,4,2", "--sizes", "1,3,1", "--layout", "nhwc"]);
}
