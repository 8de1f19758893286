//! How every op reaches the caller's encoder: it first builds a
//! [`Recording`] (pipelines, uniforms and bind groups made on the device,
//! with wgpu's errors caught), and only when all of it is valid are its
//! steps written into the encoder. An op that fails leaves the encoder as
//! it was, so the caller can still finish and submit it.

use crate::context::Context;
use crate::kernels::{bind, dispatch3, ChannelParams, KernelKey};
use crate::reduce::{bind_group, ReduceBindings};
use crate::Error;
use crate::Result;
use std::sync::Arc;

/// One thing an op does to the encoder, in order.
enum Step {
    Dispatch { pipeline: Arc<wgpu::ComputePipeline>, group: wgpu::BindGroup, grid: (u32, u32, u32) },
    Clear(wgpu::Buffer),
    Copy { from: wgpu::Buffer, from_offset: u64, to: wgpu::Buffer, to_offset: u64, bytes: u64 },
}

/// The steps of one op, built before anything is written to the encoder.
pub(crate) struct Recording<'c> {
    ctx: &'c Context,
    steps: Vec<Step>,
    /// The op's kernel parameters, slot by slot (blocks of [`SLOTS`]),
    /// mapped until the steps are written.
    blocks: Vec<wgpu::Buffer>,
    /// Slots used in the last block.
    used: u64,
    /// Bytes between two slots ([`slot_bytes`]), read from the device once
    /// per recording.
    stride: u64,
}

/// Parameter slots a uniform block holds: every op but a cut one fits one.
const SLOTS: u64 = 8;

/// Kernel parameters bound as a uniform: one slot of a recording's block.
#[derive(Clone)]
pub(crate) struct Uniform {
    buffer: wgpu::Buffer,
    offset: u64,
}

impl Uniform {
    /// The slot as a binding (named as `wgpu::Buffer`'s method, for which
    /// it stands in).
    pub fn as_entire_binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(std::mem::size_of::<ChannelParams>() as u64),
        })
    }
}

impl<'c> Recording<'c> {
    /// Builds a recording with `build` (wgpu's validation and out-of-memory
    /// errors become `Err`), then writes it into `encoder`: dispatches in
    /// compute passes labelled `label`, clears and copies between them.
    /// On `Err` nothing has been written.
    pub fn run(
        ctx: &'c Context,
        encoder: &mut wgpu::CommandEncoder,
        label: &str,
        build: impl FnOnce(&mut Recording<'c>) -> Result<()>,
    ) -> Result<()> {
        let stride = slot_bytes(ctx.device());
        let mut recording = Recording { ctx, steps: Vec::new(), blocks: Vec::new(), used: 0, stride };
        ctx.scoped(|| build(&mut recording))?;
        recording.write(encoder, label);
        Ok(())
    }

    /// The device the recording is for.
    pub fn device(&self) -> &'c wgpu::Device {
        self.ctx.device()
    }

    /// `params` as a uniform: a slot of a block made for this recording, so
    /// ops recorded into one encoder never see each other's parameters, and
    /// an op makes one buffer for all its kernels (making one costs about
    /// 4 µs of the host's time on lavapipe).
    pub fn uniform(&mut self, params: &ChannelParams) -> Result<Uniform> {
        let stride = self.stride;
        if self.blocks.is_empty() || self.used == SLOTS {
            self.blocks.push(self.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-norm params"),
                size: SLOTS * stride,
                usage: wgpu::BufferUsages::UNIFORM,
                mapped_at_creation: true,
            }));
            self.used = 0;
        }
        let buffer = self.blocks[self.blocks.len() - 1].clone();
        let offset = self.used * stride;
        let bytes = bytemuck::bytes_of(params);
        buffer
            .get_mapped_range_mut(offset..offset + bytes.len() as u64)
            .map_err(|e| Error::DeviceLost(format!("could not fill a parameter block: {e}")))?
            .copy_from_slice(bytes);
        self.used += 1;
        Ok(Uniform { buffer, offset })
    }

    /// The pipeline of `key`, compiled on first use.
    pub fn pipeline(&self, key: KernelKey) -> Result<Arc<wgpu::ComputePipeline>> {
        self.ctx.kernels().get(key)
    }

    /// Dispatches `key`'s pipeline over `grid` workgroups with `entries`
    /// bound in group 0.
    pub fn dispatch(
        &mut self,
        key: KernelKey,
        entries: &[(u32, wgpu::BindingResource<'_>)],
        grid: (u32, u32),
    ) -> Result<()> {
        let pipeline = self.pipeline(key)?;
        let group = bind(self.device(), &pipeline, entries);
        self.dispatch_group(pipeline, group, (grid.0, grid.1, 1));
        Ok(())
    }

    /// Dispatches the reduction kernel `key` over `grid` (x, y, views);
    /// `vec4` for reduce_vec4.wgsl's kernels, which bind no weight.
    pub fn reduce(
        &mut self,
        key: KernelKey,
        bindings: ReduceBindings<'_>,
        vec4: bool,
        grid: (u32, u32, u32),
    ) -> Result<()> {
        let pipeline = self.pipeline(key)?;
        let group = bind_group(self.device(), &pipeline, bindings, vec4);
        self.dispatch_group(pipeline, group, grid);
        Ok(())
    }

    /// Dispatches `pipeline` with a bind group made for it.
    pub fn dispatch_group(
        &mut self,
        pipeline: Arc<wgpu::ComputePipeline>,
        group: wgpu::BindGroup,
        grid: (u32, u32, u32),
    ) {
        self.steps.push(Step::Dispatch { pipeline, group, grid });
    }

    /// Zeroes `buffer`.
    pub fn clear(&mut self, buffer: &wgpu::Buffer) {
        self.steps.push(Step::Clear(buffer.clone()));
    }

    /// Copies `bytes` from `from` at `from_offset` to `to` at `to_offset`.
    pub fn copy(&mut self, from: &wgpu::Buffer, from_offset: u64, to: &wgpu::Buffer, to_offset: u64, bytes: u64) {
        let (from, to) = (from.clone(), to.clone());
        self.steps.push(Step::Copy { from, from_offset, to, to_offset, bytes });
    }

    /// Writes the steps: runs of dispatches share one compute pass.
    fn write(self, encoder: &mut wgpu::CommandEncoder, label: &str) {
        for block in &self.blocks {
            block.unmap();
        }
        let mut steps = self.steps.into_iter().peekable();
        while let Some(step) = steps.next() {
            match step {
                Step::Clear(buffer) => encoder.clear_buffer(&buffer, 0, None),
                Step::Copy { from, from_offset, to, to_offset, bytes } => {
                    encoder.copy_buffer_to_buffer(&from, from_offset, &to, to_offset, bytes)
                }
                Step::Dispatch { pipeline, group, grid } => {
                    let descriptor = wgpu::ComputePassDescriptor { label: Some(label), timestamp_writes: None };
                    let mut pass = encoder.begin_compute_pass(&descriptor);
                    dispatch3(&mut pass, &pipeline, &group, grid);
                    while let Some(Step::Dispatch { .. }) = steps.peek() {
                        if let Some(Step::Dispatch { pipeline, group, grid }) = steps.next() {
                            dispatch3(&mut pass, &pipeline, &group, grid);
                        }
                    }
                }
            }
        }
    }
}

/// Bytes between two parameter slots: the parameters, rounded up to the
/// device's uniform offset alignment.
fn slot_bytes(device: &wgpu::Device) -> u64 {
    let align = u64::from(device.limits().min_uniform_buffer_offset_alignment).max(1);
    (std::mem::size_of::<ChannelParams>() as u64).div_ceil(align) * align
}
