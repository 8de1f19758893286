//! Long runs: ten thousand forward + backward calls leave the number of live
//! GPU buffers, bind groups and pipelines where the first hundred left it.
//! Its own binary, so no other test's objects move the counters.

use wgpu_norm::{BatchNorm, BatchNormConfig, Context, Epilogue, Layout, Mode, Tensor};

#[derive(Debug, PartialEq)]
struct Live {
    buffers: isize,
    bind_groups: isize,
    compute_pipelines: isize,
}

fn live(ctx: &Context) -> Live {
    // Let wgpu free what finished submissions released.
    ctx.wait(None).unwrap();
    let c = ctx.device().get_internal_counters();
    Live {
        buffers: c.hal.buffers.read(),
        bind_groups: c.hal.bind_groups.read(),
        compute_pipelines: c.hal.compute_pipelines.read(),
    }
}

#[test]
fn ten_thousand_steps_do_not_grow_live_gpu_objects() {
    let ctx = Context::new().expect("no wgpu adapter: install mesa-vulkan-drivers (lavapipe)");
    let shape = [4, 3, 5];
    let x: Vec<f32> = (0..60).map(|i| (i as f32 * 0.37).sin()).collect();
    let (xt, dy) = (
        Tensor::from_slice(&ctx, &x, &shape, Layout::Nhwc).unwrap(),
        Tensor::from_slice(&ctx, &vec![0.5; 60], &shape, Layout::Nhwc).unwrap(),
    );
    let (y, dx) =
        (Tensor::zeros(&ctx, &shape, Layout::Nhwc).unwrap(), Tensor::zeros(&ctx, &shape, Layout::Nhwc).unwrap());
    let bn = BatchNorm::new(&ctx, BatchNormConfig::new(3)).unwrap();
    let step_batch = |steps: usize| {
        ctx.run(|e| {
            for _ in 0..steps {
                bn.forward(e, &xt.view(), &y.view(), Mode::Training, Epilogue::None)?;
                bn.backward(e, &xt.view(), &dy.view(), &dx.view(), Mode::Training, Epilogue::None)?;
            }
            Ok(())
        })
        .unwrap()
    };
    // Warm up: pipelines compile, scratch buffers reach their size.
    step_batch(100);
    let before = live(&ctx);
    assert!(before.buffers > 0, "the counters are not counting: {before:?}");
    for _ in 0..99 {
        step_batch(100);
    }
    let after = live(&ctx);
    assert_eq!(after, before, "live GPU objects grew over 9,900 more steps");
    assert_eq!(bn.read_state().unwrap().num_batches_tracked, 10_000);
}
