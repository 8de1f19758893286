//! Every golden case through the GPU ops, as `wgpu-norm check` runs them.

mod common;

use std::path::PathBuf;

use common::{ctx, TOLERANCE};
use wgpu_norm::check::{check_file, Outcome};
use wgpu_norm::golden::collect_case_files;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn every_plain_batch_norm_case_passes_on_the_gpu() {
    let mut checked = 0;
    for path in collect_case_files(&[golden_dir()]) {
        let path = path.unwrap();
        let report = check_file(ctx(), &path, TOLERANCE);
        if report.op != "batch_norm" {
            continue;
        }
        match &report.outcome {
            Outcome::Pass { .. } => {
                // Every pass compared y and, for cases with dy, the gradients.
                assert!(report.errors.contains_key("y"), "{}: y not compared", report.name);
                checked += 1;
            }
            Outcome::Skipped { reason } => assert!(reason.contains("fused"), "{}: skipped: {reason}", report.name),
            Outcome::Fail { tensor, error, message } => {
                panic!("{}: {tensor} error {error:.3e} {message:?} (all: {:?})", report.name, report.errors)
            }
        }
    }
    assert!(checked >= 12, "only {checked} batch_norm cases passed");
}
