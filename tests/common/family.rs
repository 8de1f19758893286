//! The family's randomized cases against the f64 reference, shared by
//! tests/family.rs (default reduction) and tests/reductions.rs (both
//! strategies).

use wgpu_norm::{
    GroupNorm, GroupNormConfig, InstanceNorm, InstanceNormConfig, InstanceNormState, LayerNorm, LayerNormConfig,
    Layout, RmsNorm, RmsNormConfig, Tensor,
};
use wgpu_norm_reference::reference::{self, GroupNormArgs, InstanceNormArgs, LayerNormArgs, RmsNormArgs};

use super::{assert_close, ctx, Rng};

/// Each output (name, GPU result, f64 reference) within the tolerance,
/// named "`what`: name" on failure.
fn assert_outputs(what: &str, outputs: &[(&str, &[f32], &[f64])]) {
    for (name, got, want) in outputs {
        assert_close(&format!("{what}: {name}"), got, want);
    }
}

pub fn upload(data: &[f32], shape: &[usize], layout: Layout) -> Tensor {
    Tensor::from_slice(ctx(), data, shape, layout).unwrap()
}

pub fn zeros(shape: &[usize], layout: Layout) -> Tensor {
    Tensor::zeros(ctx(), shape, layout).unwrap()
}

pub fn read(t: &Tensor) -> Vec<f32> {
    t.read(ctx()).unwrap()
}

pub fn layer_norm_case(rng: &mut Rng, shape: &[usize], k: usize, offset: f32, affine: bool, bias: bool) {
    let what = format!("layer_norm {shape:?} over {k} dims, offset {offset}, affine {affine}, bias {bias}");
    let norm = &shape[shape.len() - k..];
    let len: usize = shape.iter().product();
    let cols: usize = norm.iter().product();
    let x = rng.normal_vec(len, offset, 1.5);
    let dy = rng.normal_vec(len, 0.0, 1.0);
    let w = rng.normal_vec(cols, 1.0, 0.5);
    let b = rng.normal_vec(cols, 0.0, 0.5);
    let ln = LayerNorm::new(ctx(), LayerNormConfig::new(norm).elementwise_affine(affine).bias(bias)).unwrap();
    ln.affine().write_weight(&w).unwrap();
    ln.affine().write_bias(&b).unwrap();
    let (xt, yt, dyt, dxt) = (
        upload(&x, shape, Layout::Nchw),
        zeros(shape, Layout::Nchw),
        upload(&dy, shape, Layout::Nchw),
        zeros(shape, Layout::Nchw),
    );
    ln.context().run(|e| ln.forward(e, &xt.view(), &yt.view())).unwrap();
    ln.context().run(|e| ln.backward(e, &xt.view(), &dyt.view(), &dxt.view())).unwrap();
    let args = LayerNormArgs {
        shape,
        normalized_shape: norm,
        weight: affine.then_some(&w[..]),
        bias: (affine && bias).then_some(&b[..]),
        eps: 1e-5,
    };
    let f = reference::layer_norm_forward(&args, &x);
    let g = reference::layer_norm_backward(&args, &x, &dy);
    let (mean, rstd) = ln.read_saved().unwrap();
    let (dw, db) = ln.affine().read_grads().unwrap();
    assert_outputs(
        &what,
        &[
            ("y", &read(&yt), &f.y),
            ("mean", &mean, &f.mean),
            ("rstd", &rstd, &f.rstd),
            ("dx", &read(&dxt), &g.dx),
            ("dweight", &dw, &g.dweight),
            ("dbias", &db, &g.dbias),
        ],
    );
}

pub fn rms_norm_case(rng: &mut Rng, shape: &[usize], k: usize, eps: Option<f32>, affine: bool) {
    let what = format!("rms_norm {shape:?} over {k} dims, eps {eps:?}, affine {affine}");
    let norm = &shape[shape.len() - k..];
    let len: usize = shape.iter().product();
    let cols: usize = norm.iter().product();
    let x = rng.normal_vec(len, 0.5, 2.0);
    let dy = rng.normal_vec(len, 0.0, 1.0);
    let w = rng.normal_vec(cols, 1.0, 0.5);
    let rn = RmsNorm::new(ctx(), RmsNormConfig::new(norm).eps(eps).elementwise_affine(affine)).unwrap();
    rn.affine().write_weight(&w).unwrap();
    let (xt, yt, dyt, dxt) = (
        upload(&x, shape, Layout::Nchw),
        zeros(shape, Layout::Nchw),
        upload(&dy, shape, Layout::Nchw),
        zeros(shape, Layout::Nchw),
    );
    rn.context().run(|e| rn.forward(e, &xt.view(), &yt.view())).unwrap();
    rn.context().run(|e| rn.backward(e, &xt.view(), &dyt.view(), &dxt.view())).unwrap();
    let args = RmsNormArgs { shape, normalized_shape: norm, weight: affine.then_some(&w[..]), eps: eps.map(f64::from) };
    let f = reference::rms_norm_forward(&args, &x);
    let g = reference::rms_norm_backward(&args, &x, &dy);
    assert_outputs(
        &what,
        &[
            ("y", &read(&yt), &f.y),
            ("rstd", &rn.read_saved().unwrap(), &f.rstd),
            ("dx", &read(&dxt), &g.dx),
            ("dweight", &rn.affine().read_grads().unwrap().0, &g.dweight),
        ],
    );
}

pub fn group_norm_case(rng: &mut Rng, shape: &[usize], groups: usize, layout: Layout, offset: f32, affine: bool) {
    let what = format!("group_norm {shape:?} {layout:?}, {groups} groups, offset {offset}, affine {affine}");
    let len: usize = shape.iter().product();
    let c = shape[1];
    let x = rng.normal_vec(len, offset, 1.5);
    let dy = rng.normal_vec(len, 0.0, 1.0);
    let w = rng.normal_vec(c, 1.0, 0.5);
    let b = rng.normal_vec(c, 0.0, 0.5);
    let gn = GroupNorm::new(ctx(), GroupNormConfig::new(groups, c).affine(affine)).unwrap();
    gn.affine().write_weight(&w).unwrap();
    gn.affine().write_bias(&b).unwrap();
    let (xt, yt, dyt, dxt) =
        (upload(&x, shape, layout), zeros(shape, layout), upload(&dy, shape, layout), zeros(shape, layout));
    gn.context().run(|e| gn.forward(e, &xt.view(), &yt.view())).unwrap();
    gn.context().run(|e| gn.backward(e, &xt.view(), &dyt.view(), &dxt.view())).unwrap();
    let args = GroupNormArgs {
        shape,
        layout,
        num_groups: groups,
        weight: affine.then_some(&w[..]),
        bias: affine.then_some(&b[..]),
        eps: 1e-5,
    };
    let f = reference::group_norm_forward(&args, &x);
    let g = reference::group_norm_backward(&args, &x, &dy);
    let (mean, rstd) = gn.read_saved().unwrap();
    let (dw, db) = gn.affine().read_grads().unwrap();
    assert_outputs(
        &what,
        &[
            ("y", &read(&yt), &f.y),
            ("mean", &mean, &f.mean),
            ("rstd", &rstd, &f.rstd),
            ("dx", &read(&dxt), &g.dx),
            ("dweight", &dw, &g.dweight),
            ("dbias", &db, &g.dbias),
        ],
    );
}

pub fn instance_norm_case(rng: &mut Rng, shape: &[usize], layout: Layout, momentum: Option<f32>) {
    let what = format!("instance_norm {shape:?} {layout:?} momentum {momentum:?}");
    let len: usize = shape.iter().product();
    let c = shape[1];
    let config = InstanceNormConfig::new(c).affine(true).track_running_stats(true).momentum(momentum);
    let inorm = InstanceNorm::new(ctx(), config).unwrap();
    let state = InstanceNormState {
        weight: rng.normal_vec(c, 1.0, 0.5),
        bias: rng.normal_vec(c, 0.0, 0.5),
        running_mean: rng.normal_vec(c, 0.0, 1.0),
        running_var: rng.normal_vec(c, 2.0, 0.3),
    };
    inorm.write_state(&state).unwrap();
    let x = rng.normal_vec(len, 3.0, 1.5);
    let dy = rng.normal_vec(len, 0.0, 1.0);
    let (xt, dyt) = (upload(&x, shape, layout), upload(&dy, shape, layout));
    for training in [true, false] {
        let before = inorm.read_state().unwrap();
        let (yt, dxt) = (zeros(shape, layout), zeros(shape, layout));
        inorm.context().run(|e| inorm.forward(e, &xt.view(), &yt.view(), training)).unwrap();
        inorm.context().run(|e| inorm.backward(e, &xt.view(), &dyt.view(), &dxt.view(), training)).unwrap();
        let args = InstanceNormArgs {
            shape,
            layout,
            weight: Some(&before.weight),
            bias: Some(&before.bias),
            running_mean: Some(&before.running_mean),
            running_var: Some(&before.running_var),
            use_input_stats: training,
            momentum: f64::from(momentum.unwrap_or(0.0)),
            eps: 1e-5,
        };
        let f = reference::instance_norm_forward(&args, &x);
        let g = reference::instance_norm_backward(&args, &x, &dy);
        let after = inorm.read_state().unwrap();
        let (dw, db) = inorm.affine().read_grads().unwrap();
        let what = format!("{what} training {training}");
        assert_outputs(
            &what,
            &[
                ("y", &read(&yt), &f.y),
                ("running_mean", &after.running_mean, &f.running_mean.unwrap()),
                ("running_var", &after.running_var, &f.running_var.unwrap()),
                ("dx", &read(&dxt), &g.dx),
                ("dweight", &dw, &g.dweight),
                ("dbias", &db, &g.dbias),
            ],
        );
    }
}
