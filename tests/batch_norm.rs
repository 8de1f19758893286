//! BatchNorm on the GPU against the f64 reference: random shapes in both
//! layouts and modes, the awkward corners, and the running-statistic rules.

mod common;

use common::{assert_close, ctx, Rng};
use wgpu_norm::{BatchNorm, BatchNormConfig, BatchNormState, Epilogue, Layout, Mode, Tensor};
use wgpu_norm_reference::reference::{self, BatchNormArgs};

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
    bn.context().run(|e| bn.forward(e, &xt.view(), &yt.view(), Mode::from_training(training), Epilogue::None)).unwrap();
    bn.context()
        .run(|e| bn.backward(e, &xt.view(), &dyt.view(), &dxt.view(), Mode::from_training(training), Epilogue::None))
        .unwrap();

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
    let (dw, db) = bn.affine().read_grads().unwrap();
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

#[test]
fn random_shapes_layouts_and_configs() {
    // Seeds are fixed so a failure names its reproduction: `Rng(seed)`.
    for seed in 0..24u64 {
        let mut rng = Rng(1000 + seed);
        let rank = rng.range(2, 5);
        let mut shape: Vec<usize> = (0..rank).map(|_| rng.range(1, 9)).collect();
        if rng.uniform() < 0.3 {
            shape[1] = 1;
        }
        if rank > 2 && rng.uniform() < 0.3 {
            shape[rank - 1] = rng.range(200, 700);
        }
        if shape.iter().product::<usize>() / shape[1] < 2 {
            shape[0] = 2;
        }
        let layout = if rng.uniform() < 0.5 { Layout::Nchw } else { Layout::Nhwc };
        let config = BatchNormConfig::new(shape[1])
            .eps(if rng.uniform() < 0.5 { 1e-5 } else { 1e-3 })
            .momentum(if rng.uniform() < 0.3 { None } else { Some(rng.uniform() as f32) })
            .affine(rng.uniform() < 0.7)
            .track_running_stats(rng.uniform() < 0.8);
        let (offset, scale) = match seed % 4 {
            0 => (1000.0, 1.0),
            1 => (0.0, 1e-3),
            _ => (0.5, 2.0),
        };
        let training = seed % 3 != 0;
        run_case_with(&format!("seed {seed}"), &shape, layout, config, training, &mut rng, offset, scale);
    }
}

#[test]
fn corners_one_channel_one_spatial_two_values() {
    let mut rng = Rng(7);
    let cases: &[&[usize]] = &[&[2, 1], &[2, 5, 1, 1], &[1, 3, 2], &[2, 1, 1, 1, 1], &[1, 1, 2], &[3, 7, 1]];
    for shape in cases {
        for layout in [Layout::Nchw, Layout::Nhwc] {
            run_case("corner", shape, layout, BatchNormConfig::new(shape[1]), true, &mut rng);
        }
    }
}

#[test]
fn a_channel_with_millions_of_values() {
    let mut rng = Rng(11);
    // 4 Mi values in one channel, both tilings (planar and channels-last).
    run_case_with("big channel", &[4, 1, 1024, 1024], Layout::Nchw, BatchNormConfig::new(1), true, &mut rng, 3.0, 2.0);
    run_case_with("big channel", &[4, 2, 512, 512], Layout::Nhwc, BatchNormConfig::new(2), true, &mut rng, -1.0, 0.5);
}

#[test]
fn more_elements_than_one_dispatch_dimension_reaches() {
    // 2^24 elements: 65,536 workgroups of 256 for one value each.
    let mut rng = Rng(12);
    run_case("wide", &[16, 16, 256, 256], Layout::Nchw, BatchNormConfig::new(16), true, &mut rng);
}

#[test]
fn more_channels_than_one_dispatch_of_per_channel_kernels_reaches() {
    // 64 * 65,535 + 5 channels: the per-channel kernels loop grid-stride.
    let mut rng = Rng(14);
    let c = 64 * 65535 + 5;
    for training in [true, false] {
        run_case("many channels", &[2, c], Layout::Nchw, BatchNormConfig::new(c), training, &mut rng);
    }
}

#[test]
fn ops_recorded_into_one_encoder_keep_their_own_parameters() {
    // Two layers with different eps and inputs recorded before one submit.
    let ctx = ctx();
    let mut rng = Rng(5);
    let shape = [4usize, 3, 5];
    let x1 = rng.normal_vec(60, 0.0, 1.0);
    let x2 = rng.normal_vec(60, 10.0, 3.0);
    let a = BatchNorm::new(ctx, BatchNormConfig::new(3).eps(1e-1)).unwrap();
    let b = BatchNorm::new(ctx, BatchNormConfig::new(3).eps(1e-5)).unwrap();
    let (t1, t2) = (
        Tensor::from_slice(ctx, &x1, &shape, Layout::Nchw).unwrap(),
        Tensor::from_slice(ctx, &x2, &shape, Layout::Nchw).unwrap(),
    );
    let (y1, y2) =
        (Tensor::zeros(ctx, &shape, Layout::Nchw).unwrap(), Tensor::zeros(ctx, &shape, Layout::Nchw).unwrap());
    ctx.run(|e| {
        a.forward(e, &t1.view(), &y1.view(), Mode::Training, Epilogue::None)?;
        b.forward(e, &t2.view(), &y2.view(), Mode::Training, Epilogue::None)
    })
    .unwrap();
    let want1 = reference::batch_norm_forward(
        &BatchNormArgs { eps: 1e-1, ..BatchNormArgs::new(&shape, Layout::Nchw) },
        &x1,
        None,
    );
    let want2 = reference::batch_norm_forward(&BatchNormArgs::new(&shape, Layout::Nchw), &x2, None);
    assert_close("first", &y1.read(ctx).unwrap(), &want1.y);
    assert_close("second", &y2.read(ctx).unwrap(), &want2.y);
}

#[test]
fn running_statistics_follow_pytorch_over_several_steps_then_eval() {
    let ctx = ctx();
    let mut rng = Rng(9);
    let shape = [6usize, 4, 3, 3];
    for momentum in [Some(0.1f32), None] {
        let bn = BatchNorm::new(ctx, BatchNormConfig::new(4).momentum(momentum)).unwrap();
        let mut state = BatchNormState::initial(4);
        let y = Tensor::zeros(ctx, &shape, Layout::Nhwc).unwrap();
        for _ in 0..3 {
            let x = rng.normal_vec(216, 4.0, 2.0);
            let xt = Tensor::from_slice(ctx, &x, &shape, Layout::Nhwc).unwrap();
            bn.context().run(|e| bn.forward(e, &xt.view(), &y.view(), Mode::Training, Epilogue::None)).unwrap();
            let args = BatchNormArgs {
                weight: Some(&state.weight),
                bias: Some(&state.bias),
                running_mean: Some(&state.running_mean),
                running_var: Some(&state.running_var),
                momentum: momentum.map(f64::from),
                num_batches_tracked: state.num_batches_tracked,
                ..BatchNormArgs::new(&shape, Layout::Nhwc)
            };
            let f = reference::batch_norm_forward(&args, &x, None);
            state.running_mean = f.running_mean.unwrap().iter().map(|&v| v as f32).collect();
            state.running_var = f.running_var.unwrap().iter().map(|&v| v as f32).collect();
            state.num_batches_tracked = f.num_batches_tracked;
        }
        let got = bn.read_state().unwrap();
        assert_eq!(got.num_batches_tracked, 3);
        let as64 = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
        assert_close("running_mean", &got.running_mean, &as64(&state.running_mean));
        assert_close("running_var", &got.running_var, &as64(&state.running_var));
        // Eval now normalizes with those running statistics.
        let x = rng.normal_vec(216, 4.0, 2.0);
        let xt = Tensor::from_slice(ctx, &x, &shape, Layout::Nhwc).unwrap();
        bn.context().run(|e| bn.forward(e, &xt.view(), &y.view(), Mode::Eval, Epilogue::None)).unwrap();
        let args = BatchNormArgs {
            running_mean: Some(&state.running_mean),
            running_var: Some(&state.running_var),
            training: false,
            ..BatchNormArgs::new(&shape, Layout::Nhwc)
        };
        assert_close("eval y", &y.read(ctx).unwrap(), &reference::batch_norm_forward(&args, &x, None).y);
    }
}

#[test]
fn wide_channels_last_rows_walked_in_teams() {
    // Channels-last rows of 256 bytes and more with channels a multiple of
    // 32: CPU adapters walk them whole, eight invocations a row
    // (src/row_teams.rs), and reduce them so too at two columns a lane.
    // 64, 128, 256, 288 and 512 channels (2, 4, 8, 9 and 16 columns a
    // lane); rows that leave the last team short, or its last step of
    // four; rank 2 and 4.
    let mut rng = Rng(23);
    let shapes: &[&[usize]] =
        &[&[37, 512], &[3, 256, 5, 7], &[2, 288, 3, 1], &[700, 256], &[3, 64, 5, 9], &[9, 128], &[1200, 64]];
    for shape in shapes {
        for training in [true, false] {
            run_case("teams", shape, Layout::Nhwc, BatchNormConfig::new(shape[1]), training, &mut rng);
        }
    }
}

#[test]
fn views_at_offsets_inside_larger_buffers() {
    // An application's arena: x and y at unaligned (but 4-byte) offsets.
    let ctx = ctx();
    let mut rng = Rng(21);
    let shape = [3usize, 2, 5];
    let x = rng.normal_vec(30, 1.0, 1.0);
    let mut arena = vec![0.0f32; 7];
    arena.extend_from_slice(&x);
    let xb = ctx.upload("arena", &arena).unwrap();
    let yb = ctx.zeros("out arena", 4 * 100).unwrap();
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(2)).unwrap();
    let xv = wgpu_norm::TensorView::new(&xb, &shape).at_offset(28);
    let yv = wgpu_norm::TensorView::new(&yb, &shape).at_offset(4 * 67);
    bn.context().run(|e| bn.forward(e, &xv, &yv, Mode::Training, Epilogue::None)).unwrap();
    let all: Vec<f32> = ctx.read(&yb, 0, 100).unwrap();
    let want = reference::batch_norm_forward(&BatchNormArgs::new(&shape, Layout::Nchw), &x, None);
    assert_close("offset y", &all[67..97], &want.y);
    assert!(all[..67].iter().chain(&all[97..]).all(|&v| v == 0.0), "wrote outside the view");

    // Views at vec4 offsets over rows walked in teams (256 channels).
    let shape = [5usize, 256];
    let x = rng.normal_vec(1280, -2.0, 3.0);
    let mut arena = vec![0.0f32; 8];
    arena.extend_from_slice(&x);
    let xb = ctx.upload("arena", &arena).unwrap();
    let yb = ctx.zeros("out arena", 4 * 1300).unwrap();
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(256)).unwrap();
    let xv = wgpu_norm::TensorView::new(&xb, &shape).at_offset(4 * 8);
    let yv = wgpu_norm::TensorView::new(&yb, &shape).at_offset(4 * 12);
    bn.context().run(|e| bn.forward(e, &xv, &yv, Mode::Training, Epilogue::None)).unwrap();
    let all: Vec<f32> = ctx.read(&yb, 0, 1300).unwrap();
    let want = reference::batch_norm_forward(&BatchNormArgs::new(&shape, Layout::Nchw), &x, None);
    assert_close("offset teams y", &all[12..1292], &want.y);
    assert!(all[..12].iter().chain(&all[1292..]).all(|&v| v == 0.0), "wrote outside the view");
}
