//! Hostile and careless calls (issue #17) that tests/hostile_matrix.rs's
//! table cannot express: each returns the right error, writes nothing
//! (sentinels read back), and leaves the caller's encoder able to finish
//! and submit.
//!
//! - sizes whose arithmetic would wrap: shape products, byte counts, offsets;
//! - non-finite or negative counts handed to SyncBatchNorm's split;
//! - a layer's own buffers handed back to it, outputs sharing an input's buffer;
//! - buffers of another device, destroyed buffers, an encoder of another device;
//! - SyncBatchNorm ranks that disagree, fail or never arrive;
//! - layers too large for the device.

mod common;

use common::ctx;
use wgpu_norm::{
    fold_host, BatchNorm, BatchNormConfig, BatchNormState, Error, GradSums, LayerKind, Layout, Mode, PartialStats,
    Tensor,
};

const SENTINEL: f32 = -7.25;

/// Runs `record` into a fresh encoder; the encoder must still finish and
/// submit whatever `record` returned. Returns that result.
fn recorded(record: impl FnOnce(&mut wgpu::CommandEncoder) -> wgpu_norm::Result<()>) -> wgpu_norm::Result<()> {
    let ctx = ctx();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let out = record(&mut encoder);
    ctx.scoped(|| Ok(ctx.queue().submit([encoder.finish()])))
        .expect("the caller's encoder finishes and submits after the call");
    ctx.wait(None).unwrap();
    out
}

#[test]
fn shapes_whose_size_overflows_are_refused() {
    let ctx = ctx();
    for shape in [vec![1usize << 32, 1 << 32], vec![usize::MAX, 2], vec![3, 1 << 40, 1 << 40]] {
        for err in [
            Tensor::from_slice(ctx, &[], &shape, Layout::Nchw).unwrap_err(),
            Tensor::zeros(ctx, &shape, Layout::Nchw).unwrap_err(),
            Tensor::from_slice_f16(ctx, &[], &shape, Layout::Nchw).unwrap_err(),
            Tensor::zeros_f16(ctx, &shape, Layout::Nchw).unwrap_err(),
        ] {
            assert!(matches!(err, Error::Shape(_)), "{shape:?}: {err}");
        }
    }
    // A shape of 2^62 f32 fits usize but not a byte count.
    let err = Tensor::zeros(ctx, &[1 << 31, 1 << 31], Layout::Nchw).unwrap_err();
    assert!(matches!(err, Error::Shape(_) | Error::Buffer(_) | Error::OutOfMemory(_)), "{err}");
}

#[test]
fn reads_whose_byte_count_overflows_are_refused() {
    let ctx = ctx();
    let buffer = ctx.upload("hostile read", &[SENTINEL; 4]).unwrap();
    for (offset, len) in [(0u64, 1usize << 62), (0, usize::MAX), (u64::MAX - 3, 1), (u64::MAX, 0)] {
        let err = ctx.read::<f32>(&buffer, offset, len).unwrap_err();
        assert!(matches!(err, Error::Buffer(_)), "offset {offset}, {len} values: {err}");
    }
    assert_eq!(ctx.read::<f32>(&buffer, 0, 4).unwrap(), [SENTINEL; 4]);
}

#[test]
fn fold_shapes_whose_size_overflows_are_refused() {
    let state = BatchNormState::initial(4);
    for shape in [[4, 3, 6148914691236517206], [4, usize::MAX, 2], [4, 1 << 33, 1 << 33]] {
        let err = fold_host(LayerKind::Conv, &[1.0; 12], &shape, None, &state, 1e-5).unwrap_err();
        assert!(matches!(err, Error::Shape(_)), "{shape:?}: {err}");
    }
    let err = fold_host(LayerKind::Linear, &[1.0; 4], &[4, usize::MAX], None, &state, 1e-5).unwrap_err();
    assert!(matches!(err, Error::Shape(_)), "{err}");
}

#[test]
fn an_op_on_a_view_whose_size_overflows_is_refused() {
    let ctx = ctx();
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(3)).unwrap();
    let y = Tensor::from_slice(ctx, &[SENTINEL; 6], &[2, 3], Layout::Nchw).unwrap();
    let huge = wgpu_norm::TensorView::new(&y.buffer, &[1 << 40, 3, 1 << 40]);
    assert_eq!(huge.len(), usize::MAX, "len saturates instead of wrapping");
    let err = recorded(|e| bn.forward(e, &huge, &y.view(), Mode::Training, wgpu_norm::Epilogue::None)).unwrap_err();
    assert!(matches!(err, Error::Shape(_) | Error::Buffer(_)), "{err}");
    assert!(y.read(ctx).unwrap().iter().all(|&v| v == SENTINEL), "y untouched");
}

/// SyncBatchNorm's split takes counts from the caller: a NaN, infinite or
/// negative one is refused before anything is written.
#[test]
fn non_finite_counts_are_refused() {
    let ctx = ctx();
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(2)).unwrap();
    let before = bn.read_state().unwrap();
    let x = Tensor::from_slice(ctx, &[1.0, 2.0, 3.0, 4.0], &[2, 2], Layout::Nchw).unwrap();
    let y = Tensor::from_slice(ctx, &[SENTINEL; 4], &[2, 2], Layout::Nchw).unwrap();
    let dx = Tensor::from_slice(ctx, &[SENTINEL; 4], &[2, 2], Layout::Nchw).unwrap();
    for count in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -3.0] {
        let stats = PartialStats { count: vec![4.0, count], mean: vec![0.0; 2], m2: vec![1.0; 2] };
        for mode in [Mode::Training, Mode::Eval] {
            let err = recorded(|e| bn.forward_with_stats(e, &x.view(), &y.view(), &stats, mode)).unwrap_err();
            assert!(matches!(err, Error::Parameter(_)), "count {count} {mode:?}: {err}");
        }
        let sums = GradSums { count, sum_dy: vec![1.0; 2], sum_dy_xmu: vec![1.0; 2], sum_xmu: vec![0.0; 2] };
        for mode in [Mode::Training, Mode::Eval] {
            let err =
                recorded(|e| bn.backward_with_sums(e, &x.view(), &x.view(), &dx.view(), &sums, mode)).unwrap_err();
            assert!(matches!(err, Error::Parameter(_)), "sums count {count} {mode:?}: {err}");
        }
    }
    assert!(y.read(ctx).unwrap().iter().all(|&v| v == SENTINEL), "y untouched");
    assert!(dx.read(ctx).unwrap().iter().all(|&v| v == SENTINEL), "dx untouched");
    assert_eq!(bn.read_state().unwrap(), before, "running statistics untouched");
}

/// A layer's own buffers handed back to it as an op's tensor (class 2's
/// aliasing): each is refused with `Err(Buffer)` before anything is
/// recorded, and the layer's state stays as it was.
#[test]
fn a_layers_own_buffers_are_refused_as_tensors() {
    use wgpu_norm::{Epilogue, TensorView};
    let ctx = ctx();
    let c = 4;
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(c)).unwrap();
    let x2 = Tensor::from_slice(ctx, &[1.0, 2.0, 3.0, 4.0, 0.5, 1.5, 2.5, 3.5], &[2, c], Layout::Nchw).unwrap();
    let y2 = Tensor::zeros(ctx, &[2, c], Layout::Nchw).unwrap();
    ctx.run(|e| bn.forward(e, &x2.view(), &y2.view(), Mode::Training, Epilogue::None)).unwrap();
    let state = bn.read_state().unwrap();
    let saved = bn.read_saved().unwrap();
    // Views of one sample: the shape of the smallest of the layer's buffers.
    let x = Tensor::from_slice(ctx, &[1.0, 2.0, 3.0, 4.0], &[1, c], Layout::Nchw).unwrap();
    let y = Tensor::from_slice(ctx, &[SENTINEL; 4], &[1, c], Layout::Nchw).unwrap();
    let own = [
        ("weight", bn.affine().weight()),
        ("bias", bn.affine().bias()),
        ("grad weight", bn.affine().grad_weight()),
        ("running mean", bn.running_mean()),
        ("running var", bn.running_var()),
        ("saved statistics", bn.saved_statistics()),
    ];
    for (name, buffer) in own {
        let view = TensorView::new(buffer, &[1, c]);
        for mode in [Mode::Training, Mode::Eval] {
            for err in [
                recorded(|e| bn.forward(e, &view, &y.view(), mode, Epilogue::None)).unwrap_err(),
                recorded(|e| bn.forward(e, &x.view(), &view, mode, Epilogue::None)).unwrap_err(),
                recorded(|e| bn.backward(e, &x.view(), &x.view(), &view, mode, Epilogue::None)).unwrap_err(),
                recorded(|e| bn.backward(e, &x.view(), &view, &y.view(), mode, Epilogue::None)).unwrap_err(),
            ] {
                assert!(matches!(err, Error::Buffer(_)), "{name} {mode:?}: {err}");
            }
        }
    }
    assert!(y.read(ctx).unwrap().iter().all(|&v| v == SENTINEL), "y untouched");
    assert_eq!(bn.read_state().unwrap(), state, "state untouched");
    assert_eq!(bn.read_saved().unwrap(), saved, "saved statistics untouched");
}

/// The same for the family: LayerNorm's and GroupNorm's own buffers, and
/// outputs that share a buffer with an input.
#[test]
fn family_layers_refuse_their_own_buffers_and_shared_outputs() {
    use wgpu_norm::{GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig, TensorView};
    let ctx = ctx();
    let x = Tensor::from_slice(ctx, &[1.0, 2.0, 3.0, 4.0], &[1, 4], Layout::Nchw).unwrap();
    let y = Tensor::from_slice(ctx, &[SENTINEL; 4], &[1, 4], Layout::Nchw).unwrap();
    let ln = LayerNorm::new(ctx, LayerNormConfig::new(&[4])).unwrap();
    let gn = GroupNorm::new(ctx, GroupNormConfig::new(2, 4)).unwrap();
    let y_ok = Tensor::zeros(ctx, &[1, 4], Layout::Nchw).unwrap();
    ctx.run(|e| ln.forward(e, &x.view(), &y_ok.view())).unwrap();
    let ln_saved = ln.saved_statistics().unwrap();
    let own = [("weight", ln.affine().weight()), ("grad bias", ln.affine().grad_bias()), ("saved", &ln_saved)];
    for (name, buffer) in own {
        let view = TensorView::new(buffer, &[1, 4]);
        for err in [
            recorded(|e| ln.forward(e, &view, &y.view())).unwrap_err(),
            recorded(|e| ln.forward(e, &x.view(), &view)).unwrap_err(),
            recorded(|e| ln.backward(e, &x.view(), &x.view(), &view)).unwrap_err(),
        ] {
            assert!(matches!(err, Error::Buffer(_)), "LayerNorm {name}: {err}");
        }
    }
    let x3 = Tensor::from_slice(ctx, &[1.0, 2.0, 3.0, 5.0], &[1, 4, 1], Layout::Nchw).unwrap();
    let view = TensorView::new(gn.affine().bias(), &[1, 4, 1]);
    let err = recorded(|e| gn.forward(e, &x3.view(), &view)).unwrap_err();
    assert!(matches!(err, Error::Buffer(_)), "GroupNorm bias as y: {err}");
    // dy and dx in one buffer: the backward does not run in place.
    let err = recorded(|e| ln.backward(e, &x.view(), &y.view(), &y.view())).unwrap_err();
    assert!(matches!(err, Error::Buffer(_)), "dy = dx: {err}");
    assert!(y.read(ctx).unwrap().iter().all(|&v| v == SENTINEL), "y untouched");
    assert_eq!(ln.affine().read().unwrap(), (vec![1.0; 4], vec![0.0; 4]), "parameters untouched");
}

/// Class 1 and 2: buffers of another context's device, and destroyed
/// buffers. Each op refuses them with an `Err` before recording anything
/// (the caller's encoder still finishes and submits), and writes nothing.
#[test]
fn buffers_of_another_device_or_destroyed_are_refused() {
    use wgpu_norm::{Context, Epilogue, LayerNorm, LayerNormConfig};
    let ctx = ctx();
    let other = Context::new().unwrap();
    let data = [1.0, 2.0, 3.0, 4.0, 0.5, 1.5, 2.5, 3.5];
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(4)).unwrap();
    let ln = LayerNorm::new(ctx, LayerNormConfig::new(&[4])).unwrap();
    let x = Tensor::from_slice(ctx, &data, &[2, 4], Layout::Nchw).unwrap();
    let y = Tensor::from_slice(ctx, &[SENTINEL; 8], &[2, 4], Layout::Nchw).unwrap();
    // A training forward first, so that the backward has statistics to use.
    let y_first = Tensor::zeros(ctx, &[2, 4], Layout::Nchw).unwrap();
    ctx.run(|e| bn.forward(e, &x.view(), &y_first.view(), Mode::Training, Epilogue::None)).unwrap();
    let state = bn.read_state().unwrap();
    let x_other = Tensor::from_slice(&other, &data, &[2, 4], Layout::Nchw).unwrap();
    let y_other = Tensor::from_slice(&other, &[SENTINEL; 8], &[2, 4], Layout::Nchw).unwrap();
    let dead = Tensor::from_slice(ctx, &data, &[2, 4], Layout::Nchw).unwrap();
    dead.buffer.destroy();
    let refused = |err: Error, what: &str| {
        assert!(matches!(err, Error::Validation(_) | Error::Buffer(_)), "{what}: {err}");
        // Not taken for a buffer of this device that happens to share its id
        // (each context had its own wgpu instance before).
        if what.starts_with("another") {
            assert!(err.to_string().contains("Device"), "{what}: refused for the wrong reason: {err}");
        }
    };
    for (name, foreign) in [("another device's", &x_other), ("a destroyed", &dead)] {
        for mode in [Mode::Training, Mode::Eval] {
            refused(recorded(|e| bn.forward(e, &foreign.view(), &y.view(), mode, Epilogue::None)).unwrap_err(), name);
            let err = recorded(|e| bn.backward(e, &x.view(), &foreign.view(), &y.view(), mode, Epilogue::None));
            refused(err.unwrap_err(), name);
        }
        refused(recorded(|e| ln.forward(e, &foreign.view(), &y.view())).unwrap_err(), name);
    }
    for mode in [Mode::Training, Mode::Eval] {
        let err = recorded(|e| bn.forward(e, &x.view(), &y_other.view(), mode, Epilogue::None)).unwrap_err();
        refused(err, "another device's y");
        refused(recorded(|e| bn.forward(e, &x.view(), &dead.view(), mode, Epilogue::None)).unwrap_err(), "dead y");
    }
    refused(recorded(|e| ln.forward(e, &x.view(), &y_other.view())).unwrap_err(), "another device's y");
    assert!(y.read(ctx).unwrap().iter().all(|&v| v == SENTINEL), "y untouched");
    assert!(y_other.read(&other).unwrap().iter().all(|&v| v == SENTINEL), "the other device's y untouched");
    assert_eq!(bn.read_state().unwrap(), state, "state untouched");
    // The layer still works with its own device's tensors.
    ctx.run(|e| bn.forward(e, &x.view(), &y.view(), Mode::Training, Epilogue::None)).unwrap();
    assert!(y.read(ctx).unwrap().iter().all(|v| v.is_finite() && *v != SENTINEL));
}

/// Class 3: SyncBatchNorm ranks that disagree (channel count, mode, op)
/// all return promptly: `Err(Exchange)` on every rank, no state changed,
/// and the group still serves the next, agreeing op.
#[test]
fn sync_batch_norm_ranks_that_disagree_all_fail_promptly() {
    use std::time::{Duration, Instant};
    use wgpu_norm::{LocalExchange, SyncBatchNorm};
    let ctx = ctx();
    // (channels, op, mode) per rank ("f" forward, "b" backward), and
    // whether the layers track running statistics (an eval forward that
    // uses them runs no collective).
    type Rank = (usize, &'static str, Mode);
    let cases: [([Rank; 2], bool); 3] = [
        ([(4, "f", Mode::Training), (5, "f", Mode::Training)], true),
        ([(4, "f", Mode::Training), (4, "f", Mode::Eval)], false),
        ([(4, "f", Mode::Training), (4, "b", Mode::Eval)], true),
    ];
    for (case, track) in cases {
        let start = Instant::now();
        let results: Vec<_> = std::thread::scope(|s| {
            let ranks: Vec<_> = LocalExchange::group_with_timeout(2, Duration::from_secs(30))
                .into_iter()
                .zip(case)
                .map(|(exchange, (c, op, mode))| {
                    s.spawn(move || {
                        let config = BatchNormConfig::new(c).track_running_stats(track);
                        let bn = SyncBatchNorm::new(ctx, config, exchange).unwrap();
                        let x = Tensor::from_slice(ctx, &vec![0.5; 2 * c], &[2, c], Layout::Nchw).unwrap();
                        let y = Tensor::from_slice(ctx, &vec![SENTINEL; 2 * c], &[2, c], Layout::Nchw).unwrap();
                        let state = bn.layer().read_state().unwrap();
                        let result = match op {
                            "f" => bn.forward(&x.view(), &y.view(), mode),
                            _ => bn.backward(&x.view(), &x.view(), &y.view(), mode),
                        };
                        let untouched = y.read(ctx).unwrap().iter().all(|&v| v == SENTINEL)
                            && bn.layer().read_state().unwrap() == state;
                        // The group still works for an op every rank agrees on.
                        let next = bn.forward(&x.view(), &y.view(), Mode::Training);
                        (result, untouched, next)
                    })
                })
                .collect();
            ranks.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert!(start.elapsed() < Duration::from_secs(20), "{case:?}: took {:?}", start.elapsed());
        for (rank, (result, untouched, next)) in results.iter().enumerate() {
            assert!(
                matches!(result, Err(Error::Exchange(m)) if m.contains("rank")),
                "{case:?} rank {rank}: {result:?}"
            );
            assert!(untouched, "{case:?} rank {rank}: output or state changed");
            if case[0].0 == case[1].0 {
                assert!(next.is_ok(), "{case:?} rank {rank}: the next op failed: {next:?}");
            }
        }
    }
}

/// A rank that runs no collective (eval with running statistics needs
/// none) leaves the others waiting: the round times out with
/// `Err(Exchange)` instead of hanging.
#[test]
fn a_rank_that_never_joins_times_the_others_out() {
    use std::time::{Duration, Instant};
    use wgpu_norm::{Exchange, LocalExchange, SyncBatchNorm};
    let ctx = ctx();
    let start = Instant::now();
    let results: Vec<_> = std::thread::scope(|s| {
        let ranks: Vec<_> = LocalExchange::group_with_timeout(2, Duration::from_millis(300))
            .into_iter()
            .map(|exchange| {
                s.spawn(move || {
                    let mode = if exchange.rank() == 0 { Mode::Training } else { Mode::Eval };
                    let bn = SyncBatchNorm::new(ctx, BatchNormConfig::new(3), exchange).unwrap();
                    let x = Tensor::from_slice(ctx, &[1.0, 2.0, 3.0, 4.0, 5.0, 7.0], &[2, 3], Layout::Nchw).unwrap();
                    let y = Tensor::zeros(ctx, &[2, 3], Layout::Nchw).unwrap();
                    let result = bn.forward(&x.view(), &y.view(), mode);
                    // Keep the handle until rank 0 has given up.
                    std::thread::sleep(Duration::from_millis(600));
                    result
                })
            })
            .collect();
        ranks.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert!(matches!(results[0], Err(Error::Exchange(_))), "{:?}", results[0]);
    assert!(results[1].is_ok(), "{:?}", results[1]);
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
}

/// Class 5: a layer too large for the device is refused before anything
/// is allocated (quickly, with the bytes it would need), on the host or
/// the device.
#[test]
fn layers_too_large_for_the_device_are_refused_before_allocating() {
    use wgpu_norm::{GroupNorm, GroupNormConfig, InstanceNorm, InstanceNormConfig, LayerNorm, LayerNormConfig};
    let ctx = ctx();
    let start = std::time::Instant::now();
    let errors = [
        BatchNorm::new(ctx, BatchNormConfig::new(1 << 30)).err(),
        BatchNorm::new(ctx, BatchNormConfig::new(u32::MAX as usize)).err(),
        LayerNorm::new(ctx, LayerNormConfig::new(&[1 << 20, 1 << 20])).err(),
        GroupNorm::new(ctx, GroupNormConfig::new(1, 1 << 31)).err(),
        InstanceNorm::new(ctx, InstanceNormConfig::new(1 << 31)).err(),
    ];
    for err in errors {
        let err = err.expect("refused");
        assert!(matches!(err, Error::Unsupported(_) | Error::Parameter(_)), "{err}");
        assert!(err.to_string().contains("bytes") || matches!(err, Error::Parameter(_)), "{err}");
    }
    assert!(start.elapsed() < std::time::Duration::from_secs(5), "took {:?}", start.elapsed());
}

/// Class 1's encoders: wgpu 30 offers no way to ask an encoder for its
/// device, so an op cannot refuse one of another device. The commands it
/// records there are invalid, nothing runs, and wgpu reports it when the
/// encoder finishes: as `Err(Validation)` under an error scope
/// (`Context::scoped`), with no panic inside wgpu and nothing written.
#[test]
fn an_encoder_of_another_device_fails_at_finish_and_writes_nothing() {
    use wgpu_norm::{Context, Epilogue};
    let ctx = ctx();
    let other = Context::new().unwrap();
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(2)).unwrap();
    let state = bn.read_state().unwrap();
    let x = Tensor::from_slice(ctx, &[1.0, 2.0, 3.0, 4.0], &[2, 2], Layout::Nchw).unwrap();
    let y = Tensor::from_slice(ctx, &[SENTINEL; 4], &[2, 2], Layout::Nchw).unwrap();
    let mut encoder = other.device().create_command_encoder(&Default::default());
    let recorded = bn.forward(&mut encoder, &x.view(), &y.view(), Mode::Training, Epilogue::None);
    let finished = other.scoped(|| Ok(encoder.finish()));
    assert!(recorded.is_err() || matches!(finished, Err(Error::Validation(_))), "{recorded:?} {:?}", finished.err());
    assert!(y.read(ctx).unwrap().iter().all(|&v| v == SENTINEL), "y untouched");
    assert_eq!(bn.read_state().unwrap(), state, "state untouched");
}
