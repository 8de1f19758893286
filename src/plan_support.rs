//! What an op's plans need once per device: the buffer that stands for a
//! parameter slot in descriptions, the layout of the probes that recheck a
//! kept plan's buffers, and whether layers keep plans at all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Most buffers a probe binds: the per-stage storage buffers every device allows.
const PROBE_WIDTH: usize = 8;

/// Per device: what descriptions and probes need, and whether plans are kept.
pub(crate) struct PlanSupport {
    keep: AtomicBool,
    /// Stands for a parameter slot in a description's bindings.
    placeholder: OnceLock<wgpu::Buffer>,
    /// Probe layouts of 1 to [`PROBE_WIDTH`] read-only storage buffers.
    probes: [OnceLock<wgpu::BindGroupLayout>; PROBE_WIDTH],
}

impl PlanSupport {
    pub fn new() -> PlanSupport {
        PlanSupport { keep: AtomicBool::new(true), placeholder: OnceLock::new(), probes: Default::default() }
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

    /// How many buffers one probe binds at most: the device's per-stage
    /// storage limit, up to [`PROBE_WIDTH`].
    pub fn probe_width(&self, limits: &wgpu::Limits) -> usize {
        (limits.max_storage_buffers_per_shader_stage as usize).clamp(1, PROBE_WIDTH)
    }

    /// The probe layout of `width` read-only storage buffers (1 to
    /// [`PROBE_WIDTH`]): a probe binds each buffer once, no more.
    pub fn probe_layout(&self, device: &wgpu::Device, width: usize) -> &wgpu::BindGroupLayout {
        self.probes[width.clamp(1, PROBE_WIDTH) - 1].get_or_init(|| {
            let entries: Vec<_> = (0..width as u32)
                .map(|binding| wgpu::BindGroupLayoutEntry {
                    binding,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: true },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                })
                .collect();
            device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("wgpu-norm probe"),
                entries: &entries,
            })
        })
    }
}
