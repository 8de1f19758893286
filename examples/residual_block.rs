//! A ResNet-style residual block on the GPU: conv1x1 -> BN -> ReLU -> conv1x1
//! -> BN -> (+ x) -> ReLU, with both BatchNorm+activation steps as single
//! fused passes. Runs a training-mode forward and backward, then folds each
//! BatchNorm into its convolution for inference and checks that the folded
//! block computes what the unfolded one does in eval mode.
//!
//! `cargo run --release --example residual_block`

use wgpu_norm::{BatchNorm, BatchNormConfig, Context, DType, Epilogue, LayerKind, Layout, Mode, Tensor};

/// A 1x1 convolution over NCHW is a matmul per image: y[n,o,p] = sum_k w[o,k] x[n,k,p] + b[o].
/// `add_relu` is the folded block's tail: y = max(a + b, 0).
const SHADER: &str = r#"
struct Dims { n: u32, cin: u32, cout: u32, hw: u32 }
@group(0) @binding(0) var<uniform> d: Dims;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn conv1x1(@builtin(global_invocation_id) id: vec3<u32>) {
    let e = id.x;
    if (e >= d.n * d.cout * d.hw) { return; }
    let p = e % d.hw;
    let o = (e / d.hw) % d.cout;
    let n = e / (d.hw * d.cout);
    var s = b[o];
    for (var k = 0u; k < d.cin; k++) {
        s += w[o * d.cin + k] * x[(n * d.cin + k) * d.hw + p];
    }
    y[e] = s;
}

@compute @workgroup_size(64)
fn add_relu(@builtin(global_invocation_id) id: vec3<u32>) {
    let e = id.x;
    if (e >= d.n * d.cout * d.hw) { return; }
    y[e] = max(x[e] + w[e], 0.0);
}
"#;

struct Kernels {
    conv: wgpu::ComputePipeline,
    add_relu: wgpu::ComputePipeline,
}

/// Records `pipeline` over `out` (n * cout * hw values); `b` is the conv bias
/// (`add_relu` has none).
#[allow(clippy::too_many_arguments)]
fn record(
    ctx: &Context,
    enc: &mut wgpu::CommandEncoder,
    pipeline: &wgpu::ComputePipeline,
    dims: [u32; 4],
    x: &wgpu::Buffer,
    w: &wgpu::Buffer,
    b: Option<&wgpu::Buffer>,
    out: &wgpu::Buffer,
) -> wgpu_norm::Result<()> {
    let dims_buf = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("dims"),
        size: 16,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx.queue().write_buffer(&dims_buf, 0, bytemuck::cast_slice(&dims));
    let mut entries = vec![
        wgpu::BindGroupEntry { binding: 0, resource: dims_buf.as_entire_binding() },
        wgpu::BindGroupEntry { binding: 1, resource: x.as_entire_binding() },
        wgpu::BindGroupEntry { binding: 2, resource: w.as_entire_binding() },
        wgpu::BindGroupEntry { binding: 4, resource: out.as_entire_binding() },
    ];
    if let Some(b) = b {
        entries.push(wgpu::BindGroupEntry { binding: 3, resource: b.as_entire_binding() });
    }
    let group = ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    });
    let mut pass = enc.begin_compute_pass(&Default::default());
    pass.set_pipeline(pipeline);
    pass.set_bind_group(0, &group, &[]);
    pass.dispatch_workgroups((dims[0] * dims[2] * dims[3]).div_ceil(64), 1, 1);
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ctx = Context::new()?;
    let module = ctx.device().create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("residual block"),
        source: wgpu::ShaderSource::Wgsl(SHADER.into()),
    });
    let pipeline = |entry| {
        ctx.device().create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        })
    };
    let k = Kernels { conv: pipeline("conv1x1"), add_relu: pipeline("add_relu") };

    let (n, c, hw) = (4usize, 8usize, 36usize);
    let shape = [n, c, 6, 6];
    let len = n * c * hw;
    let dims = [n as u32, c as u32, c as u32, hw as u32];
    let wave = |i: usize, f: f32| (i as f32 * f).sin() * 0.5;
    let x: Vec<f32> = (0..len).map(|i| wave(i, 0.37) + 0.1).collect();
    let w1: Vec<f32> = (0..c * c).map(|i| wave(i, 1.3)).collect();
    let w2: Vec<f32> = (0..c * c).map(|i| wave(i, 0.71)).collect();
    let zeros_c = vec![0.0f32; c];
    let buf = |label: &str, v: &[f32]| ctx.upload(label, v);
    let (xb, w1b, w2b, b0) = (buf("x", &x)?, buf("w1", &w1)?, buf("w2", &w2)?, buf("zero bias", &zeros_c)?);
    let t = || Tensor::zeros(&ctx, &shape, Layout::Nchw);
    let (h1, a1, h2, out) = (t()?, t()?, t()?, t()?);
    let bn1 = BatchNorm::new(&ctx, BatchNormConfig::new(c))?;
    let bn2 = BatchNorm::new(&ctx, BatchNormConfig::new(c))?;
    let xv = Tensor { buffer: xb.clone(), shape: shape.to_vec(), layout: Layout::Nchw, dtype: DType::F32 };

    // Training forward: three steps so the running statistics move.
    for _ in 0..3 {
        ctx.run(|e| {
            record(&ctx, e, &k.conv, dims, &xb, &w1b, Some(&b0), &h1.buffer)?;
            bn1.forward(e, &h1.view(), &a1.view(), Mode::Training, Epilogue::Relu)?;
            record(&ctx, e, &k.conv, dims, &a1.buffer, &w2b, Some(&b0), &h2.buffer)?;
            bn2.forward(e, &h2.view(), &out.view(), Mode::Training, Epilogue::AddRelu { z: &xv.view(), dz: None })
        })?;
    }
    // Training backward of the fused tails with an upstream gradient of ones.
    let dy = Tensor::from_slice(&ctx, &vec![1.0; len], &shape, Layout::Nchw)?;
    let (dh2, dz, da1, dh1) = (t()?, t()?, t()?, t()?);
    let w2t: Vec<f32> = (0..c * c).map(|i| w2[(i % c) * c + i / c]).collect();
    let w2tb = buf("w2 transposed", &w2t)?;
    ctx.run(|e| {
        bn2.backward(
            e,
            &h2.view(),
            &dy.view(),
            &dh2.view(),
            Mode::Training,
            Epilogue::AddRelu { z: &xv.view(), dz: Some(&dz.view()) },
        )?;
        record(&ctx, e, &k.conv, dims, &dh2.buffer, &w2tb, Some(&b0), &da1.buffer)?;
        bn1.backward(e, &h1.view(), &da1.view(), &dh1.view(), Mode::Training, Epilogue::Relu)
    })?;
    let norm = |t: &Tensor| -> wgpu_norm::Result<f32> { Ok(t.read(&ctx)?.iter().map(|v| v * v).sum::<f32>().sqrt()) };
    let (dw2, db2) = bn2.affine().read_grads()?;
    println!("training step: |dz| = {:.4}, |d conv1 out| = {:.4}", norm(&dz)?, norm(&dh1)?);
    println!("bn2 dweight[0..3] = {:?}, dbias[0..3] = {:?}", &dw2[..3], &db2[..3]);
    println!("bn1 running_mean[0..3] after 3 steps = {:?}", &bn1.read_state()?.running_mean[..3]);

    // Inference, unfolded: eval-mode BatchNorm with the running statistics.
    ctx.run(|e| {
        record(&ctx, e, &k.conv, dims, &xb, &w1b, Some(&b0), &h1.buffer)?;
        bn1.forward(e, &h1.view(), &a1.view(), Mode::Eval, Epilogue::Relu)?;
        record(&ctx, e, &k.conv, dims, &a1.buffer, &w2b, Some(&b0), &h2.buffer)?;
        bn2.forward(e, &h2.view(), &out.view(), Mode::Eval, Epilogue::AddRelu { z: &xv.view(), dz: None })
    })?;
    let unfolded = out.read(&ctx)?;

    // Inference, folded: each BatchNorm folded into its convolution on the GPU.
    let conv_shape = [c, c, 1, 1];
    let wt = |b: &wgpu::Buffer| Tensor {
        buffer: b.clone(),
        shape: conv_shape.to_vec(),
        layout: Layout::Nchw,
        dtype: DType::F32,
    };
    let (f1w, f2w) = (Tensor::zeros(&ctx, &conv_shape, Layout::Nchw)?, Tensor::zeros(&ctx, &conv_shape, Layout::Nchw)?);
    let (f1b, f2b) = (Tensor::zeros(&ctx, &[c], Layout::Nchw)?, Tensor::zeros(&ctx, &[c], Layout::Nchw)?);
    let (relu_in, folded_out) = (t()?, t()?);
    let zeros = Tensor::zeros(&ctx, &shape, Layout::Nchw)?;
    ctx.run(|e| {
        bn1.fold_into(e, LayerKind::Conv, &wt(&w1b).view(), None, &f1w.view(), &f1b.view())?;
        bn2.fold_into(e, LayerKind::Conv, &wt(&w2b).view(), None, &f2w.view(), &f2b.view())?;
        record(&ctx, e, &k.conv, dims, &xb, &f1w.buffer, Some(&f1b.buffer), &h1.buffer)?;
        record(&ctx, e, &k.add_relu, dims, &h1.buffer, &zeros.buffer, None, &relu_in.buffer)?;
        record(&ctx, e, &k.conv, dims, &relu_in.buffer, &f2w.buffer, Some(&f2b.buffer), &h2.buffer)?;
        record(&ctx, e, &k.add_relu, dims, &h2.buffer, &xb, None, &folded_out.buffer)
    })?;
    let folded = folded_out.read(&ctx)?;
    let diff = unfolded.iter().zip(&folded).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let scale = unfolded.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    println!("folded vs unfolded eval output: max difference {diff:.3e} (largest value {scale:.3})");
    if diff > 1e-4 * scale {
        return Err(format!("folded block differs from the unfolded one by {diff}").into());
    }
    println!("folded block matches");
    Ok(())
}
