//! An application's device opened with wgpu's defaults (no optional
//! features; 8 storage buffers per stage, 16 KiB of workgroup memory,
//! 128 MiB bindings) runs every op: all the bundled reference cases pass
//! through `Context::from_device`; f16, which needs SHADER_F16, is refused.
//! Its own binary, with its own device, which runs the reductions as GPUs do
//! (`Reduction::Tree`) where the other binaries on lavapipe run them per
//! invocation, and moves f32 tensors as floats (`Access::Floats`, as GPUs
//! do) where they move them as 64-bit words.

use std::path::PathBuf;
use std::sync::OnceLock;

use wgpu_norm::{
    Access, BatchNorm, BatchNormConfig, Context, Epilogue, Error, GroupNorm, GroupNormConfig, Layout, Mode, Reduction,
    Tensor,
};
use wgpu_norm_reference::check::{check_file, Outcome, DEFAULT_TOLERANCE};
use wgpu_norm_reference::golden::collect_case_files;

fn default_ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        pollster::block_on(async {
            let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
            let adapter = instance
                .request_adapter(&wgpu::RequestAdapterOptions::default())
                .await
                .expect("no wgpu adapter: install mesa-vulkan-drivers (lavapipe)");
            let (device, queue) = adapter
                .request_device(&wgpu::DeviceDescriptor {
                    required_limits: wgpu::Limits::default(),
                    ..Default::default()
                })
                .await
                .unwrap();
            let ctx = Context::from_device(device, queue);
            ctx.set_reduction(Reduction::Tree);
            ctx
        })
    })
}

#[test]
fn every_reference_case_passes_on_a_device_with_default_limits() {
    let ctx = default_ctx();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut passed = 0;
    for path in collect_case_files(&[dir]) {
        let report = check_file(ctx, &path.unwrap(), DEFAULT_TOLERANCE);
        assert!(matches!(report.outcome, Outcome::Pass { .. }), "{}: {:?}", report.name, report.outcome);
        passed += 1;
    }
    assert!(passed >= 28, "only {passed} cases ran");
}

#[test]
fn words_on_a_device_without_shader_int64_are_unsupported() {
    let ctx = default_ctx();
    assert!(!ctx.device().features().contains(wgpu::Features::SHADER_INT64));
    assert_eq!(ctx.access(), Access::Floats);
    let err = ctx.set_access(Access::Words64).unwrap_err();
    assert!(matches!(err, Error::Unsupported(ref m) if m.contains("SHADER_INT64")), "{err}");
    assert_eq!(ctx.access(), Access::Floats);
}

#[test]
fn f16_on_a_device_without_shader_f16_is_unsupported() {
    let ctx = default_ctx();
    assert!(!ctx.device().features().contains(wgpu::Features::SHADER_F16));
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(4)).unwrap();
    let x = Tensor::from_slice_f16(ctx, &[0.5; 32], &[2, 4, 4], Layout::Nchw).unwrap();
    let y = Tensor::from_slice_f16(ctx, &[-7.0; 32], &[2, 4, 4], Layout::Nchw).unwrap();
    let err = bn.context().run(|e| bn.forward(e, &x.view(), &y.view(), Mode::Training, Epilogue::None)).unwrap_err();
    assert!(matches!(err, Error::Unsupported(ref m) if m.contains("SHADER_F16")), "{err}");
    assert!(y.read(ctx).unwrap().iter().all(|&v| v == -7.0));
    let gn = GroupNorm::new(ctx, GroupNormConfig::new(2, 4)).unwrap();
    let err = gn.context().run(|e| gn.forward(e, &x.view(), &y.view())).unwrap_err();
    assert!(matches!(err, Error::Unsupported(ref m) if m.contains("SHADER_F16")), "{err}");
    assert!(y.read(ctx).unwrap().iter().all(|&v| v == -7.0));
}
