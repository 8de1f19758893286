//! Both reduction strategies, `Reduction::Tree` (GPUs) and
//! `Reduction::PerInvocation` (CPU adapters), on shapes whose reductions are
//! planar (long channel runs or rows, where the strategies differ), against
//! the f64 reference: BatchNorm in vec4 and scalar tilings (channels-last
//! with channels not a multiple of four among them), GroupNorm (both
//! layouts, 3 channels regrouped among them) and LayerNorm, and a channel
//! long enough that per-invocation partials would outnumber what one merge
//! loop may take.

mod common;

use common::{assert_close, ctx, Rng};
use wgpu_norm::reference::{self, BatchNormArgs, GroupNormArgs, LayerNormArgs};
use wgpu_norm::{
    BatchNorm, BatchNormConfig, BatchNormState, GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig, Layout,
    Reduction, Tensor,
};

fn batch_norm_case(shape: &[usize], layout: Layout, rng: &mut Rng, what: &str) {
    let ctx = ctx();
    let c = shape[1];
    let len: usize = shape.iter().product();
    let (x, dy) = (rng.normal_vec(len, 3.0, 2.0), rng.normal_vec(len, 0.0, 1.0));
    let mut state = BatchNormState::initial(c);
    state.weight = rng.normal_vec(c, 1.0, 0.3);
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(c)).unwrap();
    bn.write_state(&state).unwrap();
    let t = |v: &[f32]| Tensor::from_slice(ctx, v, shape, layout).unwrap();
    let (xt, dyt, y, dx) = (t(&x), t(&dy), t(&vec![0.0; len]), t(&vec![0.0; len]));
    bn.forward_sync(&xt.view(), &y.view(), true).unwrap();
    bn.backward_sync(&xt.view(), &dyt.view(), &dx.view(), true).unwrap();
    let args = BatchNormArgs {
        weight: Some(&state.weight),
        bias: Some(&state.bias),
        running_mean: Some(&state.running_mean),
        running_var: Some(&state.running_var),
        training: true,
        ..BatchNormArgs::new(shape, layout)
    };
    let (f, b) = (reference::batch_norm_forward(&args, &x, None), reference::batch_norm_backward(&args, &x, None, &dy));
    assert_close(&format!("{what} bn {shape:?} y"), &y.read(ctx).unwrap(), &f.y);
    assert_close(&format!("{what} bn {shape:?} dx"), &dx.read(ctx).unwrap(), &b.dx);
    let (dw, db) = bn.read_grads().unwrap();
    assert_close(&format!("{what} bn {shape:?} dweight"), &dw, &b.dweight);
    assert_close(&format!("{what} bn {shape:?} dbias"), &db, &b.dbias);
    let s = bn.read_state().unwrap();
    assert_close(&format!("{what} bn {shape:?} running_var"), &s.running_var, f.running_var.as_ref().unwrap());
}

fn family_cases(rng: &mut Rng, what: &str) {
    // GroupNorm rows of 3,200 values, and channels of 16,640 (more than one
    // chunk of an elementwise pass on GPUs); LayerNorm rows of 20,000.
    group_norm_case(rng, what, &[2, 4, 40, 40], 2, Layout::Nchw);
    group_norm_case(rng, what, &[1, 2, 128, 130], 2, Layout::Nchw);
    // Channels-last: lanes of four channels (8), and 3 channels regrouped
    // in runs of twelve values, whose lane streams each write partials.
    group_norm_case(rng, what, &[2, 8, 30, 40], 4, Layout::Nhwc);
    group_norm_case(rng, what, &[2, 3, 32, 40], 3, Layout::Nhwc);
    layer_norm_case(rng, what);
}

fn group_norm_case(rng: &mut Rng, what: &str, shape: &[usize], groups: usize, layout: Layout) {
    let ctx = ctx();
    let len: usize = shape.iter().product();
    let c = shape[1];
    let (x, dy) = (rng.normal_vec(len, -1.0, 1.5), rng.normal_vec(len, 0.0, 1.0));
    let (w, b) = (rng.normal_vec(c, 1.0, 0.3), rng.normal_vec(c, 0.0, 0.3));
    let gn = GroupNorm::new(ctx, GroupNormConfig::new(groups, c)).unwrap();
    gn.write_weight(&w).unwrap();
    gn.write_bias(&b).unwrap();
    let t = |v: &[f32], s: &[usize]| Tensor::from_slice(ctx, v, s, layout).unwrap();
    let (xt, dyt, y, dx) = (t(&x, shape), t(&dy, shape), t(&vec![0.0; len], shape), t(&vec![0.0; len], shape));
    gn.forward_sync(&xt.view(), &y.view()).unwrap();
    gn.backward_sync(&xt.view(), &dyt.view(), &dx.view()).unwrap();
    let args = GroupNormArgs { shape, layout, num_groups: groups, weight: Some(&w), bias: Some(&b), eps: 1e-5 };
    let (f, g) = (reference::group_norm_forward(&args, &x), reference::group_norm_backward(&args, &x, &dy));
    assert_close(&format!("{what} gn {shape:?} {layout:?} y"), &y.read(ctx).unwrap(), &f.y);
    assert_close(&format!("{what} gn {shape:?} {layout:?} dx"), &dx.read(ctx).unwrap(), &g.dx);
    assert_close(&format!("{what} gn {shape:?} {layout:?} dweight"), &gn.read_grads().unwrap().0, &g.dweight);
}

fn layer_norm_case(rng: &mut Rng, what: &str) {
    let ctx = ctx();
    let t = |v: &[f32], s: &[usize]| Tensor::from_slice(ctx, v, s, Layout::Nchw).unwrap();
    let shape = [3usize, 20_000];
    let x = rng.normal_vec(60_000, 2.0, 1.0);
    let dy = rng.normal_vec(60_000, 0.0, 1.0);
    let ln = LayerNorm::new(ctx, LayerNormConfig::new(&[20_000])).unwrap();
    let (xt, dyt, y, dx) =
        (t(&x, &shape), t(&dy, &shape), t(&vec![0.0; 60_000], &shape), t(&vec![0.0; 60_000], &shape));
    ln.forward_sync(&xt.view(), &y.view()).unwrap();
    ln.backward_sync(&xt.view(), &dyt.view(), &dx.view()).unwrap();
    let args = LayerNormArgs { shape: &shape, normalized_shape: &[20_000], weight: None, bias: None, eps: 1e-5 };
    let (f, g) = (reference::layer_norm_forward(&args, &x), reference::layer_norm_backward(&args, &x, &dy));
    assert_close(&format!("{what} ln y"), &y.read(ctx).unwrap(), &f.y);
    assert_close(&format!("{what} ln dx"), &dx.read(ctx).unwrap(), &g.dx);
}

#[test]
fn both_reduction_strategies_match_the_reference() {
    let ctx = ctx();
    let default = ctx.reduction();
    let cpu = ctx.adapter_info().device_type == wgpu::DeviceType::Cpu;
    assert_eq!(default, if cpu { Reduction::PerInvocation } else { Reduction::Tree });
    let mut rng = Rng(77);
    for reduction in [Reduction::Tree, Reduction::PerInvocation] {
        ctx.set_reduction(reduction);
        let what = format!("{reduction:?}");
        batch_norm_case(&[4, 6, 30, 40], Layout::Nchw, &mut rng, &what); // planar, vec4
        batch_norm_case(&[3, 5, 17, 19], Layout::Nchw, &mut rng, &what); // planar, scalar
        batch_norm_case(&[4, 2, 100, 100], Layout::Nchw, &mut rng, &what); // planar, several slices a channel
                                                                           // 2.9 M rows of one channel: per invocation would leave 90,112
                                                                           // partials for the merge, past lavapipe's 65,535 iterations per loop.
        batch_norm_case(&[8, 1, 600, 600], Layout::Nhwc, &mut rng, &what);
        // Channels-last with channels not a multiple of four: rows regrouped
        // in runs of lcm(C, 4) values (3 and 6 channels), or scalar when the
        // rows do not divide evenly (5 channels, 18 rows).
        batch_norm_case(&[2, 3, 8, 10], Layout::Nhwc, &mut rng, &what);
        batch_norm_case(&[3, 6, 5, 4], Layout::Nhwc, &mut rng, &what);
        batch_norm_case(&[2, 5, 3, 3], Layout::Nhwc, &mut rng, &what);
        family_cases(&mut rng, &what);
    }
    ctx.set_reduction(default);
}
