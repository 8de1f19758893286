//! Any bytes as a case file: `check`'s reader and the f64 reference behind
//! it return an error or a result, never panic or run away.
#![no_main]

use wgpu_norm_reference::golden::{reference_outputs, Case};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(case) = Case::parse(std::path::Path::new("fuzz.safetensors"), data) {
        let _ = reference_outputs(&case);
    }
});
