//! Half precision: f16 tensors with f32 statistics on devices with
//! SHADER_F16 (lavapipe has it), against the f64 reference computed from the
//! same f16-rounded inputs; and the errors where f16 cannot run (a device
//! without SHADER_F16: tests/default_limits.rs).

mod common;

use common::{ctx, normalized_error, Rng};
use wgpu_norm::reference::{self, BatchNormArgs, Fused};
use wgpu_norm::{BatchNorm, BatchNormConfig, BatchNormState, DType, Error, Layout, Tensor};

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
    ctx.run(|e| match fused {
        Fused::AddRelu => {
            bn.forward_add_relu(e, &xt.view(), &zt.view(), &y.view(), training)?;
            bn.backward_add_relu(e, &xt.view(), &zt.view(), &dyt.view(), &dx.view(), &dz.view(), training)
        }
        _ => {
            bn.forward(e, &xt.view(), &y.view(), training)?;
            bn.backward(e, &xt.view(), &dyt.view(), &dx.view(), training)
        }
    })
    .unwrap();
    let what = |n: &str| format!("f16 {shape:?} {layout:?} {fused:?} training={training} {n}");
    close(&what("y"), &y.read(ctx).unwrap(), &f.y);
    close(&what("dx"), &dx.read(ctx).unwrap(), &b.dx);
    let (dw, db) = bn.read_grads().unwrap();
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
    ] {
        for (fused, training) in [(Fused::None, true), (Fused::None, false), (Fused::AddRelu, true)] {
            case(shape, layout, fused, training, &mut rng);
        }
    }
}

#[test]
fn f16_needs_four_values_per_channel_run() {
    // Channels-last with 3 channels: no vec4 tiling, so no f16.
    let ctx = ctx();
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(3)).unwrap();
    let x = Tensor::from_slice_f16(ctx, &[0.5; 60], &[4, 3, 5], Layout::Nhwc).unwrap();
    let y = Tensor::from_slice_f16(ctx, &[-7.0; 60], &[4, 3, 5], Layout::Nhwc).unwrap();
    let err = bn.forward_sync(&x.view(), &y.view(), true).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    assert!(y.read(ctx).unwrap().iter().all(|&v| v == -7.0));
}

#[test]
fn mixed_precision_arguments_are_an_error() {
    let ctx = ctx();
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(4)).unwrap();
    let x = Tensor::from_slice_f16(ctx, &[0.5; 32], &[2, 4, 4], Layout::Nchw).unwrap();
    let y = Tensor::from_slice(ctx, &[-7.0; 32], &[2, 4, 4], Layout::Nchw).unwrap();
    let err = bn.forward_sync(&x.view(), &y.view(), true).unwrap_err();
    assert!(matches!(err, Error::Parameter(_)), "{err}");
    assert!(y.read(ctx).unwrap().iter().all(|&v| v == -7.0));
    // The family takes f32 only, and says so.
    let ln = wgpu_norm::LayerNorm::new(ctx, wgpu_norm::LayerNormConfig::new(&[4])).unwrap();
    let y16 = Tensor::zeros_f16(ctx, &[2, 4, 4], Layout::Nchw).unwrap();
    assert!(matches!(ln.forward_sync(&x.view(), &y16.view()), Err(Error::Unsupported(_))));
    assert_eq!(x.view().dtype, DType::F16);
}
