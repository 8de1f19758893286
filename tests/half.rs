//! Half precision: f16 tensors with f32 statistics on devices with
//! SHADER_F16 (lavapipe has it), against the f64 reference computed from the
//! same f16-rounded inputs; and the errors where f16 cannot run (a device
//! without SHADER_F16: tests/default_limits.rs).

mod common;

use common::{ctx, normalized_error, Rng};
use wgpu_norm::{
    BatchNorm, BatchNormConfig, BatchNormState, DType, Epilogue, Error, GroupNorm, GroupNormConfig, InstanceNorm,
    InstanceNormConfig, LayerNorm, LayerNormConfig, Layout, Mode, RmsNorm, RmsNormConfig, Tensor,
};
use wgpu_norm_reference::reference::{
    self, BatchNormArgs, Fused, GroupNormArgs, InstanceNormArgs, LayerNormArgs, RmsNormArgs,
};

/// f16 keeps 11 significant bits: outputs are within 2^-11 of their
/// magnitude before any arithmetic, so the f16 tolerance is 2e-3.
const F16_TOLERANCE: f64 = 2e-3;

fn round_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

fn close(what: &str, got: &[f32], want: &[f64]) {
    let err = normalized_error(got, want);
    assert!(err <= F16_TOLERANCE, "{what}: normalized error {err:.3e} > {F16_TOLERANCE:.0e}");
}

fn case(shape: &[usize], layout: Layout, fused: Fused, training: bool, rng: &mut Rng) {
    let ctx = ctx();
    let c = shape[1];
    let len: usize = shape.iter().product();
    let (x, z, dy0) = (
        round_f16(&rng.normal_vec(len, 1.5, 2.0)),
        round_f16(&rng.normal_vec(len, 0.0, 1.0)),
        round_f16(&rng.normal_vec(len, 0.0, 1.0)),
    );
    let mut state = BatchNormState::initial(c);
    state.weight = rng.normal_vec(c, 1.0, 0.3);
    state.bias = rng.normal_vec(c, 0.0, 0.3);
    state.running_mean = rng.normal_vec(c, 1.5, 0.5);
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
    // No gradient at the ReLU's kink, where f16 rounding decides the side.
    let dy: Vec<f32> =
        dy0.iter().zip(&f.y).map(|(&g, &y)| if fused != Fused::None && y.abs() < 1e-2 { 0.0 } else { g }).collect();
    let b = reference::batch_norm_backward(&args, &x, zr, &dy);

    let bn = BatchNorm::new(ctx, BatchNormConfig::new(c)).unwrap();
    bn.write_state(&state).unwrap();
    let half = |v: &[f32]| Tensor::from_slice_f16(ctx, v, shape, layout).unwrap();
    let (xt, zt, dyt) = (half(&x), half(&z), half(&dy));
    let zero = || Tensor::zeros_f16(ctx, shape, layout).unwrap();
    let (y, dx, dz) = (zero(), zero(), zero());
    let (zv, dzv, mode) = (zt.view(), dz.view(), Mode::from_training(training));
    ctx.run(|e| {
        bn.forward(e, &xt.view(), &y.view(), mode, fused.epilogue(Some(&zv), None).unwrap())?;
        bn.backward(e, &xt.view(), &dyt.view(), &dx.view(), mode, fused.epilogue(Some(&zv), Some(&dzv)).unwrap())
    })
    .unwrap();
    let what = |n: &str| format!("f16 {shape:?} {layout:?} {fused:?} training={training} {n}");
    close(&what("y"), &y.read(ctx).unwrap(), &f.y);
    close(&what("dx"), &dx.read(ctx).unwrap(), &b.dx);
    let (dw, db) = bn.affine().read_grads().unwrap();
    close(&what("dweight"), &dw, &b.dweight);
    close(&what("dbias"), &db, &b.dbias);
    if let Some(want) = &b.dz {
        close(&what("dz"), &dz.read(ctx).unwrap(), want);
    }
    if training {
        let (mean, _) = bn.read_saved().unwrap();
        close(&what("save_mean"), &mean, &f.save_mean);
    }
}

#[test]
fn f16_tensors_with_f32_statistics_match_the_reference() {
    let mut rng = Rng(16);
    for (shape, layout) in [
        (&[4usize, 6, 8, 12][..], Layout::Nchw),
        (&[3, 8, 300][..], Layout::Nchw),
        (&[5, 8, 7, 3][..], Layout::Nhwc),
        (&[64, 12][..], Layout::Nchw),
        // f16 rows of 1 KiB: walked in teams on CPU adapters.
        (&[6, 512][..], Layout::Nhwc),
        // No runs of four values per channel: the scalar kernels, with views
        // that end mid-word.
        (&[4, 3, 5][..], Layout::Nhwc),
        (&[3, 5, 5, 5][..], Layout::Nchw),
        (&[7, 3][..], Layout::Nchw),
        // Long channel runs: on GPUs the apply and dx passes merge the
        // partials (src/batch_norm/merged.rs), in vec4s and in scalars.
        (&[2, 3, 40, 40][..], Layout::Nchw),
        (&[2, 3, 1025][..], Layout::Nchw),
    ] {
        for (fused, training) in [(Fused::None, true), (Fused::None, false), (Fused::AddRelu, true)] {
            case(shape, layout, fused, training, &mut rng);
        }
    }
}

#[test]
fn mixed_precision_arguments_are_an_error() {
    let ctx = ctx();
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(4)).unwrap();
    let x = Tensor::from_slice_f16(ctx, &[0.5; 32], &[2, 4, 4], Layout::Nchw).unwrap();
    let y = Tensor::from_slice(ctx, &[-7.0; 32], &[2, 4, 4], Layout::Nchw).unwrap();
    let err = bn.context().run(|e| bn.forward(e, &x.view(), &y.view(), Mode::Training, Epilogue::None)).unwrap_err();
    assert!(matches!(err, Error::Parameter(_)), "{err}");
    assert!(y.read(ctx).unwrap().iter().all(|&v| v == -7.0));
    // The family too.
    let ln = LayerNorm::new(ctx, LayerNormConfig::new(&[4])).unwrap();
    assert!(matches!(ln.context().run(|e| ln.forward(e, &x.view(), &y.view())), Err(Error::Parameter(_))));
    assert!(y.read(ctx).unwrap().iter().all(|&v| v == -7.0));
    assert_eq!(x.view().dtype, DType::F16);
}

/// One family op on f16 tensors: `run` does forward + backward on the GPU
/// and returns (y, dx, dweight, dbias); `want` the same from the reference.
fn family_case(
    what: &str,
    shape: &[usize],
    layout: Layout,
    rng: &mut Rng,
    run: impl FnOnce(&Tensor, &Tensor, &Tensor, &Tensor) -> (Vec<f32>, Vec<f32>),
    want: impl FnOnce(&[f32], &[f32]) -> [Vec<f64>; 4],
) {
    let ctx = ctx();
    let len: usize = shape.iter().product();
    let x = round_f16(&rng.normal_vec(len, 0.5, 2.0));
    let dy = round_f16(&rng.normal_vec(len, 0.0, 1.0));
    let half = |v: &[f32]| Tensor::from_slice_f16(ctx, v, shape, layout).unwrap();
    let (xt, dyt) = (half(&x), half(&dy));
    let (y, dx) = (Tensor::zeros_f16(ctx, shape, layout).unwrap(), Tensor::zeros_f16(ctx, shape, layout).unwrap());
    let (dw, db) = run(&xt, &dyt, &y, &dx);
    let [wy, wdx, wdw, wdb] = want(&x, &dy);
    let what = |n: &str| format!("f16 {what} {shape:?} {layout:?} {n}");
    close(&what("y"), &y.read(ctx).unwrap(), &wy);
    close(&what("dx"), &dx.read(ctx).unwrap(), &wdx);
    close(&what("dweight"), &dw, &wdw);
    close(&what("dbias"), &db, &wdb);
}

#[test]
fn f16_family_matches_the_reference() {
    let ctx = ctx();
    let mut rng = Rng(61);
    for shape in [&[6usize, 40][..], &[3, 5, 7][..], &[2, 3001][..]] {
        let norm = &shape[shape.len() - 1..];
        let w = rng.normal_vec(norm[0], 1.0, 0.3);
        let b = rng.normal_vec(norm[0], 0.0, 0.3);
        let ln = LayerNorm::new(ctx, LayerNormConfig::new(norm)).unwrap();
        ln.affine().write_weight(&w).unwrap();
        ln.affine().write_bias(&b).unwrap();
        let args = LayerNormArgs { shape, normalized_shape: norm, weight: Some(&w), bias: Some(&b), eps: 1e-5 };
        family_case(
            "layer_norm",
            shape,
            Layout::Nchw,
            &mut rng,
            |x, dy, y, dx| {
                ln.context().run(|e| ln.forward(e, &x.view(), &y.view())).unwrap();
                ln.context().run(|e| ln.backward(e, &x.view(), &dy.view(), &dx.view())).unwrap();
                ln.affine().read_grads().unwrap()
            },
            |x, dy| {
                let (f, g) = (reference::layer_norm_forward(&args, x), reference::layer_norm_backward(&args, x, dy));
                [f.y, g.dx, g.dweight, g.dbias]
            },
        );
        let rn = RmsNorm::new(ctx, RmsNormConfig::new(norm)).unwrap();
        rn.affine().write_weight(&w).unwrap();
        let args = RmsNormArgs { shape, normalized_shape: norm, weight: Some(&w), eps: None };
        family_case(
            "rms_norm",
            shape,
            Layout::Nchw,
            &mut rng,
            |x, dy, y, dx| {
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
    for layout in [Layout::Nchw, Layout::Nhwc] {
        for (shape, groups) in
            [(&[2usize, 6, 5, 7][..], 3), (&[3, 4, 9][..], 4), (&[2, 8, 4, 4][..], 2), (&[2, 3, 4, 4][..], 3)]
        {
            let c = shape[1];
            let (w, b) = (rng.normal_vec(c, 1.0, 0.3), rng.normal_vec(c, 0.0, 0.3));
            let gn = GroupNorm::new(ctx, GroupNormConfig::new(groups, c)).unwrap();
            gn.affine().write_weight(&w).unwrap();
            gn.affine().write_bias(&b).unwrap();
            let args = GroupNormArgs { shape, layout, num_groups: groups, weight: Some(&w), bias: Some(&b), eps: 1e-5 };
            family_case(
                "group_norm",
                shape,
                layout,
                &mut rng,
                |x, dy, y, dx| {
                    gn.context().run(|e| gn.forward(e, &x.view(), &y.view())).unwrap();
                    gn.context().run(|e| gn.backward(e, &x.view(), &dy.view(), &dx.view())).unwrap();
                    gn.affine().read_grads().unwrap()
                },
                |x, dy| {
                    let (f, g) =
                        (reference::group_norm_forward(&args, x), reference::group_norm_backward(&args, x, dy));
                    [f.y, g.dx, g.dweight, g.dbias]
                },
            );
            let inorm = InstanceNorm::new(ctx, InstanceNormConfig::new(c).affine(true)).unwrap();
            let state = wgpu_norm::InstanceNormState {
                weight: w.clone(),
                bias: b.clone(),
                running_mean: vec![0.0; c],
                running_var: vec![1.0; c],
            };
            inorm.write_state(&state).unwrap();
            let args = InstanceNormArgs {
                shape,
                layout,
                weight: Some(&w),
                bias: Some(&b),
                running_mean: None,
                running_var: None,
                use_input_stats: true,
                momentum: 0.1,
                eps: 1e-5,
            };
            family_case(
                "instance_norm",
                shape,
                layout,
                &mut rng,
                |x, dy, y, dx| {
                    inorm.context().run(|e| inorm.forward(e, &x.view(), &y.view(), true)).unwrap();
                    inorm.context().run(|e| inorm.backward(e, &x.view(), &dy.view(), &dx.view(), true)).unwrap();
                    inorm.affine().read_grads().unwrap()
                },
                |x, dy| {
                    let f = reference::instance_norm_forward(&args, x);
                    let g = reference::instance_norm_backward(&args, x, dy);
                    [f.y, g.dx, g.dweight, g.dbias]
                },
            );
        }
    }
}
