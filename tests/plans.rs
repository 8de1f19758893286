//! Layers keep the wgpu objects of ops they are called with again (their
//! plans): a kept plan must record exactly what making it afresh records,
//! must not outlive a setting it depends on, and must still refuse a buffer
//! destroyed after it was made.

mod common;

use std::sync::Mutex;

use common::{ctx, Rng};
use wgpu_norm::{
    plans_made, BatchNorm, BatchNormConfig, Epilogue, Error, GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig,
    Layout, Mode, Reduction, Tensor,
};

/// The plan cache and the reduction are the context's: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records `op` into a fresh encoder, expecting wgpu's refusal
/// (`Err(Validation)`, named `what`); the encoder must still submit.
fn refused(what: &str, op: impl FnOnce(&mut wgpu::CommandEncoder) -> wgpu_norm::Result<()>) {
    let ctx = ctx();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let err = op(&mut encoder).unwrap_err();
    assert!(matches!(err, Error::Validation(_)), "{what}: {err}");
    ctx.scoped(|| Ok(ctx.queue().submit([encoder.finish()]))).expect("the encoder still submits");
    ctx.wait(None).unwrap();
}

const SHAPE: [usize; 4] = [4, 8, 5, 3];

/// Outputs of a sequence of ops over the same buffers, with new data in x
/// and dy each round and the context's reduction and access switched
/// between rounds; and how many plans the sequence made.
fn outputs_of_rounds(rounds: usize) -> (Vec<Vec<f32>>, u64) {
    let ctx = ctx();
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(SHAPE[1])).unwrap();
    let ln = LayerNorm::new(ctx, LayerNormConfig::new(&[SHAPE[3]])).unwrap();
    let gn = GroupNorm::new(ctx, GroupNormConfig::new(4, SHAPE[1])).unwrap();
    let tensor = || Tensor::zeros(ctx, &SHAPE, Layout::Nchw).unwrap();
    let (x, dy, y, dx) = (tensor(), tensor(), tensor(), tensor());
    let mut rng = Rng(11);
    let mut outputs = Vec::new();
    let before = plans_made();
    for round in 0..rounds {
        let n: usize = SHAPE.iter().product();
        ctx.queue().write_buffer(&x.buffer, 0, bytemuck::cast_slice(&rng.normal_vec(n, 0.5, 2.0)));
        ctx.queue().write_buffer(&dy.buffer, 0, bytemuck::cast_slice(&rng.normal_vec(n, 0.5, 2.0)));
        let tree = round % 4 >= 2;
        ctx.set_reduction(if tree { Reduction::Tree } else { Reduction::PerInvocation });
        let access = if round % 2 == 1 { common::accesses().last() } else { common::accesses().first() };
        ctx.set_access(*access.unwrap()).unwrap();
        ctx.run(|e| {
            bn.forward(e, &x.view(), &y.view(), Mode::Training, Epilogue::None)?;
            bn.backward(e, &x.view(), &dy.view(), &dx.view(), Mode::Training, Epilogue::None)
        })
        .unwrap();
        outputs.extend([y.read(ctx).unwrap(), dx.read(ctx).unwrap()]);
        ctx.run(|e| bn.forward(e, &x.view(), &y.view(), Mode::Eval, Epilogue::None)).unwrap();
        ctx.run(|e| ln.forward(e, &x.view(), &y.view())).unwrap();
        outputs.push(y.read(ctx).unwrap());
        ctx.run(|e| {
            gn.forward(e, &x.view(), &y.view())?;
            gn.backward(e, &x.view(), &dy.view(), &dx.view())
        })
        .unwrap();
        outputs.extend([y.read(ctx).unwrap(), dx.read(ctx).unwrap()]);
        let state = bn.read_state().unwrap();
        outputs.extend([state.running_mean, state.running_var]);
    }
    ctx.set_reduction(Reduction::PerInvocation);
    ctx.set_access(*common::accesses().last().unwrap()).unwrap();
    (outputs, plans_made() - before)
}

#[test]
fn kept_plans_record_what_fresh_ones_record() {
    let _serial = serial();
    let ctx = ctx();
    // Four settings (reduction x access), each seen three times.
    let rounds = 12;
    ctx.set_plan_cache(false);
    let (fresh, made_fresh) = outputs_of_rounds(rounds);
    ctx.set_plan_cache(true);
    let (kept, made_kept) = outputs_of_rounds(rounds);
    assert_eq!(fresh.len(), kept.len());
    for (i, (a, b)) in fresh.iter().zip(&kept).enumerate() {
        assert!(a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits()), "output {i} differs with kept plans");
    }
    // Six ops a round; with kept plans each op's description is made twice
    // per setting (kept from its second sight), then reused.
    assert_eq!(made_fresh, 6 * rounds as u64);
    assert!(made_kept < made_fresh, "kept plans were never reused: {made_kept} made");
}

/// A plan kept for buffers, one of which the caller destroys: the next call
/// is refused with `Err`, writes nothing, and leaves the encoder usable;
/// the layer then works with new buffers.
#[test]
fn a_buffer_destroyed_after_its_plan_was_kept_is_refused() {
    let _serial = serial();
    let ctx = ctx();
    ctx.set_plan_cache(true);
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(SHAPE[1])).unwrap();
    let n: usize = SHAPE.iter().product();
    let data = Rng(3).normal_vec(n, 0.5, 2.0);
    let x = Tensor::from_slice(ctx, &data, &SHAPE, Layout::Nchw).unwrap();
    let doomed = Tensor::from_slice(ctx, &data, &SHAPE, Layout::Nchw).unwrap();
    let y = Tensor::zeros(ctx, &SHAPE, Layout::Nchw).unwrap();
    for (input, output) in [(&x, &doomed), (&doomed, &y)] {
        let forward =
            |e: &mut wgpu::CommandEncoder| bn.forward(e, &input.view(), &output.view(), Mode::Eval, Epilogue::None);
        for _ in 0..2 {
            ctx.run(forward).unwrap();
        }
        let before = plans_made();
        ctx.run(forward).unwrap();
        assert_eq!(plans_made(), before, "the third call reuses the kept plan");
    }
    let y_before = y.read(ctx).unwrap();
    doomed.buffer.destroy();
    for (input, output) in [(&x, &doomed), (&doomed, &y)] {
        refused("a destroyed tensor", |e| bn.forward(e, &input.view(), &output.view(), Mode::Eval, Epilogue::None));
    }
    assert_eq!(y.read(ctx).unwrap(), y_before, "y untouched");
    let fresh = Tensor::zeros(ctx, &SHAPE, Layout::Nchw).unwrap();
    ctx.run(|e| bn.forward(e, &x.view(), &fresh.view(), Mode::Eval, Epilogue::None)).unwrap();
    assert!(fresh.read(ctx).unwrap().iter().any(|&v| v != 0.0));
}

/// Buffers handed over once each are never kept: every call makes its plan.
#[test]
fn new_buffers_every_call_make_new_plans() {
    let _serial = serial();
    let ctx = ctx();
    ctx.set_plan_cache(true);
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(SHAPE[1])).unwrap();
    let x =
        Tensor::from_slice(ctx, &Rng(5).normal_vec(SHAPE.iter().product(), 0.0, 1.0), &SHAPE, Layout::Nchw).unwrap();
    let before = plans_made();
    for _ in 0..5 {
        let y = Tensor::zeros(ctx, &SHAPE, Layout::Nchw).unwrap();
        ctx.run(|e| bn.forward(e, &x.view(), &y.view(), Mode::Eval, Epilogue::None)).unwrap();
    }
    assert_eq!(plans_made() - before, 5);
}

/// The layer's own buffers that a caller can reach (parameters, running
/// statistics) are rechecked too: destroying one after its plan was kept
/// gives `Err`, and the encoder still submits.
#[test]
fn a_layer_buffer_destroyed_by_the_caller_is_refused_too() {
    let _serial = serial();
    let ctx = ctx();
    ctx.set_plan_cache(true);
    let x =
        Tensor::from_slice(ctx, &Rng(9).normal_vec(SHAPE.iter().product(), 0.0, 1.0), &SHAPE, Layout::Nchw).unwrap();
    let y = Tensor::zeros(ctx, &SHAPE, Layout::Nchw).unwrap();
    for which in ["running_mean", "weight"] {
        let bn = BatchNorm::new(ctx, BatchNormConfig::new(SHAPE[1])).unwrap();
        let forward = |e: &mut wgpu::CommandEncoder| bn.forward(e, &x.view(), &y.view(), Mode::Eval, Epilogue::None);
        for _ in 0..3 {
            ctx.run(forward).unwrap();
        }
        match which {
            "running_mean" => bn.running_mean().destroy(),
            _ => bn.affine().weight().destroy(),
        }
        refused(which, forward);
    }
}
