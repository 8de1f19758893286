//! The case-file fuzz target's seed corpus (fuzz/corpus/case_file) as an
//! ordinary test: the same calls as fuzz/fuzz_targets/case_file.rs on every
//! file. Seeds named `ok-*` are reference cases that must parse and compute;
//! `bad-*` ones must be refused with an error; any other file (one the fuzzer
//! added) must merely not panic.

use std::path::{Path, PathBuf};

use wgpu_norm_reference::golden::{reference_outputs, Case};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn the_case_file_corpus_parses_or_is_refused() {
    let files = corpus("case_file");
    assert!(files.len() >= 10, "{} seeds", files.len());
    for file in files {
        let data = std::fs::read(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let outcome = Case::parse(&file, &data).and_then(|case| reference_outputs(&case));
        if name.starts_with("ok-") {
            let outputs = outcome.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!outputs.is_empty(), "{name}: no outputs");
        } else if name.starts_with("bad-") {
            assert!(outcome.is_err(), "{name} was taken");
        }
    }
}

/// `Case::load` takes what `Case::parse` takes, and refuses what is not a
/// regular file before reading it.
#[test]
fn load_reads_what_parse_takes_and_refuses_what_is_not_a_file() {
    for file in corpus("case_file") {
        let parsed = Case::parse(&file, &std::fs::read(&file).unwrap()).is_ok();
        assert_eq!(Case::load(&file).is_ok(), parsed, "{}", file.display());
    }
    assert!(Case::load(&std::env::temp_dir()).is_err(), "a folder");
    if Path::new("/dev/zero").exists() {
        let err = Case::load(Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}
