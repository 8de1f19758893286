//! Every golden case through the GPU ops, as `wgpu-norm check` runs them.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;

use common::{ctx, TOLERANCE};
use wgpu_norm_reference::check::{check_file, Outcome};
use wgpu_norm_reference::golden::collect_case_files;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/golden")
}

#[test]
fn every_golden_case_passes_on_the_gpu() {
    let mut checked = 0;
    for path in collect_case_files(&[golden_dir()]) {
        let path = path.unwrap();
        let report = check_file(ctx(), &path, TOLERANCE);
        match &report.outcome {
            Outcome::Pass { .. } => {
                // Every pass compared the main output and, for cases with dy, the gradients.
                let main = if report.op == "fold_batch_norm" { "folded_weight" } else { "y" };
                assert!(report.errors.contains_key(main), "{}: {main} not compared", report.name);
                let case = wgpu_norm_reference::golden::Case::load(&path).unwrap();
                for grad in ["dx", "dweight", "dbias", "dz"] {
                    if case.expected(grad).is_some() {
                        assert!(report.errors.contains_key(grad), "{}: {grad} not compared", report.name);
                    }
                }
                checked += 1;
            }
            Outcome::Skipped { reason } => panic!("{}: skipped: {reason}", report.name),
            Outcome::Fail { tensor, error, message } => {
                panic!("{}: {tensor} error {error:.3e} {message:?} (all: {:?})", report.name, report.errors)
            }
        }
    }
    assert!(checked >= 28, "only {checked} golden cases passed");
}
