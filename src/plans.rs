//! An op's plan: the wgpu objects its [`Description`] asks for (pipelines,
//! one uniform block holding every kernel's parameters, bind groups), made
//! once and kept by the layer for later calls with the same description.
//!
//! A description names every buffer, offset, parameter and kernel an op
//! binds, so a kept plan is reused only where it is exactly what would be
//! made again. A plan holds its buffers alive, so a layer keeps few
//! ([`KEPT`]) and only those of descriptions seen more than once: an
//! application that hands a layer new buffers on every call never has its
//! old ones held. [`crate::Context::set_plan_cache`] turns keeping off.
//!
//! wgpu checks a buffer when a bind group is made, not when one is used;
//! a kept plan's buffers that a caller can reach (its tensors, the layer's
//! parameters and running statistics) are checked again on every reuse
//! (src/buffer_alive.rs; where a build cannot ask the backend, the plan is
//! made afresh instead), so a buffer destroyed since is still refused with
//! `Err` before anything is recorded.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};

use crate::buffer_alive::all_alive;
use crate::context::Context;
use crate::kernels::{bind, dispatch3, lock, ChannelParams, KernelKey};
use crate::{Error, Result};

/// What one binding of a dispatch binds.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) enum Bound {
    /// A range of a storage buffer (`size` `None`: to its end).
    Buffer { buffer: wgpu::Buffer, offset: u64, size: Option<NonZeroU64> },
    /// The op's parameter slot of this index.
    Params(usize),
}

/// One thing an op does to the encoder, in order.
#[derive(PartialEq, Eq, Hash)]
pub(crate) enum Step {
    Dispatch { key: KernelKey, entries: Vec<(u32, Bound)>, grid: (u32, u32, u32) },
    Clear(wgpu::Buffer),
    Copy { from: wgpu::Buffer, from_offset: u64, to: wgpu::Buffer, to_offset: u64, bytes: u64 },
}

/// Everything an op records, in a form that compares equal exactly when
/// two calls would record the same.
#[derive(PartialEq, Eq, Hash)]
pub(crate) struct Description {
    pub steps: Vec<Step>,
    pub params: Vec<ParamWords>,
}

/// One slot's parameters as plain words (comparable and hashable).
pub(crate) type ParamWords = [u32; std::mem::size_of::<ChannelParams>() / 4];

/// Plans a layer keeps.
const KEPT: usize = 8;
/// Descriptions (their hashes) a layer remembers having seen once.
const SEEN: usize = 32;

/// A layer that keeps plans: its plans, and which of its buffers no caller
/// can reach (so none destroys them behind its back, and a kept plan's
/// recheck may leave them out).
pub(crate) trait Keeper {
    fn plans(&self) -> &Plans;
    fn private(&self, buffer: &wgpu::Buffer) -> bool;
}

/// The plans one layer keeps.
#[derive(Default)]
pub(crate) struct Plans {
    cache: Mutex<Kept<Arc<Plan>>>,
}

/// Up to [`KEPT`] values by hash, most recently used first, and the hashes
/// of up to [`SEEN`] values seen once and not kept.
struct Kept<T> {
    kept: VecDeque<(u64, T)>,
    seen: VecDeque<u64>,
}

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Kept { kept: VecDeque::new(), seen: VecDeque::new() }
    }
}

impl<T: Clone> Kept<T> {
    /// The kept value of `hash` for which `matches` holds, now the most
    /// recently used.
    fn find(&mut self, hash: u64, matches: impl Fn(&T) -> bool) -> Option<T> {
        let i = self.kept.iter().position(|(h, v)| *h == hash && matches(v))?;
        let entry = self.kept.remove(i)?;
        let value = entry.1.clone();
        self.kept.push_front(entry);
        Some(value)
    }

    /// Keeps `value` if its hash was seen before (dropping the least
    /// recently used beyond [`KEPT`]), else remembers the hash.
    fn offer(&mut self, hash: u64, value: T) {
        if self.seen.contains(&hash) {
            self.kept.push_front((hash, value));
            self.kept.truncate(KEPT);
        } else {
            self.seen.push_front(hash);
            self.seen.truncate(SEEN);
        }
    }

    fn forget(&mut self, hash: u64) {
        self.kept.retain(|(h, _)| *h != hash);
    }
}

/// The wgpu objects of one description.
pub(crate) struct Plan {
    description: Description,
    /// Pipeline and bind group of each dispatch, in order.
    dispatches: Vec<(Arc<wgpu::ComputePipeline>, wgpu::BindGroup)>,
    /// Held for the bind groups that bind it.
    _params: Option<wgpu::Buffer>,
}

impl Plans {
    /// The plan of `description`: a kept one made for the same description
    /// (its buffers rechecked, but for those `private` claims: the layer's own
    /// that no caller can reach), else one made now, kept if the description
    /// was seen before. Call inside `Context::scoped`; where it then fails, call
    /// [`Plans::forget`] with the hash returned.
    pub fn plan(
        &self,
        ctx: &Context,
        description: Description,
        private: &dyn Fn(&wgpu::Buffer) -> bool,
    ) -> Result<(Arc<Plan>, u64)> {
        let hash = {
            let mut h = DefaultHasher::new();
            description.hash(&mut h);
            h.finish()
        };
        let keep = ctx.plan_support().keep();
        {
            let mut cache = lock(&self.cache);
            if !keep {
                *cache = Kept::default();
            }
            if let Some(plan) = cache.find(hash, |p| p.description == description) {
                drop(cache);
                match all_alive(ctx.adapter_info().backend, reachable(&plan.description, private)) {
                    Some(true) => return Ok((plan, hash)),
                    Some(false) => {
                        self.forget(hash);
                        return Err(Error::Validation(
                            "a buffer this op binds has been destroyed since it was last bound".into(),
                        ));
                    }
                    // This build cannot ask the backend: a plan made afresh
                    // checks the buffers as it binds them.
                    None => {}
                }
            }
        }
        let plan = Arc::new(Plan::make(ctx, description)?);
        MADE.with(|m| m.set(m.get() + 1));
        if keep {
            lock(&self.cache).offer(hash, plan.clone());
        }
        Ok((plan, hash))
    }

    /// Drops the plan of `hash`, whose use failed (a buffer of it destroyed).
    pub fn forget(&self, hash: u64) {
        lock(&self.cache).forget(hash);
    }
}

impl Plan {
    /// Makes the wgpu objects of `description`. Call inside `Context::scoped`.
    pub fn make(ctx: &Context, description: Description) -> Result<Plan> {
        let device = ctx.device();
        let stride = slot_bytes(ctx.limits());
        let params = match description.params.as_slice() {
            [] => None,
            slots => {
                let block = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgpu-norm params"),
                    size: slots.len() as u64 * stride,
                    usage: wgpu::BufferUsages::UNIFORM,
                    mapped_at_creation: true,
                });
                for (i, slot) in slots.iter().enumerate() {
                    let bytes = bytemuck::bytes_of(slot);
                    let at = i as u64 * stride;
                    block
                        .get_mapped_range_mut(at..at + bytes.len() as u64)
                        .map_err(|e| Error::DeviceLost(format!("could not fill a parameter block: {e}")))?
                        .copy_from_slice(bytes);
                }
                block.unmap();
                Some(block)
            }
        };
        let mut dispatches = Vec::new();
        for step in &description.steps {
            if let Step::Dispatch { key, entries, .. } = step {
                let pipeline = ctx.kernels().get(*key)?;
                let resources: Vec<(u32, wgpu::BindingResource<'_>)> = entries
                    .iter()
                    .map(|(binding, bound)| {
                        let resource = match bound {
                            Bound::Buffer { buffer, offset, size } => {
                                wgpu::BufferBinding { buffer, offset: *offset, size: *size }
                            }
                            Bound::Params(slot) => wgpu::BufferBinding {
                                buffer: params.as_ref().ok_or_else(no_block)?,
                                offset: *slot as u64 * stride,
                                size: wgpu::BufferSize::new(std::mem::size_of::<ChannelParams>() as u64),
                            },
                        };
                        Ok((*binding, wgpu::BindingResource::Buffer(resource)))
                    })
                    .collect::<Result<_>>()?;
                let group = bind(device, &pipeline, &resources);
                dispatches.push((pipeline, group));
            }
        }
        Ok(Plan { description, dispatches, _params: params })
    }

    /// Writes the plan's steps: runs of dispatches share one compute pass
    /// labelled `label`; clears and copies go between them.
    pub fn write(&self, encoder: &mut wgpu::CommandEncoder, label: &str) {
        let mut groups = self.dispatches.iter();
        let mut steps = self.description.steps.iter().peekable();
        while let Some(step) = steps.next() {
            match step {
                Step::Clear(buffer) => encoder.clear_buffer(buffer, 0, None),
                Step::Copy { from, from_offset, to, to_offset, bytes } => {
                    encoder.copy_buffer_to_buffer(from, *from_offset, to, *to_offset, *bytes)
                }
                Step::Dispatch { grid, .. } => {
                    let descriptor = wgpu::ComputePassDescriptor { label: Some(label), timestamp_writes: None };
                    let mut pass = encoder.begin_compute_pass(&descriptor);
                    let mut grid = *grid;
                    loop {
                        if let Some((pipeline, group)) = groups.next() {
                            dispatch3(&mut pass, pipeline, group, grid);
                        }
                        match steps.peek() {
                            Some(Step::Dispatch { grid: next, .. }) => {
                                grid = *next;
                                steps.next();
                            }
                            _ => break,
                        }
                    }
                }
            }
        }
    }
}

thread_local! {
    static MADE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many times a layer's op on this thread made its wgpu objects rather
/// than reuse ones it kept ([`crate::Context::set_plan_cache`]). The
/// difference around a call says whether it made any.
pub fn plans_made() -> u64 {
    MADE.with(|m| m.get())
}

/// The buffers `description` binds that `private` does not claim (those a
/// caller can reach, and so destroy).
fn reachable<'d>(
    description: &'d Description,
    private: &'d dyn Fn(&wgpu::Buffer) -> bool,
) -> impl Iterator<Item = &'d wgpu::Buffer> {
    let entries = |step: &'d Step| match step {
        Step::Dispatch { entries, .. } => entries.as_slice(),
        _ => &[],
    };
    description.steps.iter().flat_map(entries).filter_map(move |(_, bound)| match bound {
        Bound::Buffer { buffer, .. } if !private(buffer) => Some(buffer),
        _ => None,
    })
}

fn no_block() -> Error {
    Error::Parameter("internal: a kernel binds parameters its op never set".into())
}

/// Bytes between two parameter slots: the parameters, rounded up to the
/// device's uniform offset alignment.
fn slot_bytes(limits: &wgpu::Limits) -> u64 {
    let align = u64::from(limits.min_uniform_buffer_offset_alignment).max(1);
    (std::mem::size_of::<ChannelParams>() as u64).div_ceil(align) * align
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_kept_from_its_second_offer() {
        let mut kept = Kept::default();
        kept.offer(7, "a");
        assert_eq!(kept.find(7, |_| true), None, "seen once: not kept");
        kept.offer(7, "a");
        assert_eq!(kept.find(7, |_| true), Some("a"));
        assert_eq!(kept.find(7, |v| *v == "b"), None, "same hash, other value");
        kept.forget(7);
        assert_eq!(kept.find(7, |_| true), None);
    }

    #[test]
    fn values_offered_once_each_are_never_kept() {
        let mut kept = Kept::default();
        for hash in 0..1000 {
            kept.offer(hash, hash);
        }
        assert!(kept.kept.is_empty());
        assert_eq!(kept.seen.len(), SEEN);
    }

    #[test]
    fn the_least_recently_used_goes_first() {
        let mut kept = Kept::default();
        for hash in 0..KEPT as u64 + 1 {
            kept.offer(hash, hash);
            kept.offer(hash, hash);
            // 0 stays in use.
            assert_eq!(kept.find(0, |_| true), Some(0));
        }
        assert_eq!(kept.kept.len(), KEPT);
        assert_eq!(kept.find(0, |_| true), Some(0));
        assert_eq!(kept.find(1, |_| true), None, "the least recently used was dropped");
        assert_eq!(kept.find(KEPT as u64, |_| true), Some(KEPT as u64));
    }
}
