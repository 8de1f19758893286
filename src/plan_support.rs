//! What an op's plans need once per device: the buffer that stands for a
//! parameter slot in descriptions, and whether layers keep plans at all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Per device: what descriptions need, and whether plans are kept.
pub(crate) struct PlanSupport {
    keep: AtomicBool,
    /// Stands for a parameter slot in a description's bindings.
    placeholder: OnceLock<wgpu::Buffer>,
}

impl PlanSupport {
    pub fn new() -> PlanSupport {
        PlanSupport { keep: AtomicBool::new(true), placeholder: OnceLock::new() }
    }

    pub fn keep(&self) -> bool {
        self.keep.load(Ordering::Relaxed)
    }

    pub fn set_keep(&self, keep: bool) {
        self.keep.store(keep, Ordering::Relaxed);
    }

    /// The buffer a description binds where a parameter slot goes (made on
    /// first use; never read by a kernel).
    pub fn placeholder(&self, device: &wgpu::Device) -> &wgpu::Buffer {
        self.placeholder.get_or_init(|| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-norm parameter slot"),
                size: 16,
                usage: wgpu::BufferUsages::UNIFORM,
                mapped_at_creation: false,
            })
        })
    }
}
