//! Both reduction strategies, `Reduction::Tree` (GPUs) and
//! `Reduction::PerInvocation` (CPU adapters), on shapes whose reductions are
//! planar (long channel runs or rows, where the strategies differ), against
//! the f64 reference: BatchNorm in vec4 and scalar tilings (channels-last
//! with channels not a multiple of four among them), GroupNorm (both
//! layouts, 3 channels regrouped among them) and LayerNorm, and a channel
//! long enough that per-invocation partials would outnumber what one merge
//! loop may take. Then the family on contiguous rows of 4 to 20,000 values
//! (tests/family.rs's LayerNorm, RMSNorm and InstanceNorm cases, shared
//! through common::family), GroupNorm weights per channel and split across a
//! vec4 (spatial size 9), and f16 LayerNorm rows. And both accesses,
//! `Access::Floats` (GPUs) and `Access::Words64` (CPU adapters), through
//! every kernel that has the two.

mod common;

use common::family::{group_norm_case, instance_norm_case, layer_norm_case, rms_norm_case};
use common::{assert_close, ctx, Rng};
use wgpu_norm::{
    Access, BatchNorm, BatchNormConfig, BatchNormState, Epilogue, LayerNorm, LayerNormConfig, Layout, Mode, Reduction,
    Tensor, TensorView,
};
use wgpu_norm_reference::reference::{self, BatchNormArgs, Fused, LayerNormArgs};

/// The context's reduction and access are switched by these tests: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The tests' lock, with the context on the GPUs' reduction until dropped
/// (then back on its own, and on its own last-workgroup merges, even after
/// a failed assertion).
struct OnGpuPath {
    default: (Reduction, bool),
    _serial: std::sync::MutexGuard<'static, ()>,
}

fn on_gpu_path() -> OnGpuPath {
    let serial = serial();
    let default = (ctx().reduction(), ctx().last_workgroup_merges());
    ctx().set_reduction(Reduction::Tree);
    OnGpuPath { default, _serial: serial }
}

impl Drop for OnGpuPath {
    fn drop(&mut self) {
        ctx().set_reduction(self.default.0);
        ctx().set_last_workgroup_merges(self.default.1).unwrap();
    }
}

/// The epilogue `fused` names, over the residual z and, in a backward, dz.
fn epilogue_of<'v, 'a>(fused: Fused, z: &'v TensorView<'a>, dz: Option<&'v TensorView<'a>>) -> Epilogue<'v, 'a> {
    match fused {
        Fused::None => Epilogue::None,
        Fused::Relu => Epilogue::Relu,
        Fused::AddRelu => Epilogue::AddRelu { z, dz },
    }
}

/// A training forward and backward, then an eval forward and backward on
/// the running statistics the first left, against the reference; the eval
/// forward's and backward's dispatches.
fn batch_norm_case(shape: &[usize], layout: Layout, rng: &mut Rng, what: &str) -> (u64, u64) {
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
    bn.context().run(|e| bn.forward(e, &xt.view(), &y.view(), Mode::Training, Epilogue::None)).unwrap();
    bn.context().run(|e| bn.backward(e, &xt.view(), &dyt.view(), &dx.view(), Mode::Training, Epilogue::None)).unwrap();
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
    let (dw, db) = bn.affine().read_grads().unwrap();
    assert_close(&format!("{what} bn {shape:?} dweight"), &dw, &b.dweight);
    assert_close(&format!("{what} bn {shape:?} dbias"), &db, &b.dbias);
    let s = bn.read_state().unwrap();
    assert_close(&format!("{what} bn {shape:?} running_var"), &s.running_var, f.running_var.as_ref().unwrap());
    let before = wgpu_norm::recorded_dispatches();
    bn.context().run(|e| bn.forward(e, &xt.view(), &y.view(), Mode::Eval, Epilogue::None)).unwrap();
    let dispatches = wgpu_norm::recorded_dispatches() - before;
    let eval = BatchNormArgs {
        running_mean: Some(&s.running_mean),
        running_var: Some(&s.running_var),
        training: false,
        ..args
    };
    let want = reference::batch_norm_forward(&eval, &x, None);
    assert_close(&format!("{what} bn {shape:?} eval y"), &y.read(ctx).unwrap(), &want.y);
    let before = wgpu_norm::recorded_dispatches();
    bn.context().run(|e| bn.backward(e, &xt.view(), &dyt.view(), &dx.view(), Mode::Eval, Epilogue::None)).unwrap();
    let backward_dispatches = wgpu_norm::recorded_dispatches() - before;
    let want = reference::batch_norm_backward(&eval, &x, None, &dy);
    assert_close(&format!("{what} bn {shape:?} eval dx"), &dx.read(ctx).unwrap(), &want.dx);
    let (dw, db) = bn.affine().read_grads().unwrap();
    assert_close(&format!("{what} bn {shape:?} eval dweight"), &dw, &want.dweight);
    assert_close(&format!("{what} bn {shape:?} eval dbias"), &db, &want.dbias);
    (dispatches, backward_dispatches)
}

/// BatchNorm's eval backward over channels of long runs writes dx and takes
/// its sums in one walk, then merges them (src/batch_norm/merged.rs): two
/// dispatches on either path, with each epilogue, against the reference.
#[test]
fn eval_backward_walks_match_the_reference_on_both_paths() {
    let _serial = serial();
    let ctx = ctx();
    let default = ctx.reduction();
    let mut rng = Rng(81);
    // 9,800 values a channel: more than the GPUs' one-pass kernels take.
    let shape = [2, 3, 70, 70];
    let len: usize = shape.iter().product();
    for reduction in [Reduction::Tree, Reduction::PerInvocation] {
        ctx.set_reduction(reduction);
        for fused in [Fused::None, Fused::Relu, Fused::AddRelu] {
            let (x, z, dy) =
                (rng.normal_vec(len, 1.0, 2.0), rng.normal_vec(len, 0.0, 1.0), rng.normal_vec(len, 0.0, 1.0));
            let mut state = BatchNormState::initial(3);
            (state.weight, state.bias) = (rng.normal_vec(3, 1.0, 0.3), rng.normal_vec(3, 0.0, 0.3));
            state.running_mean = rng.normal_vec(3, 1.0, 0.5);
            state.running_var = rng.normal_vec(3, 4.0, 0.5);
            let bn = BatchNorm::new(ctx, BatchNormConfig::new(3)).unwrap();
            bn.write_state(&state).unwrap();
            let t = |v: &[f32]| Tensor::from_slice(ctx, v, &shape, Layout::Nchw).unwrap();
            let (xt, zt, dyt, dxt, dzt) = (t(&x), t(&z), t(&dy), t(&vec![0.0; len]), t(&vec![0.0; len]));
            let (z_view, dz_view) = (zt.view(), dzt.view());
            let epilogue = epilogue_of(fused, &z_view, Some(&dz_view));
            let before = wgpu_norm::recorded_dispatches();
            ctx.run(|e| bn.backward(e, &xt.view(), &dyt.view(), &dxt.view(), Mode::Eval, epilogue)).unwrap();
            let what = format!("{reduction:?} {fused:?}");
            assert_eq!(wgpu_norm::recorded_dispatches() - before, 2, "{what}");
            let args = BatchNormArgs {
                weight: Some(&state.weight),
                bias: Some(&state.bias),
                running_mean: Some(&state.running_mean),
                running_var: Some(&state.running_var),
                training: false,
                fused,
                ..BatchNormArgs::new(&shape, Layout::Nchw)
            };
            let want = reference::batch_norm_backward(&args, &x, (fused == Fused::AddRelu).then_some(&z[..]), &dy);
            assert_close(&format!("{what} dx"), &dxt.read(ctx).unwrap(), &want.dx);
            let (dw, db) = bn.affine().read_grads().unwrap();
            assert_close(&format!("{what} dweight"), &dw, &want.dweight);
            assert_close(&format!("{what} dbias"), &db, &want.dbias);
            if let Some(dz) = &want.dz {
                assert_close(&format!("{what} dz"), &dzt.read(ctx).unwrap(), dz);
            }
        }
    }
    ctx.set_reduction(default);
}

fn family_cases(rng: &mut Rng, what: &str) {
    // The shared cases (common::family) name their shape, not the strategy:
    // shown on failure.
    eprintln!("family cases under {what}");
    // GroupNorm rows of 3,200 values, and channels of 16,640 (more than one
    // chunk of an elementwise pass on GPUs); LayerNorm rows of 20,000.
    group_norm_case(rng, &[2, 4, 40, 40], 2, Layout::Nchw, -1.0, true);
    group_norm_case(rng, &[1, 2, 128, 130], 2, Layout::Nchw, -1.0, true);
    // Channels-last: lanes of four channels (8), and 3 channels regrouped
    // in runs of twelve values, whose lane streams each write partials.
    group_norm_case(rng, &[2, 8, 30, 40], 4, Layout::Nhwc, -1.0, true);
    group_norm_case(rng, &[2, 3, 32, 40], 3, Layout::Nhwc, -1.0, true);
    layer_norm_case(rng, &[3, 20_000], 1, 2.0, true, true);
    contiguous_row_cases(rng, what);
}

/// The family over short and long contiguous rows (see the file's header),
/// with tests/family.rs's cases.
fn contiguous_row_cases(rng: &mut Rng, what: &str) {
    for (rows, d) in [(5, 4), (37, 56), (19, 512), (3, 2052), (2, 8192), (2, 8196)] {
        layer_norm_case(rng, &[rows, d], 1, 1.5, true, true);
        rms_norm_case(rng, &[rows, d], 1, None, true);
    }
    f16_layer_norm_case(rng, what, 6, 40);
    f16_layer_norm_case(rng, what, 5, 260);
    // Spatial sizes 16 (four values share a weight) and 9 (they may not),
    // groups of 8192 and 8448 values.
    group_norm_case(rng, &[2, 6, 4, 4], 3, Layout::Nchw, -1.0, true);
    group_norm_case(rng, &[2, 8, 3, 3], 2, Layout::Nchw, -1.0, true);
    group_norm_case(rng, &[2, 4, 64, 64], 2, Layout::Nchw, -1.0, true);
    group_norm_case(rng, &[1, 4, 64, 66], 2, Layout::Nchw, -1.0, true);
    group_norm_case(rng, &[3, 4, 4, 263], 2, Layout::Nchw, -1.0, true);
    group_norm_case(rng, &[3, 4, 5, 211], 2, Layout::Nchw, -1.0, true);
    instance_norm_case(rng, &[3, 5, 8, 8], Layout::Nchw, Some(0.3));
}

/// LayerNorm's forward over `rows` rows of `d` f16 values, with random
/// weights and biases.
fn f16_layer_norm_case(rng: &mut Rng, what: &str, rows: usize, d: usize) {
    let ctx = ctx();
    let shape = [rows, d];
    let len = rows * d;
    let x: Vec<f32> = rng.normal_vec(len, 1.5, 2.0).iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    let (w, b) = (rng.normal_vec(d, 1.0, 0.3), rng.normal_vec(d, 0.0, 0.3));
    let t = |v: &[f32]| Tensor::from_slice_f16(ctx, v, &shape, Layout::Nchw).unwrap();
    let (xt, y) = (t(&x), t(&vec![0.0; len]));
    let norm = LayerNorm::new(ctx, LayerNormConfig::new(&[d])).unwrap();
    norm.affine().write_weight(&w).unwrap();
    norm.affine().write_bias(&b).unwrap();
    norm.context().run(|e| norm.forward(e, &xt.view(), &y.view())).unwrap();
    let args = LayerNormArgs { shape: &shape, normalized_shape: &[d], weight: Some(&w), bias: Some(&b), eps: 1e-5 };
    let want = reference::layer_norm_forward(&args, &x).y;
    // y rounds to f16 on the way out (half.rs's tolerance).
    let err = common::normalized_error(&y.read(ctx).unwrap(), &want);
    assert!(err <= 2e-3, "{what} f16 ln {shape:?} y: normalized error {err:.3e}");
}

#[test]
fn both_reduction_strategies_match_the_reference() {
    let _serial = serial();
    let ctx = ctx();
    let default = ctx.reduction();
    let cpu = ctx.adapter_info().device_type == wgpu::DeviceType::Cpu;
    // The device class's choice, unless WGPU_NORM_REDUCTION overrode it.
    let chosen = std::env::var("WGPU_NORM_REDUCTION").ok().and_then(|v| Reduction::from_name(&v));
    assert_eq!(default, chosen.unwrap_or(if cpu { Reduction::PerInvocation } else { Reduction::Tree }));
    let mut rng = Rng(77);
    for reduction in [Reduction::Tree, Reduction::PerInvocation] {
        ctx.set_reduction(reduction);
        let what = format!("{reduction:?}");
        // Planar: vec4, scalar.
        batch_norm_case(&[4, 6, 30, 40], Layout::Nchw, &mut rng, &what);
        batch_norm_case(&[3, 5, 17, 19], Layout::Nchw, &mut rng, &what);
        // Planar, several slices a channel; its eval forward is one
        // dispatch either way (a workgroup a channel takes its
        // coefficients), its eval backward two (dx and the sums in one
        // walk, then their merge).
        let eval = batch_norm_case(&[4, 2, 100, 100], Layout::Nchw, &mut rng, &what);
        assert_eq!(eval, (1, 2), "{what}: the eval forward's and backward's dispatches");
        // 2.9 M rows of one channel: per invocation would leave 90,112
        // partials for the merge, past lavapipe's 65,535 iterations per loop.
        batch_norm_case(&[8, 1, 600, 600], Layout::Nhwc, &mut rng, &what);
        // Channels-last with channels not a multiple of four: rows regrouped
        // in runs of lcm(C, 4) values (3 and 6 channels), or scalar when the
        // rows do not divide evenly (5 channels, 18 rows).
        batch_norm_case(&[2, 3, 8, 10], Layout::Nhwc, &mut rng, &what);
        batch_norm_case(&[3, 6, 5, 4], Layout::Nhwc, &mut rng, &what);
        batch_norm_case(&[2, 5, 3, 3], Layout::Nhwc, &mut rng, &what);
        // Runs whose spans end at every remainder of the four-step walks
        // (263 vec4s, 1,055 scalars a plane; about seven values a lane in
        // the first; 29 and 31 rows a column).
        batch_norm_case(&[4, 1, 448, 263], Layout::Nchw, &mut rng, &what);
        batch_norm_case(&[3, 2, 4, 263], Layout::Nchw, &mut rng, &what);
        batch_norm_case(&[3, 2, 5, 211], Layout::Nchw, &mut rng, &what);
        batch_norm_case(&[1, 8, 29, 31], Layout::Nhwc, &mut rng, &what);
        family_cases(&mut rng, &what);
    }
    ctx.set_reduction(default);
}

#[test]
fn both_accesses_match_the_reference() {
    let _serial = serial();
    let ctx = ctx();
    let default = ctx.access();
    let cpu = ctx.adapter_info().device_type == wgpu::DeviceType::Cpu;
    let int64 = ctx.device().features().contains(wgpu::Features::SHADER_INT64);
    let chosen = std::env::var("WGPU_NORM_ACCESS").ok().and_then(|v| Access::from_name(&v));
    assert_eq!(default, chosen.unwrap_or(if cpu && int64 { Access::Words64 } else { Access::Floats }));
    let mut rng = Rng(78);
    for &access in common::accesses() {
        ctx.set_access(access).unwrap();
        let what = format!("{access:?}");
        // Runs (planar vec4), and a plane of 263 vec4s (every remainder).
        batch_norm_case(&[4, 6, 30, 40], Layout::Nchw, &mut rng, &what);
        batch_norm_case(&[3, 2, 4, 263], Layout::Nchw, &mut rng, &what);
        // Channels-last: interleaved lanes of four channels, rows regrouped
        // in runs of lcm(C, 4), and rows of 256 bytes and 1 KiB in teams.
        batch_norm_case(&[2, 8, 30, 40], Layout::Nhwc, &mut rng, &what);
        batch_norm_case(&[3, 6, 5, 4], Layout::Nhwc, &mut rng, &what);
        batch_norm_case(&[3, 64, 5, 7], Layout::Nhwc, &mut rng, &what);
        batch_norm_case(&[70, 256], Layout::Nchw, &mut rng, &what);
        // The family: statistics and instance sums (reduce_vec4.wgsl) and
        // elementwise passes (row_norm.wgsl), both layouts; LayerNorm and
        // RMSNorm rows held whole (src/resident.rs: an invocation, a
        // subgroup), and rows too long for that.
        group_norm_case(&mut rng, &[2, 4, 40, 40], 2, Layout::Nchw, -1.0, true);
        group_norm_case(&mut rng, &[2, 8, 30, 40], 4, Layout::Nhwc, -1.0, true);
        layer_norm_case(&mut rng, &[37, 56], 1, 1.5, true, true);
        rms_norm_case(&mut rng, &[19, 512], 1, None, true);
        layer_norm_case(&mut rng, &[3, 2052], 1, 1.5, true, true);
    }
    ctx.set_access(default).unwrap();
}

/// How GPUs record a BatchNorm op over a view: in one dispatch, a workgroup
/// a channel (batch_norm.wgsl's channel_forward and channel_backward); as a
/// reduction and a pass that merges its partials (merged.wgsl, channels
/// of long runs) or a reduction whose last workgroup merges them
/// (finish.wgsl) and a pass; or as a reduction, merge kernels and a pass.
#[derive(Clone, Copy, Debug, PartialEq)]
enum GpuPath {
    OnePass,
    Merged,
    Passes,
}

impl GpuPath {
    /// Whether `dispatches` is what this path records for the training
    /// forward (`forward`), whose running statistics may need a commit after
    /// every channel (unless `commits_alone`), or a backward, training or
    /// eval, where reductions' last workgroups merge (`last_merge`) or not
    /// (the eval backward of channels of long runs writes dx and takes its
    /// sums in one walk, then merges them, either way).
    fn records(self, dispatches: u64, forward: bool, commits_alone: bool, last_merge: bool) -> bool {
        let alone = !forward || commits_alone;
        match self {
            GpuPath::OnePass if alone => dispatches == 1,
            GpuPath::Merged if alone => dispatches == 2,
            // The reduction that merges (in eval taking the running
            // statistics' entries itself), then the pass.
            GpuPath::Passes if alone && last_merge => dispatches == 2,
            _ => dispatches >= 3,
        }
    }
}

/// GPUs take the training forward and the backward of channels that fit a
/// workgroup in one dispatch each, and of longer channels in two (a
/// reduction whose last workgroup merges, or for long runs a pass that
/// merges the partials, then the pass): y, the saved statistics, the
/// running ones, the counter, dx, dz, dweight and dbias as the reference
/// has them, with each epilogue, views at offsets, no affine, both modes of
/// the backward, with the last workgroups merging and without; and what
/// they leave to the merge kernels (the forward of a cumulative average or
/// with check_finite) still right.
#[test]
fn one_pass_and_merged_passes_on_gpus_match_the_reference() {
    let _gpu_path = on_gpu_path();
    let ctx = ctx();
    for last_merge in [true, false] {
        ctx.set_last_workgroup_merges(last_merge).unwrap();
        merged_cases(last_merge);
    }
}

fn merged_cases(last_merge: bool) {
    let ctx = ctx();
    let mut rng = Rng(79);
    // (shape, layout, config, epilogue, offset in values, path)
    let base = |c| BatchNormConfig::new(c);
    let (nchw, nhwc) = (Layout::Nchw, Layout::Nhwc);
    let (one, merged, passes) = (GpuPath::OnePass, GpuPath::Merged, GpuPath::Passes);
    type Case = (Vec<usize>, Layout, BatchNormConfig, Fused, u64, GpuPath);
    let cases: Vec<Case> = vec![
        (vec![32, 20, 7, 7], nchw, base(20), Fused::None, 0, one),
        (vec![4, 6, 30, 40], nchw, base(6).momentum(Some(0.3)), Fused::Relu, 0, one),
        (vec![2, 3, 16], nchw, base(3).affine(false), Fused::AddRelu, 7, one),
        (vec![8, 5, 1024], nchw, base(5), Fused::None, 0, one),
        (vec![2, 4, 3, 3, 5], nchw, base(4).track_running_stats(false), Fused::None, 3, one),
        // Forwards the merge kernels keep: a cumulative average,
        // check_finite (their backwards take one pass, or two).
        (vec![4, 6, 30, 40], nchw, base(6).momentum(None), Fused::None, 0, one),
        (vec![4, 6, 30, 40], nchw, base(6).check_finite(true), Fused::AddRelu, 0, one),
        (vec![3, 2, 64, 64], nchw, base(2).momentum(None), Fused::Relu, 0, merged),
        (vec![3, 2, 64, 64], nchw, base(2).check_finite(true), Fused::None, 0, merged),
        // More values a channel than a workgroup walks: merged where the
        // runs are long, in vec4s or scalars (at an odd offset).
        (vec![3, 2, 64, 64], nchw, base(2), Fused::None, 0, merged),
        (vec![2, 3, 70, 70], nchw, base(3).momentum(Some(0.3)), Fused::Relu, 5, merged),
        (vec![2, 3, 96, 96], nchw, base(3).affine(false), Fused::AddRelu, 0, merged),
        (vec![1, 2, 9000], nchw, base(2).track_running_stats(false), Fused::None, 2, merged),
        // Runs under 16 values, channels-last, 2-D: column blocks of whole
        // channels (runs of 10, 3 channels a multiple of four wide, 300
        // channels over two blocks of 64 vec4 columns).
        (vec![4, 3, 2, 5], nchw, base(3), Fused::None, 0, passes),
        (vec![4, 6, 30, 40], nhwc, base(6), Fused::None, 0, passes),
        (vec![64, 30, 2, 5], nchw, base(30).momentum(Some(0.2)), Fused::Relu, 1, passes),
        (vec![5, 300, 3, 3], nhwc, base(300), Fused::AddRelu, 0, passes),
        (vec![900, 12], nchw, base(12).affine(false), Fused::None, 4, passes),
        (vec![700, 3], nhwc, base(3), Fused::Relu, 0, passes),
    ];
    for (shape, layout, config, fused, offset, path) in cases {
        let commits_alone = !config.track_running_stats || (config.momentum.is_some() && !config.check_finite);
        let c = shape[1];
        let len: usize = shape.iter().product();
        // A ramp along the tensor, so that the partials of a channel's
        // slices have means several deviations apart.
        let ramp = |(i, v): (usize, f32)| v + 12.0 * i as f32 / len as f32;
        let x: Vec<f32> = rng.normal_vec(len, 2.0, 3.0).into_iter().enumerate().map(ramp).collect();
        let z = rng.normal_vec(len, 0.0, 1.0);
        let mut state = BatchNormState::initial(c);
        state.weight = rng.normal_vec(c, 1.0, 0.3);
        state.bias = rng.normal_vec(c, 0.0, 0.3);
        state.num_batches_tracked = 3;
        let bn = BatchNorm::new(ctx, config.clone()).unwrap();
        bn.write_state(&state).unwrap();
        let padded = |v: &[f32]| {
            let mut all = vec![0.25; offset as usize];
            all.extend_from_slice(v);
            Tensor::from_slice(ctx, &all, &[all.len()], Layout::Nchw).unwrap()
        };
        let dy = rng.normal_vec(len, 0.0, 1.0);
        let (xt, zt, yt) = (padded(&x), padded(&z), padded(&vec![0.0; len]));
        let (dyt, dxt, dzt) = (padded(&dy), padded(&vec![0.0; len]), padded(&vec![0.0; len]));
        fn view<'a>(t: &'a Tensor, shape: &[usize], layout: Layout, offset: u64) -> TensorView<'a> {
            TensorView::new(&t.buffer, shape).with_layout(layout).at_offset(offset * 4)
        }
        let z_view = view(&zt, &shape, layout, offset);
        let epilogue = epilogue_of(fused, &z_view, None);
        let before = wgpu_norm::recorded_dispatches();
        bn.context()
            .run(|e| {
                bn.forward(
                    e,
                    &view(&xt, &shape, layout, offset),
                    &view(&yt, &shape, layout, offset),
                    Mode::Training,
                    epilogue,
                )
            })
            .unwrap();
        let dispatches = wgpu_norm::recorded_dispatches() - before;
        let what = format!("{shape:?} {layout:?} {fused:?} at {offset}, last merge {last_merge}");
        let forward = path.records(dispatches, true, commits_alone, last_merge);
        assert!(forward, "{what}: {dispatches} dispatches, {path:?}");
        let args = BatchNormArgs {
            weight: config.affine.then_some(&state.weight[..]),
            bias: config.affine.then_some(&state.bias[..]),
            running_mean: config.track_running_stats.then_some(&state.running_mean[..]),
            running_var: config.track_running_stats.then_some(&state.running_var[..]),
            training: true,
            momentum: config.momentum.map(f64::from),
            num_batches_tracked: state.num_batches_tracked,
            eps: f64::from(config.eps),
            fused,
            ..BatchNormArgs::new(&shape, layout)
        };
        let want = reference::batch_norm_forward(&args, &x, (fused == Fused::AddRelu).then_some(&z[..]));
        assert_close(&format!("{what} y"), &yt.read(ctx).unwrap()[offset as usize..], &want.y);
        let (mean, invstd) = bn.read_saved().unwrap();
        assert_close(&format!("{what} save_mean"), &mean, &want.save_mean);
        assert_close(&format!("{what} save_invstd"), &invstd, &want.save_invstd);
        let after = bn.read_state().unwrap();
        if let (Some(rm), Some(rv)) = (&want.running_mean, &want.running_var) {
            assert_close(&format!("{what} running_mean"), &after.running_mean, rm);
            assert_close(&format!("{what} running_var"), &after.running_var, rv);
        }
        assert_eq!(after.num_batches_tracked, want.num_batches_tracked, "{what}");
        for mode in [Mode::Training, Mode::Eval] {
            let v = |t| view(t, &shape, layout, offset);
            let dz_view = v(&dzt);
            let epilogue = epilogue_of(fused, &z_view, Some(&dz_view));
            let before = wgpu_norm::recorded_dispatches();
            bn.context().run(|e| bn.backward(e, &v(&xt), &v(&dyt), &v(&dxt), mode, epilogue)).unwrap();
            let dispatches = wgpu_norm::recorded_dispatches() - before;
            let what = format!("{what} {mode:?} backward");
            let training = mode == Mode::Training || !config.track_running_stats;
            let recorded = path.records(dispatches, false, true, last_merge);
            assert!(recorded, "{what}: {dispatches} dispatches, {path:?}");
            let args = BatchNormArgs {
                running_mean: config.track_running_stats.then_some(&after.running_mean[..]),
                running_var: config.track_running_stats.then_some(&after.running_var[..]),
                training,
                ..args
            };
            let want = reference::batch_norm_backward(&args, &x, (fused == Fused::AddRelu).then_some(&z[..]), &dy);
            assert_close(&format!("{what} dx"), &dxt.read(ctx).unwrap()[offset as usize..], &want.dx);
            let (dw, db) = bn.affine().read_grads().unwrap();
            assert_close(&format!("{what} dweight"), &dw, &want.dweight);
            assert_close(&format!("{what} dbias"), &db, &want.dbias);
            if let Some(dz) = &want.dz {
                assert_close(&format!("{what} dz"), &dzt.read(ctx).unwrap()[offset as usize..], dz);
            }
        }
    }
}

/// GPUs take the family's forward of contiguous stat rows of up to 8,192
/// values in one dispatch (row_forward.wgsl's row_forward; InstanceNorm's
/// running statistics one more), GroupNorm's and InstanceNorm's backward
/// over channels-first groups in two (group_backward, then
/// instance_columns), and LayerNorm's and RMSNorm's backward of such rows
/// in two (row_backward, then the column sums, whose last workgroups merge
/// them; three with a merge kernel), and the forward of channels-last
/// groups in two (statistics whose last workgroups merge, then the apply),
/// and GroupNorm's and InstanceNorm's backward of channels-last groups and
/// of longer channels-first ones in two (sums per instance whose last
/// workgroups go on to the rows' coefficients, dweight and dbias, then dx):
/// rows of 5 to 3,000 values over one or two dimensions, with and without
/// weight and bias, GroupNorm and InstanceNorm in both layouts, with the
/// last workgroups merging and without, against the reference (forward and
/// the backward after it).
#[test]
fn family_team_kernels_on_gpus_match_the_reference() {
    use wgpu_norm::{GroupNorm, GroupNormConfig, InstanceNorm, InstanceNormConfig, RmsNorm, RmsNormConfig};
    let _gpu_path = on_gpu_path();
    let ctx = ctx();
    let mut rng = Rng(80);
    for last_merge in [false, true] {
        ctx.set_last_workgroup_merges(last_merge).unwrap();
        layer_norm_case(&mut rng, &[6, 5, 7], 1, 2.0, true, true);
        layer_norm_case(&mut rng, &[3, 4, 6, 5], 2, -1.0, true, false);
        layer_norm_case(&mut rng, &[9, 5], 1, 0.0, false, false);
        // Far from zero.
        layer_norm_case(&mut rng, &[16, 3, 40], 1, 3.0e4, true, true);
        rms_norm_case(&mut rng, &[4, 3000], 1, None, true);
        rms_norm_case(&mut rng, &[7, 3, 11], 1, Some(1e-3), false);
        // Channels-last groups, whose statistics' last workgroups merge
        // them per sample: groups of 4, 2 and 1 channels as lanes, 3
        // channels regrouped in rows of 12 values, 1,040 channels as lanes
        // over two column blocks (of 1,024 and 16 channels: whole groups of
        // two), and groups of 32 channels in vec4 runs over two blocks.
        group_norm_case(&mut rng, &[3, 8, 9, 10], 2, Layout::Nhwc, 1.0, true);
        // Far from zero, where each row's centre is its mean rounded to f32.
        group_norm_case(&mut rng, &[3, 8, 9, 10], 4, Layout::Nhwc, 3.0e4, true);
        group_norm_case(&mut rng, &[2, 12, 5, 7], 6, Layout::Nhwc, -3.0, false);
        group_norm_case(&mut rng, &[4, 3, 4, 4], 3, Layout::Nhwc, 0.5, true);
        group_norm_case(&mut rng, &[2, 1040, 2, 3], 520, Layout::Nhwc, 2.0, true);
        group_norm_case(&mut rng, &[2, 1280, 2, 3], 40, Layout::Nhwc, -1.0, true);
        instance_norm_case(&mut rng, &[3, 20, 6, 6], Layout::Nhwc, Some(0.2));
        // Channels-first groups longer than a team takes: sums per instance
        // in lanes of a workgroup (10,240 values a group), and in slices
        // (planar: 65,536 and 36,864 values an instance), whose last
        // workgroups sweep every sample's rows and channels.
        group_norm_case(&mut rng, &[3, 4, 64, 80], 2, Layout::Nchw, 1.0, true);
        instance_norm_case(&mut rng, &[2, 3, 256, 256], Layout::Nchw, Some(0.2));
        group_norm_case(&mut rng, &[3, 4, 192, 192], 2, Layout::Nchw, -1.0, true);
    }
    group_norm_case(&mut rng, &[3, 8, 9, 10], 4, Layout::Nchw, 1.0, true);
    group_norm_case(&mut rng, &[2, 12, 5, 7], 3, Layout::Nchw, -3.0, false);
    group_norm_case(&mut rng, &[2, 64, 7, 7], 32, Layout::Nchw, 0.5, true);
    instance_norm_case(&mut rng, &[3, 5, 7, 7], Layout::Nchw, Some(0.2));
    let forward_dispatches = |record: &dyn Fn(&mut wgpu::CommandEncoder) -> wgpu_norm::Result<()>| {
        let before = wgpu_norm::recorded_dispatches();
        ctx.run(record).unwrap();
        wgpu_norm::recorded_dispatches() - before
    };
    let t = |shape: &[usize], layout| Tensor::zeros(ctx, shape, layout).unwrap();
    let four = |shape: &[usize]| {
        (t(shape, Layout::Nchw), t(shape, Layout::Nchw), t(shape, Layout::Nchw), t(shape, Layout::Nchw))
    };
    let (x, y, dy, dx) = four(&[6, 5, 7]);
    let ln = LayerNorm::new(ctx, LayerNormConfig::new(&[7])).unwrap();
    assert_eq!(forward_dispatches(&|e| ln.forward(e, &x.view(), &y.view())), 1, "layer norm, rows of 7");
    let (x4, y4, dy4, dx4) = four(&[4, 3000]);
    let rms = RmsNorm::new(ctx, RmsNormConfig::new(&[3000])).unwrap();
    assert_eq!(forward_dispatches(&|e| rms.forward(e, &x4.view(), &y4.view())), 1, "rms norm, rows of 3,000");
    for (last_merge, dispatches) in [(false, 3), (true, 2)] {
        ctx.set_last_workgroup_merges(last_merge).unwrap();
        let backward = |e: &mut wgpu::CommandEncoder| ln.backward(e, &x.view(), &dy.view(), &dx.view());
        assert_eq!(forward_dispatches(&backward), dispatches, "layer norm backward, rows of 7, {last_merge}");
        let backward = |e: &mut wgpu::CommandEncoder| rms.backward(e, &x4.view(), &dy4.view(), &dx4.view());
        assert_eq!(forward_dispatches(&backward), dispatches, "rms norm backward, rows of 3,000, {last_merge}");
    }
    let on_and_off = [(Layout::Nchw, 1, 2, true), (Layout::Nhwc, 2, 2, true), (Layout::Nhwc, 3, 5, false)];
    for (layout, forward, backward, last_merge) in on_and_off {
        ctx.set_last_workgroup_merges(last_merge).unwrap();
        let shape = [3, 8, 9, 10];
        let (x, y, dy, dx) = (t(&shape, layout), t(&shape, layout), t(&shape, layout), t(&shape, layout));
        let gn = GroupNorm::new(ctx, GroupNormConfig::new(4, 8)).unwrap();
        assert_eq!(forward_dispatches(&|e| gn.forward(e, &x.view(), &y.view())), forward, "group norm {layout:?}");
        let record = |e: &mut wgpu::CommandEncoder| gn.backward(e, &x.view(), &dy.view(), &dx.view());
        assert_eq!(forward_dispatches(&record), backward, "group norm {layout:?} backward");
    }
    // Channels-first groups longer than a team takes: the sums per
    // instance, in lanes of a workgroup (10,240 values a group) or in
    // slices (planar, 131,072), whose last workgroups sweep, then dx.
    ctx.set_last_workgroup_merges(true).unwrap();
    for shape in [[3, 4, 64, 80], [2, 4, 256, 256]] {
        let (x, y, dy, dx) = four(&shape);
        let gn = GroupNorm::new(ctx, GroupNormConfig::new(2, 4)).unwrap();
        ctx.run(|e| gn.forward(e, &x.view(), &y.view())).unwrap();
        let record = |e: &mut wgpu::CommandEncoder| gn.backward(e, &x.view(), &dy.view(), &dx.view());
        assert_eq!(forward_dispatches(&record), 2, "group norm {shape:?} backward");
    }
    let (x, y) = (t(&[3, 5, 7, 7], Layout::Nchw), t(&[3, 5, 7, 7], Layout::Nchw));
    let inorm = InstanceNorm::new(ctx, InstanceNormConfig::new(5).track_running_stats(true)).unwrap();
    let forward = |e: &mut wgpu::CommandEncoder| inorm.forward(e, &x.view(), &y.view(), true);
    assert_eq!(forward_dispatches(&forward), 2, "instance norm with running statistics");
    let (dy, dx) = (t(&[3, 5, 7, 7], Layout::Nchw), t(&[3, 5, 7, 7], Layout::Nchw));
    let backward = |e: &mut wgpu::CommandEncoder| inorm.backward(e, &x.view(), &dy.view(), &dx.view(), true);
    assert_eq!(forward_dispatches(&backward), 2, "instance norm backward");
}

/// x and dy (x drawn about `mean` with spread `std`, dy about 0 with
/// spread 1) with x, y, dy and dx tensors for each of `shapes`: the inputs
/// the count tests below alternate between.
type Case = (Vec<f32>, Vec<f32>, [Tensor; 4]);
fn alternating_cases(rng: &mut Rng, shapes: &[(Vec<usize>, Layout)], (mean, std): (f32, f32)) -> Vec<Case> {
    shapes
        .iter()
        .map(|(shape, layout)| {
            let len: usize = shape.iter().product();
            let (x, dy) = (rng.normal_vec(len, mean, std), rng.normal_vec(len, 0.0, 1.0));
            let t = |v: &[f32]| Tensor::from_slice(ctx(), v, shape, *layout).unwrap();
            let tensors = [t(&x), t(&vec![0.0; len]), t(&dy), t(&vec![0.0; len])];
            (x, dy, tensors)
        })
        .collect()
}

/// Records `rounds` calls of `record` into one encoder, round k on
/// `cases[k % 2]`'s tensors, and returns the dispatches they recorded.
fn record_alternating(
    rounds: usize,
    cases: &[Case],
    record: impl Fn(&mut wgpu::CommandEncoder, &[Tensor; 4]) -> wgpu_norm::Result<()>,
) -> u64 {
    let before = wgpu_norm::recorded_dispatches();
    ctx()
        .run(|e| {
            for k in 0..rounds {
                record(e, &cases[k % 2].2)?;
            }
            Ok(())
        })
        .unwrap();
    wgpu_norm::recorded_dispatches() - before
}

/// A reduction whose last workgroup merges leaves its counts at zero for
/// the next dispatch: 24 training forwards and backwards of one layer in
/// one encoder on the GPU path, alternating a channels-last and a 2-D
/// tensor (their blocks and members differ), against the reference applied
/// as many times: the running statistics and the counter after all of
/// them, and the last y, dx, dweight and dbias.
#[test]
fn last_merge_counts_start_from_zero_in_every_dispatch() {
    let _gpu_path = on_gpu_path();
    let ctx = ctx();
    ctx.set_last_workgroup_merges(true).unwrap();
    let mut rng = Rng(83);
    let c = 12;
    let shapes: [(Vec<usize>, Layout); 2] = [(vec![16, c, 10, 10], Layout::Nhwc), (vec![300, c], Layout::Nchw)];
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(c).momentum(Some(0.2))).unwrap();
    let mut state = BatchNormState::initial(c);
    state.weight = rng.normal_vec(c, 1.0, 0.3);
    state.bias = rng.normal_vec(c, 0.0, 0.3);
    bn.write_state(&state).unwrap();
    let cases = alternating_cases(&mut rng, &shapes, (2.0, 3.0));
    let rounds = 24;
    let dispatches = record_alternating(rounds, &cases, |e, [x, y, dy, dx]| {
        bn.forward(e, &x.view(), &y.view(), Mode::Training, Epilogue::None)?;
        bn.backward(e, &x.view(), &dy.view(), &dx.view(), Mode::Training, Epilogue::None)
    });
    assert_eq!(dispatches, 4 * rounds as u64, "two dispatches a pass");
    let (mut running_mean, mut running_var) = (state.running_mean.clone(), state.running_var.clone());
    let mut last = None;
    for k in 0..rounds {
        let ((shape, layout), (x, dy, _)) = (&shapes[k % 2], &cases[k % 2]);
        let args = BatchNormArgs {
            weight: Some(&state.weight),
            bias: Some(&state.bias),
            running_mean: Some(&running_mean),
            running_var: Some(&running_var),
            training: true,
            momentum: Some(0.2),
            num_batches_tracked: k as u64,
            ..BatchNormArgs::new(shape, *layout)
        };
        let f = reference::batch_norm_forward(&args, x, None);
        let b = reference::batch_norm_backward(&args, x, None, dy);
        let narrow = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        (running_mean, running_var) =
            (narrow(f.running_mean.as_ref().unwrap()), narrow(f.running_var.as_ref().unwrap()));
        last = Some((f, b));
    }
    let after = bn.read_state().unwrap();
    let widen = |v: &[f32]| v.iter().map(|&a| f64::from(a)).collect::<Vec<f64>>();
    assert_close("running_mean", &after.running_mean, &widen(&running_mean));
    assert_close("running_var", &after.running_var, &widen(&running_var));
    assert_eq!(after.num_batches_tracked, rounds as u64);
    let (f, b) = last.unwrap();
    let [_, y, _, dx] = &cases[(rounds - 1) % 2].2;
    assert_close("last y", &y.read(ctx).unwrap(), &f.y);
    assert_close("last dx", &dx.read(ctx).unwrap(), &b.dx);
    let (dw, db) = bn.affine().read_grads().unwrap();
    assert_close("last dweight", &dw, &b.dweight);
    assert_close("last dbias", &db, &b.dbias);
}

/// The same for GroupNorm's channels-last backward, whose last workgroups
/// also count the sweeps over samples (finish_instances.wgsl): six
/// forwards and backwards of one layer in one encoder, alternating two
/// batches of 1,040 channels (two column blocks, 2 and 3 samples, so one
/// shape's sweep counts sit where the other's block counts do), against
/// the reference of the last.
#[test]
fn group_norm_sweep_counts_start_from_zero_in_every_dispatch() {
    use wgpu_norm::{GroupNorm, GroupNormConfig};
    use wgpu_norm_reference::reference::GroupNormArgs;
    let _gpu_path = on_gpu_path();
    let ctx = ctx();
    ctx.set_last_workgroup_merges(true).unwrap();
    let mut rng = Rng(84);
    let (c, groups) = (1040, 520);
    let gn = GroupNorm::new(ctx, GroupNormConfig::new(groups, c)).unwrap();
    let (w, b) = (rng.normal_vec(c, 1.0, 0.5), rng.normal_vec(c, 0.0, 0.5));
    gn.affine().write_weight(&w).unwrap();
    gn.affine().write_bias(&b).unwrap();
    let shapes = [(vec![2, c, 2, 3], Layout::Nhwc), (vec![3, c, 1, 2], Layout::Nhwc)];
    let cases = alternating_cases(&mut rng, &shapes, (1.0, 2.0));
    let rounds = 6;
    let dispatches = record_alternating(rounds, &cases, |e, [x, y, dy, dx]| {
        gn.forward(e, &x.view(), &y.view())?;
        gn.backward(e, &x.view(), &dy.view(), &dx.view())
    });
    assert_eq!(dispatches, 4 * rounds as u64, "two dispatches a pass");
    let last = (rounds - 1) % 2;
    let (x, dy, [_, y, _, dx]) = &cases[last];
    let args = GroupNormArgs {
        shape: &shapes[last].0,
        layout: Layout::Nhwc,
        num_groups: groups,
        weight: Some(&w),
        bias: Some(&b),
        eps: 1e-5,
    };
    let f = reference::group_norm_forward(&args, x);
    let g = reference::group_norm_backward(&args, x, dy);
    let (dw, db) = gn.affine().read_grads().unwrap();
    assert_close("last y", &y.read(ctx).unwrap(), &f.y);
    assert_close("last dx", &dx.read(ctx).unwrap(), &g.dx);
    assert_close("last dweight", &dw, &g.dweight);
    assert_close("last dbias", &db, &g.dbias);
}
