//! BatchNorm on the GPU against the f64 reference: random shapes in both
//! layouts and modes, the awkward corners, and the running-statistic rules.

mod common;

use common::{assert_close, ctx, Rng};
use wgpu_norm::reference::{self, BatchNormArgs};
use wgpu_norm::{BatchNorm, BatchNormConfig, BatchNormState, Layout, Tensor};

/// One forward + backward on the GPU and in the reference; compares every output.
fn run_case(name: &str, shape: &[usize], layout: Layout, config: BatchNormConfig, training: bool, rng: &mut Rng) {
    run_case_with(name, shape, layout, config, training, rng, 0.0, 1.0)
}

#[allow(clippy::too_many_arguments)]
fn run_case_with(
    name: &str,
    shape: &[usize],
    layout: Layout,
    config: BatchNormConfig,
    training: bool,
    rng: &mut Rng,
    offset: f32,
    scale: f32,
) {
    let ctx = ctx();
    let c = shape[1];
    let len: usize = shape.iter().product();
    let x = rng.normal_vec(len, offset, scale);
    let dy = rng.normal_vec(len, 0.0, 1.0);
    let mut state = BatchNormState::initial(c);
    state.weight = rng.normal_vec(c, 1.0, 0.5);
    state.bias = rng.normal_vec(c, 0.0, 0.5);
    state.running_mean = rng.normal_vec(c, offset, scale);
    state.running_var = (0..c).map(|_| scale * scale * (0.5 + rng.uniform() as f32)).collect();
    state.num_batches_tracked = rng.range(0, 5) as u64;

    let bn = BatchNorm::new(ctx, config.clone()).unwrap();
    bn.write_state(&state).unwrap();
    let xt = Tensor::from_slice(ctx, &x, shape, layout).unwrap();
    let dyt = Tensor::from_slice(ctx, &dy, shape, layout).unwrap();
    let yt = Tensor::zeros(ctx, shape, layout).unwrap();
    let dxt = Tensor::zeros(ctx, shape, layout).unwrap();
    bn.forward_sync(&xt.view(), &yt.view(), training).unwrap();
    bn.backward_sync(&xt.view(), &dyt.view(), &dxt.view(), training).unwrap();

    let args = BatchNormArgs {
        weight: config.affine.then_some(&state.weight[..]),
        bias: config.affine.then_some(&state.bias[..]),
        running_mean: config.track_running_stats.then_some(&state.running_mean[..]),
        running_var: config.track_running_stats.then_some(&state.running_var[..]),
        training,
        momentum: config.momentum.map(f64::from),
        num_batches_tracked: state.num_batches_tracked,
        eps: f64::from(config.eps),
        ..BatchNormArgs::new(shape, layout)
    };
    let fwd = reference::batch_norm_forward(&args, &x, None);
    let bwd = reference::batch_norm_backward(&args, &x, None, &dy);
    let what = |t: &str| format!("{name} {shape:?} {layout:?} training={training} {t}");
    assert_close(&what("y"), &yt.read(ctx).unwrap(), &fwd.y);
    assert_close(&what("dx"), &dxt.read(ctx).unwrap(), &bwd.dx);
    let (dw, db) = bn.read_grads().unwrap();
    assert_close(&what("dweight"), &dw, &bwd.dweight);
    assert_close(&what("dbias"), &db, &bwd.dbias);
    if args.uses_batch_stats() {
        let (mean, invstd) = bn.read_saved().unwrap();
        assert_close(&what("save_mean"), &mean, &fwd.save_mean);
        assert_close(&what("save_invstd"), &invstd, &fwd.save_invstd);
    }
    let after = bn.read_state().unwrap();
    if let (Some(rm), Some(rv)) = (&fwd.running_mean, &fwd.running_var) {
        assert_close(&what("running_mean"), &after.running_mean, rm);
        assert_close(&what("running_var"), &after.running_var, rv);
    }
    assert_eq!(after.num_batches_tracked, fwd.num_batches_tracked, "{}", what("num_batches_tracked"));
}

#[test]
fn fixed_shapes_both_layouts_both_modes() {
    let mut rng = Rng(1);
    let shapes: &[&[usize]] = &[&[4, 3], &[2, 5, 7], &[3, 4, 5, 6], &[2, 3, 4, 5, 6], &[2, 8, 300], &[1, 2, 1000]];
    for shape in shapes {
        for layout in [Layout::Nchw, Layout::Nhwc] {
            for training in [true, false] {
                run_case("fixed", shape, layout, BatchNormConfig::new(shape[1]), training, &mut rng);
            }
        }
    }
}
