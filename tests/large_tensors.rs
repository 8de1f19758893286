//! Tensors larger than one storage binding: BatchNorm is cut into chunks
//! (whole rows, runs of channels within a row, or pieces of one channel's
//! plane) whose partial statistics merge as one; the family into runs of
//! whole samples; folding into runs of output channels or weight rows. A device opened with a 1 MiB binding limit makes small tensors
//! "huge", so every cut runs fast; its own binary, with its own device.

use std::sync::OnceLock;

use wgpu_norm::{
    BatchNorm, BatchNormConfig, BatchNormState, Context, Error, GroupNorm, GroupNormConfig, InstanceNorm,
    InstanceNormConfig, InstanceNormState, LayerKind, LayerNorm, LayerNormConfig, Layout, Mode, RmsNorm, RmsNormConfig,
    Tensor,
};
use wgpu_norm_reference::normalized_error;
use wgpu_norm_reference::reference::{
    self, BatchNormArgs, FoldBn, Fused, GroupNormArgs, InstanceNormArgs, LayerNormArgs, RmsNormArgs,
};

const LIMIT: u64 = 1024 * 1024;

fn small_binding_ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        pollster::block_on(async {
            let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
            let adapter = instance
                .request_adapter(&wgpu::RequestAdapterOptions::default())
                .await
                .expect("no wgpu adapter: install mesa-vulkan-drivers (lavapipe)");
            let limits = wgpu::Limits { max_storage_buffer_binding_size: LIMIT, ..wgpu::Limits::default() };
            let (device, queue) = adapter
                .request_device(&wgpu::DeviceDescriptor { required_limits: limits, ..Default::default() })
                .await
                .unwrap();
            Context::from_device(device, queue)
        })
    })
}

fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    let err = normalized_error(got, want);
    assert!(err <= 1e-3, "{what}: normalized error {err:.3e}");
}

fn wave(n: usize, seed: f32, offset: f32) -> Vec<f32> {
    (0..n).map(|i| offset + ((i as f32 * 0.73 + seed) * 1.618).sin() * (1.0 + (i % 7) as f32 * 0.1)).collect()
}

/// |pre-activation| of element i below 1e-4, from the reference's statistics.
fn pre_near_zero(
    f: &reference::BatchNormForward,
    args: &BatchNormArgs,
    x: &[f32],
    z: Option<&[f32]>,
    i: usize,
) -> bool {
    let c = wgpu_norm::ChannelView::of(args.shape, args.layout).channel_of(i);
    let (w, b) = (args.weight.map_or(1.0, |w| w[c]), args.bias.map_or(0.0, |b| b[c]));
    let pre = (f64::from(x[i]) - f.save_mean[c]) * f.save_invstd[c] * f64::from(w)
        + f64::from(b)
        + z.map_or(0.0, |z| f64::from(z[i]));
    pre.abs() < 1e-4
}

fn run(shape: &[usize], layout: Layout) {
    let ctx = small_binding_ctx();
    let c = shape[1];
    let len: usize = shape.iter().product();
    assert!(len as u64 * 4 > LIMIT, "{shape:?} fits one binding: the test would not cut it");
    let (x, z, dy) = (wave(len, 0.3, 2.0), wave(len, 1.1, -0.5), wave(len, 2.9, 0.0));
    let mut state = BatchNormState::initial(c);
    state.weight = wave(c, 0.5, 1.0);
    state.bias = wave(c, 0.9, 0.0);
    let t = |v: &[f32]| Tensor::from_slice(ctx, v, shape, layout).unwrap();
    let (xt, zt) = (t(&x), t(&z));
    let (y, dx, dz) = (t(&vec![0.0; len]), t(&vec![0.0; len]), t(&vec![0.0; len]));
    for (fused, training) in [(Fused::None, true), (Fused::None, false), (Fused::AddRelu, true)] {
        let args = BatchNormArgs {
            weight: Some(&state.weight),
            bias: Some(&state.bias),
            running_mean: Some(&state.running_mean),
            running_var: Some(&state.running_var),
            training,
            fused,
            ..BatchNormArgs::new(shape, layout)
        };
        let zr = (fused == Fused::AddRelu).then_some(&z[..]);
        let f = reference::batch_norm_forward(&args, &x, zr);
        // Behind the ReLU, a value whose pre-activation is within f32 rounding
        // of zero may fall on the other side of the mask than in f64 (a few in
        // a million here); its upstream gradient is zeroed so either side agrees.
        let dy: Vec<f32> = dy
            .iter()
            .enumerate()
            .map(|(i, &g)| {
                if fused != Fused::None && f.y[i].abs() < 1e-4 && pre_near_zero(&f, &args, &x, zr, i) {
                    0.0
                } else {
                    g
                }
            })
            .collect();
        let dyt = t(&dy);
        let bn = BatchNorm::new(ctx, BatchNormConfig::new(c)).unwrap();
        bn.write_state(&state).unwrap();
        let (zv, dzv, mode) = (zt.view(), dz.view(), Mode::from_training(training));
        ctx.run(|e| {
            bn.forward(e, &xt.view(), &y.view(), mode, fused.epilogue(Some(&zv), None).unwrap())?;
            bn.backward(e, &xt.view(), &dyt.view(), &dx.view(), mode, fused.epilogue(Some(&zv), Some(&dzv)).unwrap())
        })
        .unwrap();
        let b = reference::batch_norm_backward(&args, &x, zr, &dy);
        let what = |n: &str| format!("{shape:?} {layout:?} {fused:?} training={training} {n}");
        assert_close(&what("y"), &y.read(ctx).unwrap(), &f.y);
        assert_close(&what("dx"), &dx.read(ctx).unwrap(), &b.dx);
        let (dw, db) = bn.affine().read_grads().unwrap();
        assert_close(&what("dweight"), &dw, &b.dweight);
        assert_close(&what("dbias"), &db, &b.dbias);
        let s = bn.read_state().unwrap();
        assert_close(&what("running_var"), &s.running_var, f.running_var.as_ref().unwrap());
        if let Some(want) = &b.dz {
            assert_close(&what("dz"), &dz.read(ctx).unwrap(), want);
        }
    }
}

#[test]
fn cut_into_whole_rows() {
    run(&[64, 4, 1100], Layout::Nchw); // planar, vec4
    run(&[1200, 4, 7, 9], Layout::Nchw); // interleaved, inner 63 (scalar)
    run(&[9, 8, 64, 64], Layout::Nhwc); // channels-last, vec4 lanes are channels
    run(&[5, 256, 16, 16], Layout::Nhwc); // channels-last rows walked in teams (CPU adapters)
    run(&[1300, 3, 70], Layout::Nhwc); // channels-last, scalar
}

#[test]
fn cut_into_runs_of_channels() {
    // One image's channels exceed the binding: runs of channels.
    run(&[2, 256, 32, 40], Layout::Nchw);
    run(&[3, 700, 401], Layout::Nchw);
}

#[test]
fn cut_single_planes_above_the_limit_into_pieces() {
    // 300,000 values of one channel in one image: no whole plane fits one
    // binding, so each plane is cut into pieces whose partials merge.
    run(&[2, 1, 300_000], Layout::Nchw);
    run(&[2, 3, 270_001], Layout::Nchw); // scalar pieces, planes not a multiple of four
}

#[test]
fn cut_into_runs_of_fewer_than_four_channels() {
    // Planes of 100,000 values: two fit one 1 MiB binding, four do not.
    run(&[1, 6, 100_000], Layout::Nchw);
}

/// A family op above the binding limit, run in parts of whole samples:
/// `run` records forward + backward on the GPU and returns (y, dx, dweight,
/// dbias); `want` gives the same from the reference.
fn family_case(
    what: &str,
    shape: &[usize],
    layout: Layout,
    run: impl FnOnce(&Context, &Tensor, &Tensor, &Tensor, &Tensor) -> (Vec<f32>, Vec<f32>),
    want: impl FnOnce(&[f32], &[f32]) -> [Vec<f64>; 4],
) {
    let ctx = small_binding_ctx();
    let len: usize = shape.iter().product();
    assert!(len as u64 * 4 > LIMIT, "{shape:?} fits one binding: the test would not cut it");
    let (x, dy) = (wave(len, 0.7, 1.5), wave(len, 1.9, 0.0));
    let t = |v: &[f32]| Tensor::from_slice(ctx, v, shape, layout).unwrap();
    let (xt, dyt, y, dx) = (t(&x), t(&dy), t(&vec![0.0; len]), t(&vec![0.0; len]));
    let (dw, db) = run(ctx, &xt, &dyt, &y, &dx);
    let [wy, wdx, wdw, wdb] = want(&x, &dy);
    let what = |n: &str| format!("{what} {shape:?} {layout:?} {n}");
    assert_close(&what("y"), &y.read(ctx).unwrap(), &wy);
    assert_close(&what("dx"), &dx.read(ctx).unwrap(), &wdx);
    assert_close(&what("dweight"), &dw, &wdw);
    assert_close(&what("dbias"), &db, &wdb);
}

#[test]
fn family_cut_into_runs_of_samples_or_groups() {
    // Rows of 120 values take the one-pass forward on CPU adapters, in parts too.
    for (shape, cols) in [(&[700usize, 600][..], 600), (&[3, 11, 9000][..], 9000), (&[3000, 120][..], 120)] {
        let norm = &[cols];
        let (w, b) = (wave(cols, 0.4, 1.0), wave(cols, 0.8, 0.0));
        let args = LayerNormArgs { shape, normalized_shape: norm, weight: Some(&w), bias: Some(&b), eps: 1e-5 };
        family_case(
            "layer_norm",
            shape,
            Layout::Nchw,
            |ctx, x, dy, y, dx| {
                let ln = LayerNorm::new(ctx, LayerNormConfig::new(norm)).unwrap();
                ln.affine().write_weight(&w).unwrap();
                ln.affine().write_bias(&b).unwrap();
                ln.context().run(|e| ln.forward(e, &x.view(), &y.view())).unwrap();
                ln.context().run(|e| ln.backward(e, &x.view(), &dy.view(), &dx.view())).unwrap();
                ln.affine().read_grads().unwrap()
            },
            |x, dy| {
                let (f, g) = (reference::layer_norm_forward(&args, x), reference::layer_norm_backward(&args, x, dy));
                [f.y, g.dx, g.dweight, g.dbias]
            },
        );
        let args = RmsNormArgs { shape, normalized_shape: norm, weight: Some(&w), eps: None };
        family_case(
            "rms_norm",
            shape,
            Layout::Nchw,
            |ctx, x, dy, y, dx| {
                let rn = RmsNorm::new(ctx, RmsNormConfig::new(norm)).unwrap();
                rn.affine().write_weight(&w).unwrap();
                rn.context().run(|e| rn.forward(e, &x.view(), &y.view())).unwrap();
                rn.context().run(|e| rn.backward(e, &x.view(), &dy.view(), &dx.view())).unwrap();
                (rn.affine().read_grads().unwrap().0, Vec::new())
            },
            |x, dy| {
                let (f, g) = (reference::rms_norm_forward(&args, x), reference::rms_norm_backward(&args, x, dy));
                [f.y, g.dx, g.dweight, Vec::new()]
            },
        );
    }
    // Five samples of 60,000 values (about a megabyte and a quarter): runs of
    // whole samples. Two samples of 300,000 values, each above the limit:
    // runs of whole groups of one sample (channels-second only).
    for (shape, layout) in [
        (&[5usize, 6, 100, 100][..], Layout::Nchw),
        (&[5, 6, 100, 100][..], Layout::Nhwc),
        (&[2, 6, 200, 250][..], Layout::Nchw),
    ] {
        let (w, b) = (wave(6, 0.4, 1.0), wave(6, 0.8, 0.0));
        let args = GroupNormArgs { shape, layout, num_groups: 3, weight: Some(&w), bias: Some(&b), eps: 1e-5 };
        family_case(
            "group_norm",
            shape,
            layout,
            |ctx, x, dy, y, dx| {
                let gn = GroupNorm::new(ctx, GroupNormConfig::new(3, 6)).unwrap();
                gn.affine().write_weight(&w).unwrap();
                gn.affine().write_bias(&b).unwrap();
                gn.context().run(|e| gn.forward(e, &x.view(), &y.view())).unwrap();
                gn.context().run(|e| gn.backward(e, &x.view(), &dy.view(), &dx.view())).unwrap();
                gn.affine().read_grads().unwrap()
            },
            |x, dy| {
                let (f, g) = (reference::group_norm_forward(&args, x), reference::group_norm_backward(&args, x, dy));
                [f.y, g.dx, g.dweight, g.dbias]
            },
        );
        // InstanceNorm with running statistics: a training step updates them
        // once from every part's rows, then eval runs on them.
        let state = InstanceNormState {
            weight: w.clone(),
            bias: b.clone(),
            running_mean: wave(6, 0.3, 0.5),
            running_var: wave(6, 0.6, 2.0),
        };
        for training in [true, false] {
            let config = InstanceNormConfig::new(6).affine(true).track_running_stats(true);
            let args = InstanceNormArgs {
                shape,
                layout,
                weight: Some(&w),
                bias: Some(&b),
                running_mean: Some(&state.running_mean),
                running_var: Some(&state.running_var),
                use_input_stats: training,
                momentum: 0.1,
                eps: 1e-5,
            };
            let after = std::cell::RefCell::new(None);
            family_case(
                &format!("instance_norm training={training}"),
                shape,
                layout,
                |ctx, x, dy, y, dx| {
                    let inorm = InstanceNorm::new(ctx, config).unwrap();
                    inorm.write_state(&state).unwrap();
                    inorm.context().run(|e| inorm.forward(e, &x.view(), &y.view(), training)).unwrap();
                    inorm.context().run(|e| inorm.backward(e, &x.view(), &dy.view(), &dx.view(), training)).unwrap();
                    *after.borrow_mut() = Some(inorm.read_state().unwrap());
                    inorm.affine().read_grads().unwrap()
                },
                |x, dy| {
                    let f = reference::instance_norm_forward(&args, x);
                    let g = reference::instance_norm_backward(&args, x, dy);
                    let after = after.borrow_mut().take().unwrap();
                    assert_close("running_mean", &after.running_mean, f.running_mean.as_ref().unwrap());
                    assert_close("running_var", &after.running_var, f.running_var.as_ref().unwrap());
                    [f.y, g.dx, g.dweight, g.dbias]
                },
            );
        }
    }
}

#[test]
fn group_norm_whose_instance_partials_outgrow_a_binding() {
    // 512 KiB of input in one part, but 131,072 (n, c) instances of one
    // value: their partials need more than the 1 MiB binding, so the
    // backward keeps the separate row and column reductions.
    let ctx = small_binding_ctx();
    let (shape, layout) = (&[2048usize, 64, 1][..], Layout::Nchw);
    let len: usize = shape.iter().product();
    let (x, dy) = (wave(len, 0.7, 1.5), wave(len, 1.9, 0.0));
    let (w, b) = (wave(64, 0.4, 1.0), wave(64, 0.8, 0.0));
    let t = |v: &[f32]| Tensor::from_slice(ctx, v, shape, layout).unwrap();
    let (xt, dyt, y, dx) = (t(&x), t(&dy), t(&vec![0.0; len]), t(&vec![0.0; len]));
    let gn = GroupNorm::new(ctx, GroupNormConfig::new(2, 64)).unwrap();
    gn.affine().write_weight(&w).unwrap();
    gn.affine().write_bias(&b).unwrap();
    gn.context().run(|e| gn.forward(e, &xt.view(), &y.view())).unwrap();
    gn.context().run(|e| gn.backward(e, &xt.view(), &dyt.view(), &dx.view())).unwrap();
    let (dw, db) = gn.affine().read_grads().unwrap();
    let args = GroupNormArgs { shape, layout, num_groups: 2, weight: Some(&w), bias: Some(&b), eps: 1e-5 };
    let g = reference::group_norm_backward(&args, &x, &dy);
    assert_close("dx", &dx.read(ctx).unwrap(), &g.dx);
    assert_close("dweight", &dw, &g.dweight);
    assert_close("dbias", &db, &g.dbias);
}

#[test]
fn family_samples_that_cannot_be_cut_are_unsupported() {
    let ctx = small_binding_ctx();
    // A LayerNorm row above the limit: its weight is too, so the layer is
    // refused when made, before it allocates.
    let err = LayerNorm::new(ctx, LayerNormConfig::new(&[300_000])).err().expect("refused");
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    // A channels-last GroupNorm sample above the limit.
    let shape = [2, 6, 200, 250];
    let x = Tensor::from_slice(ctx, &wave(600_000, 0.1, 0.0), &shape, Layout::Nhwc).unwrap();
    let y = Tensor::from_slice(ctx, &vec![-7.0; 600_000], &shape, Layout::Nhwc).unwrap();
    let gn = GroupNorm::new(ctx, GroupNormConfig::new(3, 6)).unwrap();
    let err = gn.context().run(|e| gn.forward(e, &x.view(), &y.view())).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    assert!(y.read(ctx).unwrap().iter().all(|&v| v == -7.0));
}

#[test]
fn folding_cuts_weights_above_the_limit() {
    let ctx = small_binding_ctx();
    // Conv and Linear: runs of output channels; ConvTranspose: whole input rows.
    for (kind, shape) in [
        (LayerKind::Conv, &[40usize, 30, 15, 15][..]),
        (LayerKind::Linear, &[700, 400][..]),
        (LayerKind::ConvTranspose, &[300, 20, 7, 7][..]),
    ] {
        let c = shape[kind.out_axis()];
        let len: usize = shape.iter().product();
        assert!(len as u64 * 4 > LIMIT, "{shape:?} fits one binding");
        let (w, b) = (wave(len, 0.2, 0.0), wave(c, 0.6, 0.1));
        let mut state = BatchNormState::initial(c);
        state.weight = wave(c, 0.5, 1.0);
        state.bias = wave(c, 0.9, 0.0);
        state.running_mean = wave(c, 1.3, 0.2);
        state.running_var = wave(c, 1.7, 1.5);
        let fold_bn = FoldBn {
            running_mean: &state.running_mean,
            running_var: &state.running_var,
            weight: Some(&state.weight),
            bias: Some(&state.bias),
            eps: 1e-5,
        };
        let (want_w, want_b) = reference::fold_batch_norm(&w, Some(&b), shape, kind.out_axis(), fold_bn);
        let bn = BatchNorm::new(ctx, BatchNormConfig::new(c)).unwrap();
        bn.write_state(&state).unwrap();
        let wt = Tensor::from_slice(ctx, &w, shape, Layout::Nchw).unwrap();
        let bt = Tensor::from_slice(ctx, &b, &[c], Layout::Nchw).unwrap();
        let fw = Tensor::zeros(ctx, shape, Layout::Nchw).unwrap();
        let fb = Tensor::zeros(ctx, &[c], Layout::Nchw).unwrap();
        ctx.run(|e| bn.fold_into(e, kind, &wt.view(), Some(&bt.view()), &fw.view(), &fb.view())).unwrap();
        assert_close(&format!("{kind:?} {shape:?} weight"), &fw.read(ctx).unwrap(), &want_w);
        assert_close(&format!("{kind:?} {shape:?} bias"), &fb.read(ctx).unwrap(), &want_b);
    }
}
