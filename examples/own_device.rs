//! A GPU application that owns its device hands it to wgpu-norm and records
//! a BatchNorm training step into its own command encoder.
//!
//! `cargo run --release --example own_device`

use wgpu_norm::{BatchNorm, BatchNormConfig, Context, Epilogue, Layout, Mode, TensorView};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The application's own device and queue (here opened the usual way).
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))?;
    // Worth asking for where offered: coherent storage (on Vulkan and DX12
    // a reduction's last workgroup then merges, one dispatch fewer a pass)
    // and the adapter's own limits (those kernels bind up to 14 storage
    // buffers, WebGPU's default is 8). Without them every op still runs.
    let descriptor = wgpu::DeviceDescriptor {
        required_features: adapter.features() & wgpu::Features::MEMORY_DECORATION_COHERENT,
        required_limits: adapter.limits(),
        ..Default::default()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&descriptor))?;

    // wgpu-norm borrows them; pipelines compile once per context.
    let ctx = Context::from_device(device.clone(), queue.clone());
    println!("last workgroups merge: {}", ctx.last_workgroup_merges());
    let bn = BatchNorm::new(&ctx, BatchNormConfig::new(16))?;

    // The application's own buffers: activations of shape N=8, C=16, 32x32, channels-last.
    let shape = [8, 16, 32, 32];
    let len: usize = shape.iter().product();
    let x: Vec<f32> = (0..len).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect();
    let x_buf = ctx.upload("activations", &x)?;
    let y_buf = ctx.zeros("normalized", len as u64 * 4)?;
    let dy_buf = ctx.upload("upstream grad", &vec![1.0f32; len])?;
    let dx_buf = ctx.zeros("input grad", len as u64 * 4)?;
    let view = |b| TensorView::new(b, &shape).with_layout(Layout::Nhwc);

    // Record forward and backward into the application's encoder, then submit.
    let mut encoder = device.create_command_encoder(&Default::default());
    bn.forward(&mut encoder, &view(&x_buf), &view(&y_buf), Mode::Training, Epilogue::None)?;
    bn.backward(&mut encoder, &view(&x_buf), &view(&dy_buf), &view(&dx_buf), Mode::Training, Epilogue::None)?;
    queue.submit([encoder.finish()]);

    // Host reads are for the demo only: statistics never left the GPU above.
    let state = bn.read_state()?;
    let (dweight, dbias) = bn.affine().read_grads()?;
    println!("running_mean[0..4] = {:?}", &state.running_mean[..4]);
    println!("num_batches_tracked = {}", state.num_batches_tracked);
    println!("dbias[0] = {} (= N*H*W = {})", dbias[0], len / 16);
    println!("dweight[0] = {:.3e} (~0 for dy = 1)", dweight[0]);
    Ok(())
}
