//! How every op reaches the caller's encoder: it first describes what it
//! records (a [`Recording`]: each dispatch's kernel, bindings and grid, each
//! kernel's parameters, clears and copies), then takes the wgpu objects of
//! that description from its layer's [`Plans`] or makes them, with wgpu's
//! errors caught. Only when all of it is valid are the steps written into
//! the encoder. An op that fails leaves the encoder as it was, so the
//! caller can still finish and submit it.

use crate::context::Context;
use crate::kernels::{ChannelParams, KernelKey};
use crate::plans::{Bound, Description, Keeper, Plan, Step};
use crate::reduce::{entries, ReduceBindings};
use crate::{Error, Result};

/// The description of one op, built before anything is made or written.
pub(crate) struct Recording<'c> {
    ctx: &'c Context,
    description: Description,
}

/// Kernel parameters bound as a uniform: one slot of the op's block.
#[derive(Clone)]
pub(crate) struct Uniform {
    /// Stands for the block, which is made with the plan.
    placeholder: wgpu::Buffer,
    slot: usize,
}

impl Uniform {
    /// The slot as a binding (named as `wgpu::Buffer`'s method, for which
    /// it stands in).
    pub fn as_entire_binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.placeholder,
            offset: self.slot as u64,
            size: None,
        })
    }
}

impl<'c> Recording<'c> {
    /// Describes an op with `describe`, takes its plan from the layer that
    /// keeps them (or makes one where there is none), then writes it into
    /// `encoder`: dispatches in compute passes labelled `label`, clears and
    /// copies between them. wgpu's validation and out-of-memory errors become
    /// `Err`; on `Err` nothing has been written.
    pub fn run(
        ctx: &'c Context,
        keeper: Option<&dyn Keeper>,
        encoder: &mut wgpu::CommandEncoder,
        label: &str,
        describe: impl FnOnce(&mut Recording<'c>) -> Result<()>,
    ) -> Result<()> {
        let mut recording = Recording { ctx, description: Description { steps: Vec::new(), params: Vec::new() } };
        let mut used = None;
        let plan = ctx.scoped(|| {
            describe(&mut recording)?;
            match keeper {
                Some(keeper) => {
                    let (plan, hash) = keeper.plans().plan(ctx, recording.description, &|b| keeper.private(b))?;
                    used = Some(hash);
                    Ok(plan)
                }
                None => Ok(std::sync::Arc::new(Plan::make(ctx, recording.description)?)),
            }
        });
        let plan = match (plan, keeper, used) {
            (Err(e), Some(keeper), Some(hash)) => {
                keeper.plans().forget(hash);
                return Err(e);
            }
            (plan, ..) => plan?,
        };
        plan.write(encoder, label);
        Ok(())
    }

    /// `params` as a uniform: a slot of the op's parameter block, so ops
    /// recorded into one encoder never see each other's parameters.
    pub fn uniform(&mut self, params: &ChannelParams) -> Uniform {
        let placeholder = self.ctx.plan_support().placeholder(self.ctx.device()).clone();
        self.description.params.push(bytemuck::cast(*params));
        Uniform { placeholder, slot: self.description.params.len() - 1 }
    }

    /// Dispatches `key`'s pipeline over `grid` workgroups with `entries`
    /// bound in group 0.
    pub fn dispatch(
        &mut self,
        key: KernelKey,
        entries: &[(u32, wgpu::BindingResource<'_>)],
        grid: (u32, u32),
    ) -> Result<()> {
        self.push_dispatch(key, entries, (grid.0, grid.1, 1))
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
        self.push_dispatch(key, &entries(bindings, vec4), grid)
    }

    /// Adds a dispatch of `key` over a 3-D `grid` binding `entries`.
    pub fn dispatch3(
        &mut self,
        key: KernelKey,
        entries: &[(u32, wgpu::BindingResource<'_>)],
        grid: (u32, u32, u32),
    ) -> Result<()> {
        self.push_dispatch(key, entries, grid)
    }

    /// Adds a dispatch of `key` to the description, its bindings as `Bound`s.
    fn push_dispatch(
        &mut self,
        key: KernelKey,
        entries: &[(u32, wgpu::BindingResource<'_>)],
        grid: (u32, u32, u32),
    ) -> Result<()> {
        let placeholder = self.ctx.plan_support().placeholder(self.ctx.device());
        let entries = entries
            .iter()
            .map(|(binding, resource)| {
                let wgpu::BindingResource::Buffer(b) = resource else {
                    return Err(Error::Parameter("internal: a kernel binds something other than a buffer".into()));
                };
                let bound = if b.buffer == placeholder {
                    Bound::Params(b.offset as usize)
                } else {
                    Bound::Buffer { buffer: b.buffer.clone(), offset: b.offset, size: b.size }
                };
                Ok((*binding, bound))
            })
            .collect::<Result<_>>()?;
        // The kernel as it will be compiled (f32 tensors as words or not).
        let key = self.ctx.kernels().resolve(key);
        self.description.steps.push(Step::Dispatch { key, entries, grid });
        Ok(())
    }

    /// Zeroes `buffer`.
    pub fn clear(&mut self, buffer: &wgpu::Buffer) {
        self.description.steps.push(Step::Clear(buffer.clone()));
    }

    /// Copies `bytes` from `from` at `from_offset` to `to` at `to_offset`.
    pub fn copy(&mut self, from: &wgpu::Buffer, from_offset: u64, to: &wgpu::Buffer, to_offset: u64, bytes: u64) {
        let (from, to) = (from.clone(), to.clone());
        self.description.steps.push(Step::Copy { from, from_offset, to, to_offset, bytes });
    }
}
