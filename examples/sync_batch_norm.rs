//! Data-parallel BatchNorm over MPI: each rank holds a slice of the batch and
//! its own device, and SyncBatchNorm normalizes with the statistics of the
//! whole batch. Two training steps (forward + backward), then every rank
//! compares its results with one device running the whole batch.
//!
//! ```sh
//! cargo build --release --features mpi --example sync_batch_norm
//! mpirun -np 2 target/release/examples/sync_batch_norm
//! mpirun -np 3 target/release/examples/sync_batch_norm --sizes 5,0,3 --shape 8,16,12,12 --layout nhwc
//! ```
//!
//! Rank 0 prints `max difference vs single device: <number>` (normalized:
//! max |a - b| / max(1, max |b|) over y, dx, dweight, dbias and the running
//! statistics), and the example fails when it is above 1e-5.

use std::process::ExitCode;

use mpi::traits::Communicator;
use wgpu_norm::{
    BatchNorm, BatchNormConfig, BatchNormState, Context, Epilogue, Exchange, Layout, Mode, MpiExchange, SyncBatchNorm,
    Tensor,
};
use wgpu_norm_reference::normalized_error;

const STEPS: usize = 2;
const TOLERANCE: f64 = 1e-5;

fn main() -> ExitCode {
    let universe = mpi::initialize().expect("MPI was initialized twice");
    let exchange = MpiExchange::new(universe.world());
    match run(&exchange) {
        Ok(worst) if worst <= TOLERANCE => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            // One rank failing alone would leave the others waiting in a collective.
            eprintln!("rank {}: {e}", exchange.rank());
            exchange.communicator().abort(1)
        }
    }
}

/// Runs the comparison and returns the largest difference over all ranks.
fn run(exchange: &MpiExchange<impl Communicator>) -> Result<f64, Box<dyn std::error::Error>> {
    let (rank, ranks) = (exchange.rank(), exchange.size());
    let args = Args::parse(ranks)?;
    let ctx = Context::new()?;
    let problem = Problem::new(&args.shape, args.layout);
    let channels = args.shape[1];
    let config = BatchNormConfig::new(channels);

    // This rank's rows of the batch.
    let start: usize = args.sizes[..rank].iter().sum();
    let rows = start..start + args.sizes[rank];
    let sync = SyncBatchNorm::new(&ctx, config.clone(), exchange)?;
    sync.layer().write_state(&problem.state)?;
    let mine = problem.steps(&ctx, rows.clone(), |x, dy, y, dx| {
        sync.forward(x, y, Mode::Training)?;
        sync.backward(x, dy, dx, Mode::Training)?;
        sync.layer().affine().read_grads()
    })?;

    // The same steps on one device over the whole batch.
    let single = BatchNorm::new(&ctx, config)?;
    single.write_state(&problem.state)?;
    let all = problem.steps(&ctx, 0..args.shape[0], |x, dy, y, dx| {
        single.context().run(|e| single.forward(e, x, y, Mode::Training, Epilogue::None))?;
        single.context().run(|e| single.backward(e, x, dy, dx, Mode::Training, Epilogue::None))?;
        single.affine().read_grads()
    })?;

    let row = problem.row();
    let slice = |v: &[f32]| wide(&v[rows.start * row..rows.end * row]);
    let mut worst = 0.0f64;
    for (got, want) in mine.iter().zip(&all) {
        worst = worst.max(normalized_error(&got[0], &slice(&want[0])));
        worst = worst.max(normalized_error(&got[1], &slice(&want[1])));
        worst = worst.max(normalized_error(&got[2], &wide(&want[2])));
        worst = worst.max(normalized_error(&got[3], &wide(&want[3])));
    }
    let (synced, alone) = (sync.layer().read_state()?, single.read_state()?);
    worst = worst.max(normalized_error(&synced.running_mean, &wide(&alone.running_mean)));
    worst = worst.max(normalized_error(&synced.running_var, &wide(&alone.running_var)));
    if synced.num_batches_tracked != alone.num_batches_tracked {
        worst = f64::INFINITY;
    }

    let worst = exchange.all_gather(&[worst])?.iter().map(|v| v[0]).fold(0.0, f64::max);
    if rank == 0 {
        let (shape, sizes, layout) = (&args.shape, &args.sizes, args.layout);
        println!("ranks: {ranks}, batch {shape:?} {} split {sizes:?}, {STEPS} training steps", layout.name());
        println!("max difference vs single device: {worst:.3e}");
        if worst > TOLERANCE {
            eprintln!("above the tolerance of {TOLERANCE:e}");
        }
    }
    Ok(worst)
}

struct Args {
    /// The global batch, logical order (N, C, spatial...); `layout` is its memory order.
    shape: Vec<usize>,
    /// Rows of the batch per rank.
    sizes: Vec<usize>,
    layout: Layout,
}

impl Args {
    fn parse(ranks: usize) -> Result<Args, String> {
        let list = |s: &str| -> Result<Vec<usize>, String> {
            s.split(',').map(|v| v.trim().parse::<usize>().map_err(|e| format!("{s}: {e}"))).collect()
        };
        let mut shape: Vec<usize> = vec![8, 16, 12, 12];
        let mut sizes: Option<Vec<usize>> = None;
        let mut layout = Layout::Nchw;
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let value = it.next().ok_or(format!("{arg} needs a value"))?;
            match arg.as_str() {
                "--shape" => shape = list(&value)?,
                "--sizes" => sizes = Some(list(&value)?),
                "--layout" => layout = Layout::parse(&value).ok_or(format!("--layout {value}: nchw or nhwc"))?,
                _ => {
                    return Err(format!(
                        "unknown option {arg}; options: --shape N,C,... --sizes a,b,... --layout nchw|nhwc"
                    ))
                }
            }
        }
        if shape.len() < 2 {
            return Err("--shape needs N and C at least".into());
        }
        // By default the rows are dealt out as evenly as they go.
        let sizes =
            sizes.unwrap_or_else(|| (0..ranks).map(|r| shape[0] / ranks + usize::from(r < shape[0] % ranks)).collect());
        if sizes.len() != ranks || sizes.iter().sum::<usize>() != shape[0] {
            return Err(format!("--sizes {sizes:?} must give {ranks} slices summing to N = {}", shape[0]));
        }
        Ok(Args { shape, sizes, layout })
    }
}

/// The batch of every step and the layer's starting state, the same on
/// every rank (a fixed seed).
struct Problem {
    shape: Vec<usize>,
    layout: Layout,
    data: Vec<(Vec<f32>, Vec<f32>)>,
    state: BatchNormState,
}

impl Problem {
    fn new(shape: &[usize], layout: Layout) -> Problem {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        // Sums of four uniforms: roughly normal, with unit variance after scaling.
        let mut normal = |n: usize, mean: f32, std: f32| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    let s: f32 = (0..4).map(|_| uniform(&mut rng)).sum();
                    mean + std * (s - 2.0) * 1.732
                })
                .collect()
        };
        let len: usize = shape.iter().product();
        let c = shape[1];
        let data = (0..STEPS).map(|k| (normal(len, k as f32 - 0.5, 2.0), normal(len, 0.0, 1.0))).collect();
        let mut state = BatchNormState::initial(c);
        state.weight = normal(c, 1.0, 0.3);
        state.bias = normal(c, 0.0, 0.3);
        Problem { shape: shape.to_vec(), layout, data, state }
    }

    /// Values per batch row, contiguous in both layouts.
    fn row(&self) -> usize {
        self.shape[1..].iter().product()
    }

    /// Runs `step` on rows `rows` of each step's batch; returns per step
    /// (y, dx, dweight, dbias).
    fn steps(
        &self,
        ctx: &Context,
        rows: std::ops::Range<usize>,
        mut step: impl FnMut(
            &wgpu_norm::TensorView,
            &wgpu_norm::TensorView,
            &wgpu_norm::TensorView,
            &wgpu_norm::TensorView,
        ) -> wgpu_norm::Result<(Vec<f32>, Vec<f32>)>,
    ) -> wgpu_norm::Result<Vec<[Vec<f32>; 4]>> {
        let mut shape = self.shape.clone();
        shape[0] = rows.len();
        let span = rows.start * self.row()..rows.end * self.row();
        let mut out = Vec::new();
        for (x, dy) in &self.data {
            let x = Tensor::from_slice(ctx, &x[span.clone()], &shape, self.layout)?;
            let dy = Tensor::from_slice(ctx, &dy[span.clone()], &shape, self.layout)?;
            let y = Tensor::zeros(ctx, &shape, self.layout)?;
            let dx = Tensor::zeros(ctx, &shape, self.layout)?;
            let (dweight, dbias) = step(&x.view(), &dy.view(), &y.view(), &dx.view())?;
            out.push([y.read(ctx)?, dx.read(ctx)?, dweight, dbias]);
        }
        Ok(out)
    }
}

/// SplitMix64, uniform in [0, 1).
fn uniform(state: &mut u64) -> f32 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
}

fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}
