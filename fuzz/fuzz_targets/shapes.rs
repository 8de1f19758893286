//! Any text as `bench --shapes`: parsed or refused, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = wgpu_norm_cli::bench::parse_shapes(text);
    }
});
