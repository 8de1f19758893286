//! A lost device: every op returns an error promptly, no panic, no hang.
//! Its own binary, so destroying the device touches no other test's context.

use std::time::{Duration, Instant};

use wgpu_norm::{BatchNorm, BatchNormConfig, Context, Epilogue, Error, Layout, Mode, Tensor};

#[test]
fn ops_fail_fast_after_the_device_is_destroyed() {
    let ctx = Context::new().expect("no wgpu adapter: install mesa-vulkan-drivers (lavapipe)");
    let bn = BatchNorm::new(&ctx, BatchNormConfig::new(2)).unwrap();
    let x = Tensor::from_slice(&ctx, &[1.0, 2.0, 3.0, 4.0], &[2, 2], Layout::Nchw).unwrap();
    let y = Tensor::zeros(&ctx, &[2, 2], Layout::Nchw).unwrap();
    bn.context().run(|e| bn.forward(e, &x.view(), &y.view(), Mode::Training, Epilogue::None)).unwrap();

    ctx.device().destroy();
    let start = Instant::now();
    let forward = bn.context().run(|e| bn.forward(e, &x.view(), &y.view(), Mode::Training, Epilogue::None));
    assert!(matches!(forward, Err(Error::DeviceLost(_))), "{forward:?}");
    assert!(matches!(bn.read_state(), Err(Error::DeviceLost(_))));
    assert!(matches!(BatchNorm::new(&ctx, BatchNormConfig::new(2)), Err(Error::DeviceLost(_))));
    assert!(start.elapsed() < Duration::from_secs(10), "errors took {:?}", start.elapsed());
}
