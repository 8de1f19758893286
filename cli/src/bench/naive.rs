//! The naive BatchNorm of `wgpu-norm bench`: the baseline, written the
//! obvious way (one kernel per step, shaders/naive.wgsl).

use wgpu_norm::{BatchNormState, ChannelView, Context, Result, Tensor};

use super::workload::EPS;

/// Mirror of `struct BenchParams` in shaders/naive.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct BenchParams {
    outer: u32,
    channels: u32,
    inner: u32,
    total: u32,
    count: f32,
    eps: f32,
    mode: u32,
    _pad: u32,
}

/// The naive BatchNorm's pipelines and bind groups for one workload.
pub(super) struct Naive {
    view: ChannelView,
    chan: wgpu::Buffer,
    mean: (wgpu::ComputePipeline, wgpu::BindGroup),
    var: (wgpu::ComputePipeline, wgpu::BindGroup),
    normalize: (wgpu::ComputePipeline, wgpu::BindGroup),
    sums: (wgpu::ComputePipeline, wgpu::BindGroup),
    dx_train: (wgpu::ComputePipeline, wgpu::BindGroup),
    dx_eval: (wgpu::ComputePipeline, wgpu::BindGroup),
    /// `y = relu(y)` in place, and `y = relu(y + z)` with z in `dy`.
    relu: (wgpu::ComputePipeline, wgpu::BindGroup),
    add_relu: (wgpu::ComputePipeline, wgpu::BindGroup),
}

impl Naive {
    pub(super) fn new(
        ctx: &Context,
        view: ChannelView,
        state: &BatchNormState,
        x: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        dx: &Tensor,
    ) -> Result<Naive> {
        let c = view.channels;
        let chan = ctx.zeros("bench naive chan", c as u64 * 16)?;
        let grad = ctx.zeros("bench naive grad", c as u64 * 8)?;
        let params = |mode| BenchParams {
            outer: view.outer as u32,
            channels: c as u32,
            inner: view.inner as u32,
            total: view.len() as u32,
            count: view.per_channel() as f32,
            eps: EPS,
            mode,
            _pad: 0,
        };
        let train = ctx.upload("bench naive params", &[params(0)])?;
        let eval = ctx.upload("bench naive params", &[params(1)])?;
        let naive = ctx.scoped(|| {
            let device = ctx.device();
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("bench naive"),
                source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/naive.wgsl").into()),
            });
            // The kernel `entry` with the params, its output (binding 3) and
            // the other bindings it reads or writes.
            let kernel = |entry: &'static str, params: &wgpu::Buffer, out: Option<&Tensor>, bindings: &[u32]| {
                let pipeline = super::pipeline(device, &module, entry);
                let mut entries: Vec<(u32, wgpu::BindingResource<'_>)> =
                    out.map(|o| (3, o.buffer.as_entire_binding())).into_iter().collect();
                for &b in bindings {
                    let buffer = match b {
                        0 => params,
                        1 => &x.buffer,
                        2 => &dy.buffer,
                        4 => &chan,
                        _ => &grad,
                    };
                    entries.push((b, buffer.as_entire_binding()));
                }
                let group = super::bind(device, &pipeline, &entries);
                (pipeline, group)
            };
            Ok(Naive {
                view,
                mean: kernel("naive_mean", &train, None, &[0, 1, 4]),
                var: kernel("naive_var", &train, None, &[0, 1, 4]),
                normalize: kernel("naive_normalize", &train, Some(y), &[0, 1, 4]),
                sums: kernel("naive_bwd_sums", &train, None, &[0, 1, 2, 4, 5]),
                dx_train: kernel("naive_bwd_dx", &train, Some(dx), &[0, 1, 2, 4, 5]),
                dx_eval: kernel("naive_bwd_dx", &eval, Some(dx), &[0, 1, 2, 4, 5]),
                relu: kernel("naive_relu", &train, Some(y), &[0]),
                add_relu: kernel("naive_add_relu", &train, Some(y), &[0, 2]),
                chan: chan.clone(),
            })
        })?;
        naive.reset(ctx, state)?;
        Ok(naive)
    }

    /// Per-channel (running mean, running var, gamma, beta).
    pub(super) fn reset(&self, ctx: &Context, state: &BatchNormState) -> Result<()> {
        let chan: Vec<[f32; 4]> = (0..self.view.channels)
            .map(|c| [state.running_mean[c], state.running_var[c], state.weight[c], state.bias[c]])
            .collect();
        ctx.write(&self.chan, 0, &chan)?;
        Ok(())
    }

    fn per_channel(&self) -> (u32, u32) {
        (self.view.channels.div_ceil(64) as u32, 1)
    }

    fn elementwise(&self) -> (u32, u32) {
        let groups = self.view.len().div_ceil(256).max(1);
        let x = groups.min(65535);
        (x as u32, groups.div_ceil(x) as u32)
    }

    fn go(pass: &mut wgpu::ComputePass<'_>, k: &(wgpu::ComputePipeline, wgpu::BindGroup), g: (u32, u32)) {
        pass.set_pipeline(&k.0);
        pass.set_bind_group(0, &k.1, &[]);
        pass.dispatch_workgroups(g.0, g.1, 1);
    }

    /// Batch mean, then batch variance, into `chan`.
    pub(super) fn stats(&self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        self.mean_var(&mut pass);
        Ok(())
    }

    pub(super) fn mean_var(&self, pass: &mut wgpu::ComputePass<'_>) {
        Self::go(pass, &self.mean, self.per_channel());
        Self::go(pass, &self.var, self.per_channel());
    }

    pub(super) fn normalize(&self, pass: &mut wgpu::ComputePass<'_>) {
        Self::go(pass, &self.normalize, self.elementwise());
    }

    /// The separate elementwise pass after `normalize` of the fused forwards.
    pub(super) fn relu(&self, pass: &mut wgpu::ComputePass<'_>, add: bool) {
        Self::go(pass, if add { &self.add_relu } else { &self.relu }, self.elementwise());
    }

    pub(super) fn backward(&self, pass: &mut wgpu::ComputePass<'_>, eval: bool) {
        Self::go(pass, &self.sums, self.per_channel());
        Self::go(pass, if eval { &self.dx_eval } else { &self.dx_train }, self.elementwise());
    }
}
