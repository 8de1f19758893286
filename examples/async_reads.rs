//! The async forms inside an async function: a training step of BatchNorm
//! and LayerNorm whose results come back with `*_async` reads, so an async
//! application (or a WebGPU target) never blocks its executor on the GPU.
//! Here the executor is pollster's; any executor will do.
//!
//! `cargo run --release --example async_reads`

use wgpu_norm::{BatchNorm, BatchNormConfig, Context, Epilogue, LayerNorm, LayerNormConfig, Layout, Mode, Tensor};

async fn step(ctx: &Context) -> wgpu_norm::Result<()> {
    let shape = [4, 8, 16, 16];
    let len: usize = shape.iter().product();
    let x: Vec<f32> = (0..len).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect();
    let x = Tensor::from_slice(ctx, &x, &shape, Layout::Nchw)?;
    let y = Tensor::zeros(ctx, &shape, Layout::Nchw)?;
    let dy = Tensor::from_slice(ctx, &vec![1.0; len], &shape, Layout::Nchw)?;
    let dx = Tensor::zeros(ctx, &shape, Layout::Nchw)?;

    let bn = BatchNorm::new(ctx, BatchNormConfig::new(8))?;
    ctx.run_async(|e| {
        bn.forward(e, &x.view(), &y.view(), Mode::Training, Epilogue::None)?;
        bn.backward(e, &x.view(), &dy.view(), &dx.view(), Mode::Training, Epilogue::None)
    })
    .await?;
    let state = bn.read_state_async().await?;
    let (_, dbias) = bn.affine().read_grads_async().await?;
    let y_host = y.read_async(ctx).await?;
    println!(
        "BatchNorm: running_mean[0] = {:.4}, dbias[0] = {} (N*H*W = {})",
        state.running_mean[0],
        dbias[0],
        len / 8
    );
    println!("           y[0..3] = {:?}", &y_host[..3]);

    let ln = LayerNorm::new(ctx, LayerNormConfig::new(&[16]))?;
    ctx.run_async(|e| ln.forward(e, &x.view(), &y.view())).await?;
    let (mean, rstd) = ln.read_saved_async().await?;
    println!("LayerNorm: {} rows, mean[0] = {:.4}, rstd[0] = {:.4}", mean.len(), mean[0], rstd[0]);
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ctx = Context::new()?;
    pollster::block_on(step(&ctx))?;
    Ok(())
}
