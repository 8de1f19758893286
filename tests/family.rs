//! The normalization family on the GPU against the f64 reference: every
//! golden case of the four ops, randomized shapes (short rows, long rows,
//! large offsets, both GroupNorm layouts, InstanceNorm with running
//! statistics), and one test per error.

mod common;

use std::path::PathBuf;

use common::family::{group_norm_case, instance_norm_case, layer_norm_case, read, rms_norm_case, upload, zeros};
use common::{assert_close, ctx, Rng, TOLERANCE};
use wgpu_norm::{
    Error, GroupNorm, GroupNormConfig, InstanceNorm, InstanceNormConfig, InstanceNormState, LayerNorm, LayerNormConfig,
    Layout, RmsNorm, RmsNormConfig, Tensor, TensorView,
};
use wgpu_norm_reference::check::{check_file, Outcome};
use wgpu_norm_reference::golden::collect_case_files;
use wgpu_norm_reference::reference::{self, InstanceNormArgs, LayerNormArgs};

const FAMILY: [&str; 4] = ["layer_norm", "rms_norm", "group_norm", "instance_norm"];

#[test]
fn every_family_golden_case_passes_on_the_gpu() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut checked = 0;
    for path in collect_case_files(&[dir]) {
        let report = check_file(ctx(), &path.unwrap(), TOLERANCE);
        if !FAMILY.contains(&report.op.as_str()) {
            continue;
        }
        match &report.outcome {
            Outcome::Pass { .. } => {
                for t in ["y", "dx", "dweight"] {
                    assert!(report.errors.contains_key(t), "{}: {t} not compared", report.name);
                }
                checked += 1;
            }
            other => panic!("{}: {other:?} (all: {:?})", report.name, report.errors),
        }
    }
    assert!(checked >= 8, "only {checked} family cases passed");
}

#[test]
fn layer_norm_short_rows() {
    let mut rng = Rng(11);
    for _ in 0..4 {
        let rows = rng.range(1, 300);
        let d = rng.range(32, 64);
        layer_norm_case(&mut rng, &[rows, d], 1, 0.0, true, true);
    }
    layer_norm_case(&mut rng, &[3, 5, 7], 2, 2.0, true, false);
    layer_norm_case(&mut rng, &[6, 1], 1, 0.0, true, true);
    layer_norm_case(&mut rng, &[2, 3, 4, 3], 3, 0.0, false, true);
}

#[test]
fn layer_norm_long_rows_and_large_offsets() {
    let mut rng = Rng(12);
    layer_norm_case(&mut rng, &[3, 20011], 1, 0.0, true, true);
    layer_norm_case(&mut rng, &[2, 4, 300], 1, 1e4, true, true);
    layer_norm_case(&mut rng, &[1, 40, 50], 2, -3e3, true, true);
    layer_norm_case(&mut rng, &[700], 1, 1e4, true, true);
}

/// Rows around the one-pass forward's limits on CPU adapters (src/resident.rs):
/// one invocation per row up to 128 values, a subgroup per row up to 512
/// (its last vec4 masked in some lanes at 132 and 260), the two passes past
/// that; more rows than one sweep of the grid; means of 1e4 (std 1.5).
#[test]
fn layer_norm_rows_around_the_one_pass_limits() {
    let mut rng = Rng(14);
    for d in [4, 128, 132, 260, 512, 516] {
        layer_norm_case(&mut rng, &[3, d], 1, 1e4, true, true);
        rms_norm_case(&mut rng, &[5, d], 1, None, d != 132);
    }
    layer_norm_case(&mut rng, &[9000, 4], 1, 0.0, false, true);
    layer_norm_case(&mut rng, &[2, 550, 132], 1, -20.0, true, false);
    rms_norm_case(&mut rng, &[1100, 260], 1, Some(1e-6), true);
}

#[test]
fn rms_norm_short_and_long_rows() {
    let mut rng = Rng(13);
    rms_norm_case(&mut rng, &[257, 48], 1, None, true);
    rms_norm_case(&mut rng, &[5, 33], 1, Some(1e-6), false);
    rms_norm_case(&mut rng, &[2, 20000], 1, None, true);
    rms_norm_case(&mut rng, &[3, 6, 70], 2, Some(1e-5), true);
}

#[test]
fn group_norm_random_shapes_both_layouts() {
    let mut rng = Rng(14);
    for layout in [Layout::Nchw, Layout::Nhwc] {
        group_norm_case(&mut rng, &[2, 6, 5, 7], 3, layout, 0.0, true);
        group_norm_case(&mut rng, &[3, 8, 9], 8, layout, 0.0, true);
        group_norm_case(&mut rng, &[2, 4, 3, 2, 5], 2, layout, 1e4, true);
        group_norm_case(&mut rng, &[4, 6], 2, layout, 0.0, false);
        group_norm_case(&mut rng, &[1, 2, 40, 40], 1, layout, -500.0, true);
        group_norm_case(&mut rng, &[2, 5, 1, 1], 5, layout, 0.0, true);
    }
}

#[test]
fn group_norm_four_values_at_a_time() {
    // The vec4 paths: groups whose runs come in fours (channels-second
    // spatial % 4 == 0, planar and interleaved), and channels-last lanes of
    // four channels in one group (cpg % 4 == 0) or across groups.
    let mut rng = Rng(15);
    for layout in [Layout::Nchw, Layout::Nhwc] {
        group_norm_case(&mut rng, &[2, 8, 4, 7], 4, layout, 3.0, true);
        group_norm_case(&mut rng, &[2, 12, 5], 3, layout, 0.0, true);
        group_norm_case(&mut rng, &[1, 4, 32, 40], 2, layout, -20.0, true);
        group_norm_case(&mut rng, &[3, 16, 6], 16, layout, 0.0, false);
        // Channels not a multiple of four: channels-last rows regrouped in
        // runs of lcm(C, 4) values where the spatial rows divide (6 channels
        // in 20 and 6 rows, 3 channels in 16), else scalar (15 rows).
        group_norm_case(&mut rng, &[2, 6, 4, 5], 3, layout, 1.0, true);
        group_norm_case(&mut rng, &[3, 6, 2, 3], 2, layout, 0.0, true);
        group_norm_case(&mut rng, &[2, 3, 4, 4], 3, layout, -2.0, true);
        group_norm_case(&mut rng, &[2, 3, 5, 3], 3, layout, 0.0, true);
    }
}

#[test]
fn layer_norm_on_views_at_offsets() {
    // x and y at offsets that allow four values per load (8, 12 and 4 values
    // in) and that do not (7 and 3): the same results, nothing written
    // outside y.
    let ctx = ctx();
    let mut rng = Rng(23);
    let shape = [6usize, 16];
    let x = rng.normal_vec(96, 1.0, 1.0);
    let w = rng.normal_vec(16, 1.0, 0.5);
    let b = rng.normal_vec(16, 0.0, 0.5);
    let ln = LayerNorm::new(ctx, LayerNormConfig::new(&[16])).unwrap();
    ln.affine().write_weight(&w).unwrap();
    ln.affine().write_bias(&b).unwrap();
    let args = LayerNormArgs { shape: &shape, normalized_shape: &[16], weight: Some(&w), bias: Some(&b), eps: 1e-5 };
    let want = reference::layer_norm_forward(&args, &x);
    for (x_at, y_at) in [(8usize, 8usize), (12, 4), (7, 8), (8, 3)] {
        let mut arena = vec![0.0f32; x_at];
        arena.extend_from_slice(&x);
        let xb = ctx.upload("arena", &arena).unwrap();
        let yb = ctx.zeros("out arena", 4 * 128).unwrap();
        let xv = wgpu_norm::TensorView::new(&xb, &shape).at_offset(4 * x_at as u64);
        let yv = wgpu_norm::TensorView::new(&yb, &shape).at_offset(4 * y_at as u64);
        ln.context().run(|e| ln.forward(e, &xv, &yv)).unwrap();
        let all: Vec<f32> = ctx.read(&yb, 0, 128).unwrap();
        assert_close(&format!("x at {x_at}, y at {y_at}"), &all[y_at..y_at + 96], &want.y);
        assert!(all[..y_at].iter().chain(&all[y_at + 96..]).all(|&v| v == 0.0), "wrote outside the view");
    }
}

#[test]
fn instance_norm_tracks_running_statistics() {
    let mut rng = Rng(15);
    instance_norm_case(&mut rng, &[3, 4, 50], Layout::Nchw, Some(0.1));
    instance_norm_case(&mut rng, &[2, 5, 6, 7], Layout::Nhwc, Some(0.3));
    instance_norm_case(&mut rng, &[2, 3, 4, 3, 5], Layout::Nchw, None);
    instance_norm_case(&mut rng, &[2, 2, 300], Layout::Nhwc, Some(1.0));
    instance_norm_case(&mut rng, &[2, 8, 3, 5], Layout::Nhwc, Some(0.2));
    instance_norm_case(&mut rng, &[2, 4, 3, 8], Layout::Nchw, Some(0.2));
    instance_norm_case(&mut rng, &[2, 3, 8, 2], Layout::Nhwc, Some(0.2));
}

#[test]
fn instance_norm_defaults_use_input_statistics() {
    let mut rng = Rng(16);
    let shape = [2, 3, 5, 5];
    let x = rng.normal_vec(50 * 3, 0.0, 1.0);
    let inorm = InstanceNorm::new(ctx(), InstanceNormConfig::new(3)).unwrap();
    assert!(!inorm.config().affine && !inorm.config().track_running_stats);
    let (xt, yt) = (upload(&x, &shape, Layout::Nchw), zeros(&shape, Layout::Nchw));
    // Eval mode without tracking normalizes with the input's statistics, as PyTorch.
    inorm.context().run(|e| inorm.forward(e, &xt.view(), &yt.view(), false)).unwrap();
    let args = InstanceNormArgs {
        shape: &shape,
        layout: Layout::Nchw,
        weight: None,
        bias: None,
        running_mean: None,
        running_var: None,
        use_input_stats: true,
        momentum: 0.1,
        eps: 1e-5,
    };
    assert_close("instance_norm defaults: y", &read(&yt), &reference::instance_norm_forward(&args, &x).y);
    assert_eq!(inorm.read_state().unwrap(), InstanceNormState::initial(3));
}

// ---------------------------------------------------------------------------
// Errors: the variant, and nothing written.
// ---------------------------------------------------------------------------

const SENTINEL: f32 = -7.25;

fn sentinel(shape: &[usize]) -> Tensor {
    let len: usize = shape.iter().product();
    upload(&vec![SENTINEL; len.max(1)], &[len.max(1)], Layout::Nchw)
}

fn assert_untouched(t: &Tensor) {
    assert!(read(t).iter().all(|&v| v == SENTINEL), "the output buffer was written");
}

fn ones(shape: &[usize]) -> Tensor {
    let len: usize = shape.iter().product();
    upload(&vec![1.0; len], &[len], Layout::Nchw)
}

#[test]
fn layer_norm_input_not_ending_with_normalized_shape() {
    let ln = LayerNorm::new(ctx(), LayerNormConfig::new(&[4, 5])).unwrap();
    let (x, y) = (ones(&[3, 5, 4]), sentinel(&[3, 5, 4]));
    let err = ln
        .context()
        .run(|e| ln.forward(e, &TensorView::new(&x.buffer, &[3, 5, 4]), &TensorView::new(&y.buffer, &[3, 5, 4])));
    assert!(matches!(err, Err(Error::Shape(_))), "{err:?}");
    assert_untouched(&y);
}

#[test]
fn empty_or_zero_normalized_shape() {
    assert!(matches!(LayerNorm::new(ctx(), LayerNormConfig::new(&[])), Err(Error::Parameter(_))));
    assert!(matches!(RmsNorm::new(ctx(), RmsNormConfig::new(&[3, 0])), Err(Error::Parameter(_))));
}

#[test]
fn rms_norm_input_shorter_than_normalized_shape() {
    let rn = RmsNorm::new(ctx(), RmsNormConfig::new(&[2, 3, 4])).unwrap();
    let (x, y) = (ones(&[3, 4]), sentinel(&[3, 4]));
    let err =
        rn.context().run(|e| rn.forward(e, &TensorView::new(&x.buffer, &[3, 4]), &TensorView::new(&y.buffer, &[3, 4])));
    assert!(matches!(err, Err(Error::Shape(_))), "{err:?}");
    assert_untouched(&y);
}

#[test]
fn groups_that_do_not_divide_channels() {
    let err = GroupNorm::new(ctx(), GroupNormConfig::new(4, 6)).err();
    assert!(matches!(err, Some(Error::Parameter(ref m)) if m.contains("divisible")), "{err:?}");
    assert!(matches!(GroupNorm::new(ctx(), GroupNormConfig::new(0, 6)), Err(Error::Parameter(_))));
}

#[test]
fn group_norm_channel_count_disagrees() {
    let gn = GroupNorm::new(ctx(), GroupNormConfig::new(2, 4)).unwrap();
    let (x, y) = (ones(&[2, 6, 3]), sentinel(&[2, 6, 3]));
    let err = gn
        .context()
        .run(|e| gn.forward(e, &TensorView::new(&x.buffer, &[2, 6, 3]), &TensorView::new(&y.buffer, &[2, 6, 3])));
    assert!(matches!(err, Err(Error::Shape(_))), "{err:?}");
    assert_untouched(&y);
}

#[test]
fn weight_of_the_wrong_length() {
    let ln = LayerNorm::new(ctx(), LayerNormConfig::new(&[8])).unwrap();
    assert!(matches!(ln.affine().write_weight(&[2.0; 7]), Err(Error::Shape(_))));
    assert!(matches!(ln.affine().write_bias(&[2.0; 9]), Err(Error::Shape(_))));
    assert_eq!(ln.affine().read().unwrap(), (vec![1.0; 8], vec![0.0; 8]));
    let rn = RmsNorm::new(ctx(), RmsNormConfig::new(&[2, 4])).unwrap();
    assert!(matches!(rn.affine().write_weight(&[2.0; 4]), Err(Error::Shape(_))));
    assert_eq!(rn.affine().read().unwrap().0, vec![1.0; 8]);
    let gn = GroupNorm::new(ctx(), GroupNormConfig::new(2, 4)).unwrap();
    assert!(matches!(gn.affine().write_weight(&[2.0; 2]), Err(Error::Shape(_))));
    assert_eq!(gn.affine().read().unwrap(), (vec![1.0; 4], vec![0.0; 4]));
    let inorm = InstanceNorm::new(ctx(), InstanceNormConfig::new(3)).unwrap();
    let mut state = InstanceNormState::initial(3);
    state.running_var = vec![2.0; 4];
    assert!(matches!(inorm.write_state(&state), Err(Error::Shape(_))));
    assert_eq!(inorm.read_state().unwrap(), InstanceNormState::initial(3));
}

#[test]
fn instance_norm_one_value_per_instance() {
    let inorm = InstanceNorm::new(ctx(), InstanceNormConfig::new(3)).unwrap();
    let (x, y) = (ones(&[4, 3, 1]), sentinel(&[4, 3, 1]));
    let err = inorm.context().run(|e| {
        inorm.forward(e, &TensorView::new(&x.buffer, &[4, 3, 1]), &TensorView::new(&y.buffer, &[4, 3, 1]), true)
    });
    assert!(matches!(err, Err(Error::OneValuePerChannel(_))), "{err:?}");
    assert_untouched(&y);
}

#[test]
fn backward_without_a_matching_forward() {
    let ln = LayerNorm::new(ctx(), LayerNormConfig::new(&[6])).unwrap();
    let (x, dy, dx) = (ones(&[2, 6]), ones(&[2, 6]), sentinel(&[2, 6]));
    let v = |t| TensorView::new(t, &[2, 6]);
    let err = ln.context().run(|e| ln.backward(e, &v(&x.buffer), &v(&dy.buffer), &v(&dx.buffer)));
    assert!(matches!(err, Err(Error::Parameter(_))), "{err:?}");
    assert_untouched(&dx);
}

#[test]
fn instance_norm_training_backward_after_an_eval_forward() {
    // Eval with running statistics overwrites the saved input statistics.
    let config = InstanceNormConfig::new(2).track_running_stats(true);
    let inorm = InstanceNorm::new(ctx(), config).unwrap();
    let shape = [2, 2, 5];
    let (x, y, dy, dx) = (ones(&shape), ones(&shape), ones(&shape), sentinel(&shape));
    let v = |t| TensorView::new(t, &shape);
    inorm.context().run(|e| inorm.forward(e, &v(&x.buffer), &v(&y.buffer), true)).unwrap();
    inorm.context().run(|e| inorm.forward(e, &v(&x.buffer), &v(&y.buffer), false)).unwrap();
    let err = inorm.context().run(|e| inorm.backward(e, &v(&x.buffer), &v(&dy.buffer), &v(&dx.buffer), true));
    assert!(matches!(err, Err(Error::Parameter(_))), "{err:?}");
    assert_untouched(&dx);
}

#[test]
fn family_output_aliasing_input() {
    let gn = GroupNorm::new(ctx(), GroupNormConfig::new(1, 2)).unwrap();
    let x = ones(&[2, 2, 2]);
    let view = TensorView::new(&x.buffer, &[2, 2, 2]);
    assert!(matches!(gn.context().run(|e| gn.forward(e, &view, &view)), Err(Error::Buffer(_))));
}

// ---------------------------------------------------------------------------
// Cases of the documented format that are not in tests/golden.
// ---------------------------------------------------------------------------

/// A case file's bytes: `inputs` (F32) and `expected` (F64) tensors of
/// `x_shape` (physical) or 1-D, and the metadata.
fn case_bytes(
    meta: &[(&str, &str)],
    x_shape: &[usize],
    inputs: &[(&str, Vec<f32>)],
    expected: &[(&str, Vec<f64>)],
) -> Vec<u8> {
    use safetensors::tensor::{Dtype, TensorView as StView};
    let len: usize = x_shape.iter().product();
    let shape_of = |n: usize| if n == len { x_shape.to_vec() } else { vec![n] };
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, v) in inputs {
        tensors.push((name.to_string(), Dtype::F32, shape_of(v.len()), bytemuck::cast_slice(v).to_vec()));
    }
    for (name, v) in expected {
        tensors.push((name.to_string(), Dtype::F64, shape_of(v.len()), bytemuck::cast_slice(v).to_vec()));
    }
    let views: Vec<(&str, StView)> =
        tensors.iter().map(|(n, d, s, b)| (n.as_str(), StView::new(*d, s.clone(), b).unwrap())).collect();
    let meta = meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    safetensors::serialize(views, Some(meta)).unwrap()
}

/// Builds a case whose expected tensors the f64 reference computes, then
/// checks it on the GPU as `wgpu-norm check` would; returns the compared names.
fn check_unseen(name: &str, meta: &[(&str, &str)], x_shape: &[usize], inputs: &[(&str, Vec<f32>)]) -> Vec<String> {
    use wgpu_norm_reference::golden::{reference_outputs, Case};
    let path = PathBuf::from(format!("{name}.safetensors"));
    let bare = Case::parse(&path, &case_bytes(meta, x_shape, inputs, &[])).unwrap();
    let want: Vec<(&str, Vec<f64>)> = reference_outputs(&bare)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (FAMILY_OUTPUTS.iter().copied().find(|n| *n == k).unwrap(), v))
        .collect();
    let case = Case::parse(&path, &case_bytes(meta, x_shape, inputs, &want)).unwrap();
    let report = wgpu_norm_reference::check::check_case(ctx(), &case, TOLERANCE);
    assert!(matches!(report.outcome, Outcome::Pass { .. }), "{name}: {:?} {:?}", report.outcome, report.errors);
    report.errors.keys().cloned().collect()
}

const FAMILY_OUTPUTS: [&str; 6] = ["y", "mean", "rstd", "dx", "dweight", "dbias"];

#[test]
fn unseen_cases_of_the_documented_format_pass() {
    let mut rng = Rng(17);
    let mut v = |n: usize, offset: f32| rng.normal_vec(n, offset, 1.3);
    let (x, dy, w, b) = (v(180, 1.0), v(180, 0.0), v(6, 1.0), v(6, 0.0));
    let got = check_unseen(
        "gn_nhwc",
        &[
            ("op", "group_norm"),
            ("layout", "NHWC"),
            ("shape", "2,6,5,3"),
            ("channels", "6"),
            ("num_groups", "3"),
            ("eps", "1e-05"),
            ("affine", "true"),
        ],
        &[2, 5, 3, 6],
        &[("x", x), ("dy", dy), ("weight", w), ("bias", b)],
    );
    assert_eq!(got, ["dbias", "dweight", "dx", "mean", "rstd", "y"]);
    let got = check_unseen(
        "gn_nhwc_forward_only",
        &[
            ("op", "group_norm"),
            ("layout", "NHWC"),
            ("shape", "3,4,7"),
            ("channels", "4"),
            ("num_groups", "2"),
            ("eps", "1e-3"),
            ("affine", "false"),
        ],
        &[3, 7, 4],
        &[("x", v(84, -2.0))],
    );
    assert_eq!(got, ["mean", "rstd", "y"]);
    check_unseen(
        "in_1d",
        &[
            ("op", "instance_norm"),
            ("layout", "NCHW"),
            ("shape", "2,4,33"),
            ("channels", "4"),
            ("eps", "1e-05"),
            ("affine", "false"),
        ],
        &[2, 4, 33],
        &[("x", v(264, 5.0)), ("dy", v(264, 0.0))],
    );
    check_unseen(
        "in_3d_nhwc",
        &[
            ("op", "instance_norm"),
            ("layout", "NHWC"),
            ("shape", "2,3,3,4,5"),
            ("channels", "3"),
            ("num_groups", "3"),
            ("eps", "1e-05"),
            ("affine", "true"),
        ],
        &[2, 3, 4, 5, 3],
        &[("x", v(360, 0.0)), ("dy", v(360, 0.0)), ("weight", v(3, 1.0)), ("bias", v(3, 0.0))],
    );
    check_unseen(
        "ln_no_affine",
        &[
            ("op", "layer_norm"),
            ("layout", "contiguous"),
            ("shape", "5,3,40"),
            ("normalized_shape", "3,40"),
            ("eps", "1e-05"),
            ("affine", "false"),
        ],
        &[5, 3, 40],
        &[("x", v(600, 0.0)), ("dy", v(600, 0.0))],
    );
    check_unseen(
        "ln_long_row_offset",
        &[
            ("op", "layer_norm"),
            ("shape", "1,30000"),
            ("normalized_shape", "30000"),
            ("eps", "1e-05"),
            ("affine", "true"),
        ],
        &[1, 30000],
        &[("x", v(30000, 1e3)), ("dy", v(30000, 0.0)), ("weight", v(30000, 1.0)), ("bias", v(30000, 0.0))],
    );
    let got = check_unseen(
        "rms_default_eps_long",
        &[("op", "rms_norm"), ("shape", "3,3000"), ("normalized_shape", "3000"), ("affine", "false")],
        &[3, 3000],
        &[("x", v(9000, 0.0)), ("dy", v(9000, 0.0))],
    );
    assert_eq!(got, ["dweight", "dx", "rstd", "y"]);
    check_unseen(
        "rms_eps_none_two_dims",
        &[("op", "rms_norm"), ("shape", "4,2,50"), ("normalized_shape", "2,50"), ("eps", "none"), ("affine", "true")],
        &[4, 2, 50],
        &[("x", v(400, 0.3)), ("dy", v(400, 0.0)), ("weight", v(100, 1.0))],
    );
}
