//! SyncBatchNorm in one process: K contexts (one device each), one thread per
//! rank, each holding a slice of the batch. The synced result must equal
//! single-device BatchNorm over the whole batch: outputs, dx, dweight, dbias
//! and running statistics, over two training steps, for uneven slices and
//! an empty one.

mod common;

use std::sync::OnceLock;

use common::{normalized_error, Rng};
use wgpu_norm::{
    BatchNorm, BatchNormConfig, BatchNormState, Context, Epilogue, Error, Exchange, Layout, LocalExchange, Mode,
    PartialStats, SyncBatchNorm, Tensor,
};

/// The synced result against the single-device one.
const SYNC_TOLERANCE: f64 = 1e-5;

/// Three devices, created one after the other (lavapipe dislikes devices
/// created in parallel) and shared by the tests.
fn contexts() -> &'static [Context] {
    static CTXS: OnceLock<Vec<Context>> = OnceLock::new();
    CTXS.get_or_init(|| {
        let mut all = vec![common::ctx().clone()];
        for _ in 1..3 {
            all.push(Context::new().expect("no wgpu adapter"));
        }
        all
    })
}

/// What one layer produced over the steps: per step (y, dx, dweight, dbias),
/// then its final state.
struct Run {
    steps: Vec<[Vec<f32>; 4]>,
    state: BatchNormState,
}

struct Batch {
    shape: Vec<usize>,
    layout: Layout,
    /// Per step: (x, dy) of the whole batch.
    data: Vec<(Vec<f32>, Vec<f32>)>,
    state: BatchNormState,
}

impl Batch {
    fn new(shape: &[usize], layout: Layout, steps: usize, seed: u64) -> Batch {
        let mut rng = Rng(seed);
        let len: usize = shape.iter().product();
        let c = shape[1];
        let data: Vec<_> = (0..steps)
            .map(|k| (rng.normal_vec(len, 0.5 * k as f32 - 1.0, 2.0), rng.normal_vec(len, 0.0, 1.0)))
            .collect();
        let mut state = BatchNormState::initial(c);
        state.weight = rng.normal_vec(c, 1.0, 0.5);
        state.bias = rng.normal_vec(c, 0.0, 0.5);
        state.running_mean = rng.normal_vec(c, 0.0, 1.0);
        state.running_var = (0..c).map(|_| 0.5 + rng.uniform() as f32).collect();
        state.num_batches_tracked = 3;
        Batch { shape: shape.to_vec(), layout, data, state }
    }

    /// Values per batch row (both layouts keep a row contiguous).
    fn row(&self) -> usize {
        self.shape[1..].iter().product()
    }
}

/// `step` (forward + backward) on rows `rows` of each step's batch; `grads` reads dweight and dbias.
fn run_steps(
    ctx: &Context,
    batch: &Batch,
    rows: std::ops::Range<usize>,
    mut step: impl FnMut(&Tensor, &Tensor, &Tensor, &Tensor) -> wgpu_norm::Result<()>,
    grads: impl Fn() -> wgpu_norm::Result<(Vec<f32>, Vec<f32>)>,
) -> wgpu_norm::Result<Vec<[Vec<f32>; 4]>> {
    let mut shape = batch.shape.clone();
    shape[0] = rows.len();
    let span = rows.start * batch.row()..rows.end * batch.row();
    let mut out = Vec::new();
    for (x, dy) in &batch.data {
        let xt = Tensor::from_slice(ctx, &x[span.clone()], &shape, batch.layout)?;
        let dyt = Tensor::from_slice(ctx, &dy[span.clone()], &shape, batch.layout)?;
        let yt = Tensor::zeros(ctx, &shape, batch.layout)?;
        let dxt = Tensor::zeros(ctx, &shape, batch.layout)?;
        step(&xt, &dyt, &yt, &dxt)?;
        let (dw, db) = grads()?;
        out.push([yt.read(ctx)?, dxt.read(ctx)?, dw, db]);
    }
    Ok(out)
}

fn single_device(batch: &Batch, config: &BatchNormConfig, training: bool) -> Run {
    let ctx = &contexts()[0];
    let bn = BatchNorm::new(ctx, config.clone()).unwrap();
    bn.write_state(&batch.state).unwrap();
    let steps = run_steps(
        ctx,
        batch,
        0..batch.shape[0],
        |x, dy, y, dx| {
            bn.context().run(|e| bn.forward(e, &x.view(), &y.view(), Mode::from_training(training), Epilogue::None))?;
            bn.context().run(|e| {
                bn.backward(e, &x.view(), &dy.view(), &dx.view(), Mode::from_training(training), Epilogue::None)
            })
        },
        || bn.affine().read_grads(),
    )
    .unwrap();
    Run { steps, state: bn.read_state().unwrap() }
}

/// Runs `rank` on `size` threads, one per rank, each with the next of the
/// contexts and a SyncBatchNorm of `config` in `state`; returns their results
/// in rank order.
fn on_ranks<T: Send>(
    size: usize,
    config: &BatchNormConfig,
    state: &BatchNormState,
    rank: impl Fn(usize, &Context, &SyncBatchNorm<LocalExchange>) -> T + Sync,
) -> Vec<T> {
    let rank = &rank;
    std::thread::scope(|s| {
        let ranks: Vec<_> = LocalExchange::group(size)
            .into_iter()
            .map(|exchange| {
                let k = exchange.rank();
                let ctx = &contexts()[k % contexts().len()];
                let config = config.clone();
                s.spawn(move || {
                    let bn = SyncBatchNorm::new(ctx, config, exchange).unwrap();
                    bn.layer().write_state(state).unwrap();
                    rank(k, ctx, &bn)
                })
            })
            .collect();
        ranks.into_iter().map(|h| h.join().expect("rank panicked")).collect()
    })
}

/// One run per rank, rank k on `sizes[k]` rows (in order) of the batch.
fn synced(batch: &Batch, config: &BatchNormConfig, training: bool, sizes: &[usize]) -> Vec<Run> {
    assert_eq!(sizes.iter().sum::<usize>(), batch.shape[0]);
    let starts: Vec<usize> = sizes.iter().scan(0, |s, n| Some(std::mem::replace(s, *s + n))).collect();
    on_ranks(sizes.len(), config, &batch.state, |rank, ctx, bn| {
        let rows = starts[rank]..starts[rank] + sizes[rank];
        let steps = run_steps(
            ctx,
            batch,
            rows,
            |x, dy, y, dx| {
                bn.forward(&x.view(), &y.view(), Mode::from_training(training))?;
                bn.backward(&x.view(), &dy.view(), &dx.view(), Mode::from_training(training))
            },
            || bn.layer().affine().read_grads(),
        )
        .unwrap();
        Run { steps, state: bn.layer().read_state().unwrap() }
    })
}

fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// The largest normalized difference between the ranks' results and the single device's.
fn max_difference(single: &Run, ranks: &[Run]) -> f64 {
    let mut worst = 0.0f64;
    for (k, want) in single.steps.iter().enumerate() {
        let [y, dx, dweight, dbias] = want;
        // y and dx: the ranks' slices, concatenated in rank order.
        for (t, whole) in [y, dx].into_iter().enumerate() {
            let got: Vec<f32> = ranks.iter().flat_map(|r| r.steps[k][t].clone()).collect();
            worst = worst.max(normalized_error(&got, &wide(whole)));
        }
        // dweight and dbias: the global batch's on every rank.
        for r in ranks {
            worst = worst.max(normalized_error(&r.steps[k][2], &wide(dweight)));
            worst = worst.max(normalized_error(&r.steps[k][3], &wide(dbias)));
        }
    }
    for r in ranks {
        worst = worst.max(normalized_error(&r.state.running_mean, &wide(&single.state.running_mean)));
        worst = worst.max(normalized_error(&r.state.running_var, &wide(&single.state.running_var)));
        assert_eq!(r.state.num_batches_tracked, single.state.num_batches_tracked);
    }
    worst
}

fn check(name: &str, shape: &[usize], layout: Layout, config: BatchNormConfig, training: bool, sizes: &[usize]) {
    let batch = Batch::new(shape, layout, 2, 0x5eed ^ shape.iter().product::<usize>() as u64);
    let single = single_device(&batch, &config, training);
    let ranks = synced(&batch, &config, training, sizes);
    let diff = max_difference(&single, &ranks);
    assert!(diff <= SYNC_TOLERANCE, "{name}: synced over {sizes:?} differs from one device by {diff:.2e}");
}

#[test]
fn two_ranks_uneven_slices_match_one_device() {
    check("nchw", &[7, 5, 6, 5], Layout::Nchw, BatchNormConfig::new(5), true, &[2, 5]);
    check("nhwc", &[5, 12, 3, 4], Layout::Nhwc, BatchNormConfig::new(12), true, &[4, 1]);
    check("2d cumulative", &[10, 16], Layout::Nchw, BatchNormConfig::new(16).momentum(None), true, &[3, 7]);
}

#[test]
fn three_ranks_with_an_empty_slice_match_one_device() {
    check("nchw", &[7, 5, 6, 5], Layout::Nchw, BatchNormConfig::new(5), true, &[3, 0, 4]);
    check("nhwc 3d", &[4, 8, 2, 3, 5], Layout::Nhwc, BatchNormConfig::new(8), true, &[0, 1, 3]);
    check("rank 3", &[6, 3, 40], Layout::Nchw, BatchNormConfig::new(3), true, &[2, 2, 2]);
}

#[test]
fn modes_without_running_statistics_and_eval_match_one_device() {
    let untracked = BatchNormConfig::new(6).track_running_stats(false);
    check("untracked eval syncs batch statistics", &[5, 6, 7], Layout::Nchw, untracked.clone(), false, &[1, 0, 4]);
    check("untracked training", &[5, 6, 7], Layout::Nchw, untracked, true, &[3, 2]);
    check("eval on running statistics", &[5, 6, 7], Layout::Nchw, BatchNormConfig::new(6), false, &[2, 3]);
    check("no affine", &[5, 6, 7], Layout::Nhwc, BatchNormConfig::new(6).affine(false), true, &[4, 0, 1]);
}

#[test]
fn split_halves_reject_bad_input() {
    let ctx = &contexts()[0];
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(4)).unwrap();
    let x = Tensor::zeros(ctx, &[2, 4, 3], Layout::Nchw).unwrap();
    let y = Tensor::zeros(ctx, &[2, 4, 3], Layout::Nchw).unwrap();
    let before = bn.read_state().unwrap();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    // Statistics of the wrong width, or of a single value per channel.
    let wrong = bn.forward_with_stats(&mut encoder, &x.view(), &y.view(), &PartialStats::empty(3), Mode::Training);
    assert!(matches!(wrong, Err(Error::Shape(_))), "{wrong:?}");
    let mut one = PartialStats::empty(4);
    one.count = vec![1.0; 4];
    let single = bn.forward_with_stats(&mut encoder, &x.view(), &y.view(), &one, Mode::Training);
    assert!(matches!(single, Err(Error::Parameter(_))), "{single:?}");
    // Eval with running statistics has no batch statistics to take.
    let mut two = PartialStats::empty(4);
    two.count = vec![2.0; 4];
    let eval = bn.forward_with_stats(&mut encoder, &x.view(), &y.view(), &two, Mode::Eval);
    assert!(matches!(eval, Err(Error::Parameter(_))), "{eval:?}");
    ctx.queue().submit([encoder.finish()]);
    assert_eq!(bn.read_state().unwrap(), before, "a refused op wrote the state");
    // An empty slice is fine for the partial statistics, and counts nothing.
    let empty = Tensor::zeros(ctx, &[0, 4, 3], Layout::Nchw).unwrap();
    assert_eq!(bn.partial_stats(&empty.view()).unwrap(), PartialStats::empty(4));
    // Only the samples may be empty, never the channels.
    let one = BatchNorm::new(ctx, BatchNormConfig::new(1)).unwrap();
    let no_channels = Tensor::zeros(ctx, &[2, 0, 3], Layout::Nchw).unwrap();
    assert!(matches!(one.partial_stats(&no_channels.view()), Err(Error::Shape(_))));
    // The plain ops still refuse an empty batch.
    let out = Tensor::zeros(ctx, &[0, 4, 3], Layout::Nchw).unwrap();
    assert!(matches!(
        bn.context().run(|e| bn.forward(e, &empty.view(), &out.view(), Mode::Training, Epilogue::None)),
        Err(Error::Shape(_))
    ));
}

#[test]
fn partial_statistics_of_slices_merge_to_the_whole_batch() {
    let ctx = &contexts()[0];
    let batch = Batch::new(&[9, 3, 11], Layout::Nchw, 1, 7);
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(3)).unwrap();
    let x = &batch.data[0].0;
    let stats_of = |rows: std::ops::Range<usize>| {
        let shape = [rows.len(), 3, 11];
        let t = Tensor::from_slice(ctx, &x[rows.start * 33..rows.end * 33], &shape, Layout::Nchw).unwrap();
        bn.partial_stats(&t.view()).unwrap()
    };
    let whole = stats_of(0..9);
    let merged = PartialStats::merge_all(3, &[stats_of(0..4), stats_of(4..4), stats_of(4..9)]).unwrap();
    assert_eq!(merged.count, vec![99.0; 3]);
    for c in 0..3 {
        assert!((merged.mean[c] - whole.mean[c]).abs() <= 1e-5 * (1.0 + whole.mean[c].abs()));
        assert!((merged.m2[c] - whole.m2[c]).abs() <= 1e-5 * whole.m2[c]);
    }
}

#[test]
fn a_non_finite_slice_is_rejected_on_every_rank() {
    // check_finite: rank 1's NaN makes the global statistics non-finite, so
    // every rank refuses the batch and keeps its running statistics.
    let batch = Batch::new(&[4, 3, 5], Layout::Nchw, 1, 99);
    let config = BatchNormConfig::new(3).check_finite(true);
    let results = on_ranks(2, &config, &batch.state, |rank, ctx, bn| {
        let mut x = batch.data[0].0[rank * 30..(rank + 1) * 30].to_vec();
        if rank == 1 {
            x[7] = f32::NAN;
        }
        let xt = Tensor::from_slice(ctx, &x, &[2, 3, 5], Layout::Nchw).unwrap();
        let yt = Tensor::zeros(ctx, &[2, 3, 5], Layout::Nchw).unwrap();
        let result = bn.forward(&xt.view(), &yt.view(), Mode::Training);
        (result, bn.layer().read_state().unwrap())
    });
    for (rank, (result, state)) in results.iter().enumerate() {
        assert!(matches!(result, Err(Error::NonFinite(_))), "rank {rank}: {result:?}");
        assert_eq!(state, &batch.state, "rank {rank} changed its state");
    }
}

#[test]
fn a_rank_that_fails_releases_the_others() {
    // Rank 1 sends x of the wrong channel count, then a y of the wrong
    // shape: it returns Err before the exchange and drops its handle, rank 0
    // gets Err(Exchange) instead of waiting, and no rank changes its state.
    for bad_y in [false, true] {
        let initial = BatchNormState::initial(4);
        let results = on_ranks(2, &BatchNormConfig::new(4), &initial, |rank, ctx, bn| {
            let c = if rank == 1 && !bad_y { 5 } else { 4 };
            let x = Tensor::from_slice(ctx, &vec![0.5; 2 * c * 3], &[2, c, 3], Layout::Nchw).unwrap();
            let y_len = if rank == 1 && bad_y { 2 } else { 3 };
            let y = Tensor::zeros(ctx, &[2, c, y_len], Layout::Nchw).unwrap();
            let result = bn.forward(&x.view(), &y.view(), Mode::Training);
            (result, bn.layer().read_state().unwrap())
        });
        let (r0, r1) = (&results[0], &results[1]);
        assert!(matches!(r1.0, Err(Error::Shape(_))), "bad_y {bad_y}: {:?}", r1.0);
        assert!(matches!(r0.0, Err(Error::Exchange(_))), "bad_y {bad_y}: {:?}", r0.0);
        for (state, rank) in [(&r0.1, 0), (&r1.1, 1)] {
            assert_eq!(state, &initial, "bad_y {bad_y}: rank {rank} changed its state");
        }
    }
}
