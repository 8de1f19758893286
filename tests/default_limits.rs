//! An application's device opened with wgpu's default limits (8 storage
//! buffers per stage, 16 KiB of workgroup memory, 128 MiB bindings) runs
//! every op: all the bundled reference cases pass through
//! `Context::from_device`. Its own binary, with its own device.

use std::path::PathBuf;

use wgpu_norm::check::{check_file, Outcome, DEFAULT_TOLERANCE};
use wgpu_norm::golden::collect_case_files;
use wgpu_norm::Context;

#[test]
fn every_reference_case_passes_on_a_device_with_default_limits() {
    let ctx = pollster::block_on(async {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions::default())
            .await
            .expect("no wgpu adapter: install mesa-vulkan-drivers (lavapipe)");
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor { required_limits: wgpu::Limits::default(), ..Default::default() })
            .await
            .unwrap();
        Context::from_device(device, queue)
    });
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut passed = 0;
    for path in collect_case_files(&[dir]) {
        let report = check_file(&ctx, &path.unwrap(), DEFAULT_TOLERANCE);
        assert!(matches!(report.outcome, Outcome::Pass { .. }), "{}: {:?}", report.name, report.outcome);
        passed += 1;
    }
    assert!(passed >= 28, "only {passed} cases ran");
}
