//! Where recording an op spends the host's time: BatchNorm's ops recorded
//! into one encoder, with the layer's plans kept and made afresh, next to
//! the wgpu calls a recording makes (a uniform buffer, a bind group, a
//! compute pass with one dispatch). Microseconds per call, median of
//! rounds. `cargo run --release --example record_cost`.

use std::time::Instant;

use wgpu::util::DeviceExt;
use wgpu_norm::{BatchNorm, BatchNormConfig, Context, Epilogue, Layout, Mode, Tensor};

/// Median over 9 rounds of `n` calls of `f`, in µs per call.
fn per_call(n: usize, mut f: impl FnMut()) -> f64 {
    let mut rounds: Vec<f64> = (0..9)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[4]
}

fn main() -> wgpu_norm::Result<()> {
    let ctx = Context::new()?;
    let device = ctx.device().clone();
    println!("adapter: {}", ctx.adapter_info().name);

    let shader = "@group(0) @binding(0) var<uniform> u: vec4<f32>;
        @group(0) @binding(1) var<storage, read> a: array<f32>;
        @group(0) @binding(2) var<storage, read_write> b: array<f32>;
        @compute @workgroup_size(64) fn main() { b[0] = a[0] + u.x; }";
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(shader.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let uniform = |device: &wgpu::Device| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: &[0u8; 128],
            usage: wgpu::BufferUsages::UNIFORM,
        })
    };
    let storage = || {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 1024,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    let (u, a, b) = (uniform(&device), storage(), storage());
    let layout = pipeline.get_bind_group_layout(0);
    let group = || {
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &layout,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: u.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: a.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 2, resource: b.as_entire_binding() },
            ],
        })
    };
    println!("{:56} {:8.2} µs", "uniform buffer (create_buffer_init)", per_call(500, || drop(uniform(&device))));
    println!("{:56} {:8.2} µs", "bind group of three buffers", per_call(500, || drop(group())));
    let g = group();
    let mut encoder = device.create_command_encoder(&Default::default());
    let pass_cost = per_call(500, || {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &g, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    });
    println!("{:56} {:8.2} µs", "compute pass with one dispatch", pass_cost);

    let shape = [32, 64, 56, 56];
    let tensor = || Tensor::zeros(&ctx, &shape, Layout::Nchw);
    let (x, y, dy, dx) = (tensor()?, tensor()?, tensor()?, tensor()?);
    let bn = BatchNorm::new(&ctx, BatchNormConfig::new(64))?;
    // With the plan cache (the layer reuses what it made for the same
    // buffers) and without (everything made afresh, as for new buffers).
    for (cache, kept) in [("kept", true), ("fresh", false)] {
        ctx.set_plan_cache(kept);
        let mut encoder = device.create_command_encoder(&Default::default());
        for (name, mode) in [("eval", Mode::Eval), ("training", Mode::Training)] {
            let cost = per_call(200, || {
                let before = wgpu_norm::recorded_dispatches();
                bn.forward(&mut encoder, &x.view(), &y.view(), mode, Epilogue::None).expect("forward");
                assert!(wgpu_norm::recorded_dispatches() > before);
            });
            println!("{:56} {:8.2} µs", format!("BatchNorm {name} forward, {shape:?}, {cache}"), cost);
        }
        let cost = per_call(200, || {
            let (x, dy, dx) = (x.view(), dy.view(), dx.view());
            bn.backward(&mut encoder, &x, &dy, &dx, Mode::Training, Epilogue::None).expect("backward");
        });
        println!("{:56} {:8.2} µs", format!("BatchNorm training backward, {shape:?}, {cache}"), cost);
    }
    Ok(())
}
