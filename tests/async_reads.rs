//! The async forms give what the blocking forms give, awaited inside an
//! executor (pollster's here), where the device is polled without waiting.

mod common;

use common::ctx;
use wgpu_norm::{
    BatchNorm, BatchNormConfig, Epilogue, GroupNorm, GroupNormConfig, Layout, Mode, RmsNorm, RmsNormConfig, Tensor,
};

fn ramp(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 37) % 101) as f32 / 10.0 - 3.0).collect()
}

#[test]
fn async_reads_match_the_blocking_reads() {
    let ctx = ctx();
    let shape = [3, 8, 5, 7];
    let len: usize = shape.iter().product();
    let x = Tensor::from_slice(ctx, &ramp(len), &shape, Layout::Nchw).unwrap();
    let y = Tensor::zeros(ctx, &shape, Layout::Nchw).unwrap();
    let dy =
        Tensor::from_slice(ctx, &ramp(len).iter().map(|v| v * 0.5).collect::<Vec<_>>(), &shape, Layout::Nchw).unwrap();
    let dx = Tensor::zeros(ctx, &shape, Layout::Nchw).unwrap();
    let bn = BatchNorm::new(ctx, BatchNormConfig::new(8)).unwrap();
    let gn = GroupNorm::new(ctx, GroupNormConfig::new(4, 8)).unwrap();
    let rms = RmsNorm::new(ctx, RmsNormConfig::new(&[7])).unwrap();
    pollster::block_on(async {
        ctx.run_async(|e| {
            bn.forward(e, &x.view(), &y.view(), Mode::Training, Epilogue::None)?;
            bn.backward(e, &x.view(), &dy.view(), &dx.view(), Mode::Training, Epilogue::None)?;
            gn.forward(e, &x.view(), &y.view())?;
            gn.backward(e, &x.view(), &dy.view(), &dx.view())?;
            rms.forward(e, &x.view(), &y.view())
        })
        .await
        .unwrap();
        assert_eq!(bn.read_state_async().await.unwrap(), bn.read_state().unwrap());
        assert_eq!(bn.read_state_async().await.unwrap().num_batches_tracked, 1);
        assert_eq!(bn.affine().read_grads_async().await.unwrap(), bn.affine().read_grads().unwrap());
        assert_eq!(bn.read_saved_async().await.unwrap(), bn.read_saved().unwrap());
        assert!(!bn.last_batch_rejected_async().await.unwrap());
        assert_eq!(gn.affine().read_grads_async().await.unwrap(), gn.affine().read_grads().unwrap());
        assert_eq!(gn.read_saved_async().await.unwrap(), gn.read_saved().unwrap());
        assert_eq!(rms.read_saved_async().await.unwrap(), rms.read_saved().unwrap());
        let got = y.read_async(ctx).await.unwrap();
        assert_eq!(got, y.read(ctx).unwrap());
        assert!(got.iter().any(|&v| v != 0.0), "the ops wrote y");
        let stats = bn.partial_stats_async(&x.view()).await.unwrap();
        assert_eq!(stats, bn.partial_stats(&x.view()).unwrap());
        assert_eq!(stats.count[0], (len / 8) as f64);
    });
}

#[test]
fn async_reads_refuse_what_the_blocking_reads_refuse() {
    let ctx = ctx();
    let buffer = ctx.zeros("async small", 16).unwrap();
    pollster::block_on(async {
        assert!(ctx.read_async::<f32>(&buffer, 0, 5).await.is_err(), "past the end");
        assert!(ctx.read_async::<f32>(&buffer, 2, 1).await.is_err(), "unaligned offset");
        assert!(ctx.read_async::<f32>(&buffer, 0, usize::MAX).await.is_err(), "byte count overflows");
        assert!(ctx.read_async::<f32>(&buffer, u64::MAX - 3, 1).await.is_err(), "offset overflows");
        assert_eq!(ctx.read_async::<f32>(&buffer, 0, 4).await.unwrap(), vec![0.0; 4]);
    });
}
