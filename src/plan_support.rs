//! What an op's plans need once per device: the buffer that stands for a
//! parameter slot in descriptions, the layout of the probes that recheck a
//! kept plan's buffers, and whether layers keep plans at all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Per device: what descriptions and probes need, and whether plans are kept.
pub(crate) struct PlanSupport {
    keep: AtomicBool,
    /// Stands for a parameter slot in a description's bindings.
    placeholder: OnceLock<wgpu::Buffer>,
    /// The probe's layout and how many buffers it binds.
    probe: OnceLock<(wgpu::BindGroupLayout, usize)>,
}

impl PlanSupport {
    pub fn new() -> PlanSupport {
        PlanSupport { keep: AtomicBool::new(true), placeholder: OnceLock::new(), probe: OnceLock::new() }
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

    /// A layout of read-only storage bindings for probes, and how many it has.
    pub fn probe_layout(&self, device: &wgpu::Device) -> &(wgpu::BindGroupLayout, usize) {
        self.probe.get_or_init(|| {
            let width = device.limits().max_storage_buffers_per_shader_stage.clamp(1, 8);
            let entries: Vec<_> = (0..width)
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
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("wgpu-norm probe"),
                entries: &entries,
            });
            (layout, width as usize)
        })
    }
}
