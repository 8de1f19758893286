//! Property test: random shapes, layouts, parameters, fusions and modes
//! against the f64 reference, for a bounded time. Each case is drawn from its
//! own seed; a failure names it, and `WGPU_NORM_SEED=<seed>` replays exactly
//! that case. Seeds that once failed are pinned in `PINNED` and always run.

mod common;

use std::time::{Duration, Instant};

use common::{assert_close, ctx, Rng};
use wgpu_norm::{Access, BatchNorm, BatchNormConfig, BatchNormState, Layout, Mode, Reduction, Tensor};
use wgpu_norm_reference::reference::{self, BatchNormArgs, Fused};

/// Seeds of cases that failed once, kept as regressions.
/// 1592590442: 1000 +- 0.01, beyond f32's reach for the mean (see `case`).
/// 1592591785: channels-last, 128 per-invocation partials of one or two
/// values each, merged in one chain: the mean rounded past 1e-3 of y.
const PINNED: &[u64] = &[1592590442, 1592591785];
/// Wall-clock budget of the random part on the CI machine (2 cores, lavapipe).
const BUDGET: Duration = Duration::from_secs(8);

fn case(seed: u64) {
    let ctx = ctx();
    // Both reduction strategies on every adapter: even seeds take the
    // GPUs' workgroup tree, odd ones the CPU adapters' per-invocation walk.
    let reduction = if seed.is_multiple_of(2) { Reduction::Tree } else { Reduction::PerInvocation };
    ctx.set_reduction(reduction);
    // Both accesses where the device has 64-bit integers, by the seed's
    // second bit.
    let int64 = ctx.device().features().contains(wgpu::Features::SHADER_INT64);
    let access = if int64 && (seed / 2).is_multiple_of(2) { Access::Words64 } else { Access::Floats };
    ctx.set_access(access).unwrap();
    let mut rng = Rng(seed);
    let rank = rng.range(2, 5);
    let mut shape: Vec<usize> = (0..rank).map(|_| rng.range(1, if rank > 3 { 6 } else { 40 })).collect();
    shape[1] = rng.range(1, 12);
    if shape.iter().product::<usize>() / shape[1] < 2 {
        shape[0] += 1;
    }
    let layout = if rng.uniform() < 0.5 { Layout::Nchw } else { Layout::Nhwc };
    let fused = [Fused::None, Fused::Relu, Fused::AddRelu][rng.range(0, 2)];
    let training = rng.uniform() < 0.6;
    let config = BatchNormConfig::new(shape[1])
        .eps([1e-5, 1e-3, 0.1][rng.range(0, 2)])
        .momentum(if rng.uniform() < 0.25 { None } else { Some(rng.uniform() as f32) })
        .affine(rng.uniform() < 0.8)
        .track_running_stats(rng.uniform() < 0.8);
    // |mean| / std stays at most 1e4: beyond that an f32 mean cannot hold
    // the digits that (x - mean) needs (1000 +- 0.01 misses the tolerance in
    // y by 2x: seed 1592590442 found it), in PyTorch's f32 kernels too.
    let offset: f32 = [0.0, 3.0, -50.0, 1000.0][rng.range(0, 3)];
    let scale: f32 = [1.0f32, 1e-2, 10.0][rng.range(0, 2)].max(offset.abs() * 1e-4);
    let len: usize = shape.iter().product();
    let c = shape[1];
    let mut x = rng.normal_vec(len, offset, scale);
    bound_conditioning(&mut x, c, layout, len / (shape[0] * c));
    let z = rng.normal_vec(len, 0.0, 1.0);
    let dy0 = rng.normal_vec(len, 0.0, 1.0);
    let mut state = BatchNormState::initial(c);
    state.weight = rng.normal_vec(c, 1.0, 0.5);
    state.bias = rng.normal_vec(c, 0.0, 0.5);
    state.running_mean = rng.normal_vec(c, offset, scale);
    state.running_var = (0..c).map(|_| scale * scale * (0.2 + rng.uniform() as f32)).collect();
    state.num_batches_tracked = rng.range(0, 9) as u64;
    let args = BatchNormArgs {
        weight: config.affine.then_some(&state.weight[..]),
        bias: config.affine.then_some(&state.bias[..]),
        running_mean: config.track_running_stats.then_some(&state.running_mean[..]),
        running_var: config.track_running_stats.then_some(&state.running_var[..]),
        training,
        momentum: config.momentum.map(f64::from),
        num_batches_tracked: state.num_batches_tracked,
        eps: f64::from(config.eps),
        fused,
        ..BatchNormArgs::new(&shape, layout)
    };
    let zr = (fused == Fused::AddRelu).then_some(&z[..]);
    let f = reference::batch_norm_forward(&args, &x, zr);
    // A pre-activation within f32 rounding of the ReLU's kink may land on
    // either side (with |mean| / std = 1e4 that rounding reaches 1e-3); such
    // elements get no upstream gradient.
    let dy: Vec<f32> =
        dy0.iter().zip(&f.y).map(|(&g, &y)| if fused != Fused::None && y.abs() < 1e-2 { 0.0 } else { g }).collect();
    let b = reference::batch_norm_backward(&args, &x, zr, &dy);

    let bn = BatchNorm::new(ctx, config.clone()).unwrap();
    bn.write_state(&state).unwrap();
    let t = |v: &[f32]| Tensor::from_slice(ctx, v, &shape, layout).unwrap();
    let (xt, zt, dyt) = (t(&x), t(&z), t(&dy));
    let (yt, dxt, dzt) = (t(&vec![0.0; len]), t(&vec![0.0; len]), t(&vec![0.0; len]));
    let (zv, dzv, mode) = (zt.view(), dzt.view(), Mode::from_training(training));
    ctx.run(|e| {
        bn.forward(e, &xt.view(), &yt.view(), mode, fused.epilogue(Some(&zv), None).unwrap())?;
        bn.backward(e, &xt.view(), &dyt.view(), &dxt.view(), mode, fused.epilogue(Some(&zv), Some(&dzv)).unwrap())
    })
    .unwrap();
    let what = |n: &str| {
        format!(
            "seed {seed} ({shape:?} {layout:?} {fused:?} training={training} {reduction:?} {access:?} {config:?}): {n}"
        )
    };
    assert_close(&what("y"), &yt.read(ctx).unwrap(), &f.y);
    assert_close(&what("dx"), &dxt.read(ctx).unwrap(), &b.dx);
    let (dw, db) = bn.affine().read_grads().unwrap();
    assert_close(&what("dweight"), &dw, &b.dweight);
    assert_close(&what("dbias"), &db, &b.dbias);
    if let Some(dz) = &b.dz {
        assert_close(&what("dz"), &dzt.read(ctx).unwrap(), dz);
    }
    let after = bn.read_state().unwrap();
    if let (Some(rm), Some(rv)) = (&f.running_mean, &f.running_var) {
        assert_close(&what("running_mean"), &after.running_mean, rm);
        assert_close(&what("running_var"), &after.running_var, rv);
    }
    assert_eq!(after.num_batches_tracked, f.num_batches_tracked, "{}", what("num_batches_tracked"));
}

/// The bound above holds for `scale`, but a channel of a few values can draw
/// a sample std far below it (seed 1592590942: four values at 1000 with std
/// 0.022, |mean| / std = 4.5e4, failed under the tree reduction): stretches
/// such a channel's deviations from its mean until |mean| / std = 1e4.
fn bound_conditioning(x: &mut [f32], c: usize, layout: Layout, inner: usize) {
    let channel = |idx: usize| match layout {
        Layout::Nchw => idx / inner % c,
        Layout::Nhwc => idx % c,
    };
    for ch in 0..c {
        let idx: Vec<usize> = (0..x.len()).filter(|&i| channel(i) == ch).collect();
        let m = idx.len() as f64;
        let mean = idx.iter().map(|&i| f64::from(x[i])).sum::<f64>() / m;
        let std = (idx.iter().map(|&i| (f64::from(x[i]) - mean).powi(2)).sum::<f64>() / m).sqrt();
        let wanted = mean.abs() * 1e-4;
        if std > 0.0 && std < wanted {
            for &i in &idx {
                x[i] = (mean + (f64::from(x[i]) - mean) * wanted / std) as f32;
            }
        }
    }
}

#[test]
fn random_batch_norm_cases_match_the_reference() {
    if let Ok(seed) = std::env::var("WGPU_NORM_SEED") {
        case(seed.parse().expect("WGPU_NORM_SEED must be an integer"));
        return;
    }
    for &seed in PINNED {
        case(seed);
    }
    let start = Instant::now();
    let mut ran = 0u64;
    while start.elapsed() < BUDGET && ran < 3000 {
        case(0x5EED_0000 + ran);
        ran += 1;
    }
    assert!(ran >= 20, "only {ran} random cases ran in {BUDGET:?}");
    eprintln!("{ran} random cases passed");
}
