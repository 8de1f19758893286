//! NaN and Inf in a batch: they propagate through outputs as in PyTorch, and
//! `check_finite` keeps them out of the running statistics.

mod common;

use common::{ctx, Rng};
use wgpu_norm::{BatchNorm, BatchNormConfig, BatchNormState, Epilogue, Layout, Mode, Tensor};

fn batch(rng: &mut Rng, poison: Option<f32>) -> (Vec<f32>, [usize; 3]) {
    let shape = [4usize, 3, 5];
    let mut x = rng.normal_vec(60, 1.0, 2.0);
    if let Some(v) = poison {
        x[5 + 2] = v; // image 0, channel 1, position 2 (NCHW, 5 values per channel)
    }
    (x, shape)
}

#[test]
fn nan_propagates_like_pytorch_without_the_check() {
    let ctx = ctx();
    let mut rng = Rng(1);
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(3)).unwrap();
    let (x, shape) = batch(&mut rng, Some(f32::NAN));
    let xt = Tensor::from_slice(ctx, &x, &shape, Layout::Nchw).unwrap();
    let y = Tensor::zeros(ctx, &shape, Layout::Nchw).unwrap();
    bn.context().run(|e| bn.forward(e, &xt.view(), &y.view(), Mode::Training, Epilogue::None)).unwrap();
    let y = y.read(ctx).unwrap();
    // Channel 1 is NaN everywhere (its mean is NaN); channels 0 and 2 are not.
    for (i, v) in y.iter().enumerate() {
        assert_eq!(v.is_nan(), (i / 5) % 3 == 1, "y[{i}] = {v}");
    }
    let state = bn.read_state().unwrap();
    assert!(state.running_mean[1].is_nan() && state.running_mean[0].is_finite());
    assert_eq!(state.num_batches_tracked, 1);
}

#[test]
fn check_finite_rejects_the_batch_and_keeps_the_running_statistics() {
    let ctx = ctx();
    let mut rng = Rng(2);
    for poison in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let bn = BatchNorm::new(ctx, BatchNormConfig::new(3).check_finite(true)).unwrap();
        let mut state = BatchNormState::initial(3);
        state.running_mean = vec![0.5, -0.5, 2.0];
        state.num_batches_tracked = 7;
        bn.write_state(&state).unwrap();
        let (x, shape) = batch(&mut rng, Some(poison));
        let xt = Tensor::from_slice(ctx, &x, &shape, Layout::Nchw).unwrap();
        let y = Tensor::zeros(ctx, &shape, Layout::Nchw).unwrap();
        // The forward runs; the layer says it rejected the batch.
        bn.context().run(|e| bn.forward(e, &xt.view(), &y.view(), Mode::Training, Epilogue::None)).unwrap();
        assert!(bn.last_batch_rejected().unwrap(), "{poison}: not rejected");
        assert_eq!(bn.read_state().unwrap(), state, "{poison}: state changed");
        // The outputs still show the bad values, as PyTorch's would.
        assert!(y.read(ctx).unwrap().iter().any(|v| !v.is_finite()));
        // A good batch afterwards is accepted and counted.
        let (x, shape) = batch(&mut rng, None);
        let xt = Tensor::from_slice(ctx, &x, &shape, Layout::Nchw).unwrap();
        bn.context().run(|e| bn.forward(e, &xt.view(), &y.view(), Mode::Training, Epilogue::None)).unwrap();
        assert!(!bn.last_batch_rejected().unwrap());
        let after = bn.read_state().unwrap();
        assert_eq!(after.num_batches_tracked, 8);
        assert_ne!(after.running_mean, state.running_mean);
    }
}
