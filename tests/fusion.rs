//! Fused BN+ReLU and BN+Add+ReLU (forward and backward, both modes and
//! layouts) and folding into Conv / ConvTranspose / Linear, against the f64
//! reference; and their errors.

mod common;

use common::{assert_close, ctx, Rng};
use wgpu_norm::{
    fold_host, BatchNorm, BatchNormConfig, BatchNormState, Epilogue, Error, LayerKind, Layout, Mode, Tensor,
};
use wgpu_norm_reference::reference::{self, BatchNormArgs, FoldBn, Fused};

fn fused_case(shape: &[usize], layout: Layout, fused: Fused, training: bool, rng: &mut Rng) {
    let ctx = ctx();
    let c = shape[1];
    let len: usize = shape.iter().product();
    let x = rng.normal_vec(len, 0.3, 1.5);
    let z = rng.normal_vec(len, -0.2, 1.0);
    let dy = rng.normal_vec(len, 0.0, 1.0);
    let mut state = BatchNormState::initial(c);
    state.weight = rng.normal_vec(c, 1.0, 0.4);
    state.bias = rng.normal_vec(c, 0.1, 0.4);
    state.running_mean = rng.normal_vec(c, 0.2, 0.5);
    state.running_var = (0..c).map(|_| 0.5 + rng.uniform() as f32).collect();
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(c)).unwrap();
    bn.write_state(&state).unwrap();
    let t = |v: &[f32]| Tensor::from_slice(ctx, v, shape, layout).unwrap();
    let (xt, zt, dyt) = (t(&x), t(&z), t(&dy));
    let (yt, dxt, dzt) = (t(&vec![0.0; len]), t(&vec![0.0; len]), t(&vec![0.0; len]));
    let (zv, dzv, mode) = (zt.view(), dzt.view(), Mode::from_training(training));
    ctx.run(|e| {
        bn.forward(e, &xt.view(), &yt.view(), mode, fused.epilogue(Some(&zv), None).unwrap())?;
        bn.backward(e, &xt.view(), &dyt.view(), &dxt.view(), mode, fused.epilogue(Some(&zv), Some(&dzv)).unwrap())
    })
    .unwrap();
    let args = BatchNormArgs {
        weight: Some(&state.weight),
        bias: Some(&state.bias),
        running_mean: Some(&state.running_mean),
        running_var: Some(&state.running_var),
        training,
        fused,
        ..BatchNormArgs::new(shape, layout)
    };
    let zref = (fused == Fused::AddRelu).then_some(&z[..]);
    let f = reference::batch_norm_forward(&args, &x, zref);
    let b = reference::batch_norm_backward(&args, &x, zref, &dy);
    let what = |n: &str| format!("{fused:?} {shape:?} {layout:?} training={training} {n}");
    assert_close(&what("y"), &yt.read(ctx).unwrap(), &f.y);
    assert_close(&what("dx"), &dxt.read(ctx).unwrap(), &b.dx);
    let (dw, db) = bn.affine().read_grads().unwrap();
    assert_close(&what("dweight"), &dw, &b.dweight);
    assert_close(&what("dbias"), &db, &b.dbias);
    if let Some(dz) = &b.dz {
        assert_close(&what("dz"), &dzt.read(ctx).unwrap(), dz);
    }
    // The ReLU really clipped something, so the mask was exercised.
    assert!(f.y.contains(&0.0) && f.y.iter().any(|&v| v > 0.0));
}

#[test]
fn fused_relu_and_add_relu_match_the_reference() {
    let mut rng = Rng(31);
    // [9, 256] and [11, 64] channels-last: rows walked in teams on CPU
    // adapters, [11, 64]'s backward sums behind the ReLU's mask too.
    for shape in [&[4usize, 3, 5, 7][..], &[6, 5], &[2, 4, 300], &[2, 3, 2, 3, 4], &[9, 256], &[11, 64]] {
        for layout in [Layout::Nchw, Layout::Nhwc] {
            for fused in [Fused::Relu, Fused::AddRelu] {
                for training in [true, false] {
                    fused_case(shape, layout, fused, training, &mut rng);
                }
            }
        }
    }
}

#[test]
fn fused_relu_keeps_nan_and_clamps_infinities() {
    // As torch.relu: NaN stays NaN, -inf and negatives become 0, +inf stays.
    // Eval mode with the initial state: y = relu(x / sqrt(1 + eps)).
    let ctx = ctx();
    let default = ctx.access();
    let specials = [f32::NAN, f32::NEG_INFINITY, f32::INFINITY, -2.0, 3.0, -0.0, 0.5, -1e-30];
    for &access in common::accesses() {
        ctx.set_access(access).unwrap();
        // Runs (channels-second) and rows walked in teams (64 channels last).
        for (shape, layout) in [([2, 8, 4, 4], Layout::Nchw), ([4, 64, 1, 2], Layout::Nhwc)] {
            let len: usize = shape.iter().product();
            let x: Vec<f32> = (0..len).map(|i| specials[i % specials.len()]).collect();
            let bn = BatchNorm::new(ctx, BatchNormConfig::new(shape[1])).unwrap();
            let (xt, yt) =
                (Tensor::from_slice(ctx, &x, &shape, layout).unwrap(), Tensor::zeros(ctx, &shape, layout).unwrap());
            ctx.run(|e| bn.forward(e, &xt.view(), &yt.view(), Mode::Eval, Epilogue::Relu)).unwrap();
            let y = yt.read(ctx).unwrap();
            let scale = 1.0 / (1.0f32 + 1e-5).sqrt();
            for (i, (&xi, &yi)) in x.iter().zip(&y).enumerate() {
                // Positives to rounding: the GPU's inverse square root may
                // differ from the host's in the last place (the H200's does).
                let want = xi * scale;
                let ok = if xi.is_nan() {
                    yi.is_nan()
                } else if xi > 0.0 {
                    yi == want || (yi - want).abs() <= 1e-6 * want
                } else {
                    yi == 0.0
                };
                assert!(ok, "{access:?} {layout:?} x[{i}] = {xi}: y = {yi}");
            }
        }
    }
    ctx.set_access(default).unwrap();
}

fn fold_case(kind: LayerKind, shape: &[usize], with_bias: bool, rng: &mut Rng) {
    let ctx = ctx();
    let c = shape[kind.out_axis()];
    let len: usize = shape.iter().product();
    let w = rng.normal_vec(len, 0.0, 0.5);
    let b = rng.normal_vec(c, 0.0, 0.5);
    let mut state = BatchNormState::initial(c);
    state.weight = rng.normal_vec(c, 1.0, 0.3);
    state.bias = rng.normal_vec(c, 0.0, 0.3);
    state.running_mean = rng.normal_vec(c, 0.5, 1.0);
    state.running_var = (0..c).map(|_| 0.2 + rng.uniform() as f32).collect();
    let bias = with_bias.then_some(&b[..]);
    let fold_bn = FoldBn {
        running_mean: &state.running_mean,
        running_var: &state.running_var,
        weight: Some(&state.weight),
        bias: Some(&state.bias),
        eps: 1e-5,
    };
    let (want_w, want_b) = reference::fold_batch_norm(&w, bias, shape, kind.out_axis(), fold_bn);
    // Host path.
    let (hw, hb) = fold_host(kind, &w, shape, bias, &state, 1e-5).unwrap();
    assert_close(&format!("{kind:?} host weight"), &hw, &want_w);
    assert_close(&format!("{kind:?} host bias"), &hb, &want_b);
    // GPU path.
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(c)).unwrap();
    bn.write_state(&state).unwrap();
    let wt = Tensor::from_slice(ctx, &w, shape, Layout::Nchw).unwrap();
    let bt = Tensor::from_slice(ctx, &b, &[c], Layout::Nchw).unwrap();
    let fw = Tensor::zeros(ctx, shape, Layout::Nchw).unwrap();
    let fb = Tensor::zeros(ctx, &[c], Layout::Nchw).unwrap();
    let bias_view = with_bias.then(|| bt.view());
    ctx.run(|e| bn.fold_into(e, kind, &wt.view(), bias_view.as_ref(), &fw.view(), &fb.view())).unwrap();
    assert_close(&format!("{kind:?} {shape:?} gpu weight"), &fw.read(ctx).unwrap(), &want_w);
    assert_close(&format!("{kind:?} {shape:?} gpu bias"), &fb.read(ctx).unwrap(), &want_b);
}

#[test]
fn folding_into_conv_conv_transpose_and_linear() {
    let mut rng = Rng(41);
    for with_bias in [false, true] {
        fold_case(LayerKind::Conv, &[8, 3, 3, 3], with_bias, &mut rng);
        fold_case(LayerKind::Conv, &[5, 2, 7], with_bias, &mut rng);
        fold_case(LayerKind::Conv, &[4, 2, 3, 3, 3], with_bias, &mut rng);
        fold_case(LayerKind::ConvTranspose, &[3, 6, 2, 2], with_bias, &mut rng);
        fold_case(LayerKind::Linear, &[10, 7], with_bias, &mut rng);
    }
}

#[test]
fn folded_conv_equals_conv_then_batch_norm() {
    // A 1x1 convolution is a matmul: compare conv -> eval BN with the folded conv.
    let mut rng = Rng(43);
    let (n, cin, cout, hw) = (2, 3, 4, 5);
    let w = rng.normal_vec(cout * cin, 0.0, 0.5);
    let b = rng.normal_vec(cout, 0.0, 0.5);
    let x = rng.normal_vec(n * cin * hw, 0.0, 1.0);
    let mut state = BatchNormState::initial(cout);
    state.running_mean = rng.normal_vec(cout, 0.3, 0.5);
    state.running_var = (0..cout).map(|_| 0.5 + rng.uniform() as f32).collect();
    state.weight = rng.normal_vec(cout, 1.0, 0.3);
    state.bias = rng.normal_vec(cout, 0.0, 0.3);
    let conv = |w: &[f32], b: &[f32]| -> Vec<f32> {
        let mut y = vec![0.0f32; n * cout * hw];
        for i in 0..n {
            for o in 0..cout {
                for p in 0..hw {
                    let s: f32 = (0..cin).map(|k| w[o * cin + k] * x[(i * cin + k) * hw + p]).sum();
                    y[(i * cout + o) * hw + p] = s + b[o];
                }
            }
        }
        y
    };
    let y = conv(&w, &b);
    let shape = [n, cout, hw];
    let args = BatchNormArgs {
        weight: Some(&state.weight),
        bias: Some(&state.bias),
        running_mean: Some(&state.running_mean),
        running_var: Some(&state.running_var),
        training: false,
        ..BatchNormArgs::new(&shape, Layout::Nchw)
    };
    let unfolded = reference::batch_norm_forward(&args, &y, None).y;
    let (fw, fb) = fold_host(LayerKind::Conv, &w, &[cout, cin, 1], Some(&b), &state, 1e-5).unwrap();
    assert_close("folded conv", &conv(&fw, &fb), &unfolded);
}

#[test]
fn fold_with_mismatched_channels_is_an_error() {
    let ctx = ctx();
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(4)).unwrap();
    let w = Tensor::from_slice(ctx, &[1.0; 30], &[5, 2, 3], Layout::Nchw).unwrap();
    let fw = Tensor::from_slice(ctx, &[-7.0; 30], &[5, 2, 3], Layout::Nchw).unwrap();
    let fb = Tensor::from_slice(ctx, &[-7.0; 5], &[5], Layout::Nchw).unwrap();
    let err = ctx.run(|e| bn.fold_into(e, LayerKind::Conv, &w.view(), None, &fw.view(), &fb.view())).unwrap_err();
    assert!(matches!(err, Error::Shape(_)), "{err}");
    assert!(fw.read(ctx).unwrap().iter().all(|&v| v == -7.0), "folded weight written on error");
    let state = BatchNormState::initial(4);
    let host = fold_host(LayerKind::Conv, &[1.0; 30], &[5, 2, 3], None, &state, 1e-5);
    assert!(matches!(host, Err(Error::Shape(_))));
    let host = fold_host(LayerKind::Linear, &[1.0; 12], &[4, 3], Some(&[0.0; 3]), &state, 1e-5);
    assert!(matches!(host, Err(Error::Shape(_))), "a 3-value layer bias for 4 channels");
}

#[test]
fn fused_errors_write_nothing() {
    let ctx = ctx();
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(3)).unwrap();
    let x = Tensor::from_slice(ctx, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3], Layout::Nchw).unwrap();
    let short_z = Tensor::from_slice(ctx, &[0.0; 3], &[1, 3], Layout::Nchw).unwrap();
    let y = Tensor::from_slice(ctx, &[-7.0; 6], &[2, 3], Layout::Nchw).unwrap();
    let err = ctx
        .run(|e| {
            bn.forward(e, &x.view(), &y.view(), Mode::Training, Epilogue::AddRelu { z: &short_z.view(), dz: None })
        })
        .unwrap_err();
    assert!(matches!(err, Error::Shape(_)), "{err}");
    // y may not share z's buffer either.
    let err = ctx
        .run(|e| bn.forward(e, &x.view(), &y.view(), Mode::Training, Epilogue::AddRelu { z: &y.view(), dz: None }))
        .unwrap_err();
    assert!(matches!(err, Error::Buffer(_)), "{err}");
    assert!(y.read(ctx).unwrap().iter().all(|&v| v == -7.0));
    // dz and dx must be distinct buffers.
    // z may be x itself (both are only read).
    ctx.run(|e| bn.forward(e, &x.view(), &y.view(), Mode::Training, Epilogue::AddRelu { z: &x.view(), dz: None }))
        .unwrap();
    let z = Tensor::from_slice(ctx, &[0.5; 6], &[2, 3], Layout::Nchw).unwrap();
    ctx.run(|e| bn.forward(e, &x.view(), &y.view(), Mode::Training, Epilogue::AddRelu { z: &z.view(), dz: None }))
        .unwrap();
    let dx = Tensor::from_slice(ctx, &[-7.0; 6], &[2, 3], Layout::Nchw).unwrap();
    let err = ctx
        .run(|e| {
            bn.backward(
                e,
                &x.view(),
                &z.view(),
                &dx.view(),
                Mode::Training,
                Epilogue::AddRelu { z: &z.view(), dz: Some(&dx.view()) },
            )
        })
        .unwrap_err();
    assert!(matches!(err, Error::Buffer(_)), "{err}");
    assert!(dx.read(ctx).unwrap().iter().all(|&v| v == -7.0));
}

/// One forward and one backward take the epilogue: dz belongs to the
/// backward alone, and the add-ReLU backward needs it. Both refusals come
/// before anything is recorded.
#[test]
fn the_epilogue_says_where_dz_goes() {
    let ctx = ctx();
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(3)).unwrap();
    let x = Tensor::from_slice(ctx, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3], Layout::Nchw).unwrap();
    let z = Tensor::from_slice(ctx, &[0.5; 6], &[2, 3], Layout::Nchw).unwrap();
    let y = Tensor::from_slice(ctx, &[-7.0; 6], &[2, 3], Layout::Nchw).unwrap();
    let dz = Tensor::from_slice(ctx, &[-7.0; 6], &[2, 3], Layout::Nchw).unwrap();
    let both = Epilogue::AddRelu { z: &z.view(), dz: Some(&dz.view()) };
    let err = ctx.run(|e| bn.forward(e, &x.view(), &y.view(), Mode::Training, both)).unwrap_err();
    assert!(matches!(err, Error::Parameter(_)), "{err}");
    assert!(y.read(ctx).unwrap().iter().all(|&v| v == -7.0), "the refused forward wrote y");
    let z_only = Epilogue::AddRelu { z: &z.view(), dz: None };
    ctx.run(|e| bn.forward(e, &x.view(), &y.view(), Mode::Training, z_only)).unwrap();
    let dx = Tensor::from_slice(ctx, &[-7.0; 6], &[2, 3], Layout::Nchw).unwrap();
    let err = ctx.run(|e| bn.backward(e, &x.view(), &z.view(), &dx.view(), Mode::Training, z_only)).unwrap_err();
    assert!(matches!(err, Error::Parameter(_)), "{err}");
    assert!(dx.read(ctx).unwrap().iter().all(|&v| v == -7.0), "the refused backward wrote dx");
    assert_eq!(Mode::from_training(true), Mode::Training);
    assert!(!Mode::from_training(false).is_training());
}
