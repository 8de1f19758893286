//! A layer's scratch: buffers whose size depends on the input (partials,
//! per-row statistics), grown on demand, reused, and checked against the
//! device's limits before anything is allocated.

use crate::context::Context;
use crate::kernels::lock;
use crate::{Error, Result};
use std::sync::Mutex;

/// The scratch buffers of one layer, one per purpose.
pub(crate) struct Scratch {
    ctx: Context,
    /// Names the layer in the buffers' labels.
    layer: &'static str,
    slots: Mutex<Vec<(&'static str, wgpu::Buffer)>>,
}

impl Scratch {
    pub fn new(ctx: &Context, layer: &'static str) -> Scratch {
        Scratch { ctx: ctx.clone(), layer, slots: Mutex::new(Vec::new()) }
    }

    /// The buffer for `purpose`, at least `bytes` long: the one from an
    /// earlier call where it is large enough, else a new zeroed one.
    /// `Err(Unsupported)`, allocating nothing, above the device's buffer
    /// size limit.
    pub fn get(&self, purpose: &'static str, bytes: u64) -> Result<wgpu::Buffer> {
        self.within(purpose, bytes, self.ctx.limits().max_buffer_size, "buffer size")?;
        let mut slots = lock(&self.slots);
        let slot = slots.iter().position(|(p, _)| *p == purpose);
        if let Some(i) = slot {
            if slots[i].1.size() >= bytes {
                return Ok(slots[i].1.clone());
            }
        }
        let buffer = self.ctx.zeros(&format!("{} {purpose}", self.layer), bytes)?;
        match slot {
            Some(i) => slots[i].1 = buffer.clone(),
            None => slots.push((purpose, buffer.clone())),
        }
        Ok(buffer)
    }

    /// [`Self::get`], refused with `Err(Unsupported)` when the buffer would
    /// not fit one storage binding (it is bound whole).
    pub fn get_bound(&self, purpose: &'static str, bytes: u64) -> Result<wgpu::Buffer> {
        self.within(purpose, bytes, self.ctx.limits().max_storage_buffer_binding_size, "storage binding")?;
        self.get(purpose, bytes)
    }

    /// `Err(Unsupported)` when `bytes` of `purpose` exceed the device's
    /// `limit` (named by `what`).
    fn within(&self, purpose: &str, bytes: u64, limit: u64, what: &str) -> Result<()> {
        if bytes > limit {
            return Err(Error::Unsupported(format!(
                "{} {purpose} need {bytes} bytes, above the device's {what} limit of {limit}",
                self.layer
            )));
        }
        Ok(())
    }

    /// The buffer for `purpose`, if one has been made.
    pub fn current(&self, purpose: &'static str) -> Option<wgpu::Buffer> {
        lock(&self.slots).iter().find(|(p, _)| *p == purpose).map(|(_, b)| b.clone())
    }

    /// Whether `buffer` is one of the scratch buffers.
    pub fn owns(&self, buffer: &wgpu::Buffer) -> bool {
        lock(&self.slots).iter().any(|(_, b)| b == buffer)
    }
}
