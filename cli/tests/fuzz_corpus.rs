//! The shape-parser fuzz target's seed corpus (fuzz/corpus/shapes) as an
//! ordinary test: seeds named `ok-*` parse, `bad-*` are refused, any other
//! (one the fuzzer added) merely does not panic.

use std::path::Path;

use wgpu_norm_cli::bench::parse_shapes;

#[test]
fn the_shapes_corpus_parses_or_is_refused() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/shapes");
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Ok(text) = String::from_utf8(std::fs::read(&path).unwrap()) else { continue };
        let parsed = parse_shapes(&text);
        if name.starts_with("ok-") {
            assert!(parsed.is_ok(), "{name}: {parsed:?}");
        } else if name.starts_with("bad-") {
            assert!(parsed.is_err(), "{name} was taken: {parsed:?}");
        }
        seeds += 1;
    }
    assert!(seeds >= 8, "{seeds} seeds");
}
