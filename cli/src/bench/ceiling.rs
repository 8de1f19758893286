//! The bench's ceiling: the fastest plain copy this device does over the
//! same bytes as an op. Several copy kernels are timed and the fastest is
//! kept, because the fastest pattern differs by device: on GPUs
//! neighbouring lanes on neighbouring addresses (grid-stride); on CPU
//! adapters such as lavapipe each invocation, or each workgroup, walking its
//! own contiguous span, and 64-bit words where the device has them. Also the
//! host's own `memcpy` bandwidth, the physical limit of a CPU adapter.

use std::collections::HashMap;
use std::time::Instant;

use wgpu_norm::{Context, Error, Result};

use super::bind;

/// How the invocations of a copy walk the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Walk {
    /// Invocation `i` copies elements `i`, `i + T`, ... for `T` invocations
    /// in all (the GPU pattern).
    GridStride,
    /// Each group of eight neighbouring invocations copies its own
    /// contiguous span, its lanes on neighbouring elements, stepping by
    /// eight (a SIMD batch of a CPU adapter; 128 bytes a step on a GPU).
    LaneSpans,
    /// Each invocation copies its own contiguous span.
    InvocationSpans,
}

/// One copy kernel: a walk, an element type and a workgroup size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CopyKernel {
    pub walk: Walk,
    /// Elements are `vec2<u64>` (64-bit words, needs `SHADER_INT64`)
    /// instead of `vec4<f32>`; 16 bytes either way.
    pub words: bool,
    pub workgroup_size: u32,
}

/// Elements each invocation of a span walk copies, at the least: long
/// enough that a CPU adapter's workgroups start rarely.
const SPAN: u64 = 64;
/// Grid-stride copies stop adding invocations here (4,096 workgroups of 256).
const GRID_INVOCATIONS: u64 = 4096 * 256;
/// Timed runs of each candidate when choosing the fastest.
pub(super) const TRIALS: usize = 3;

impl CopyKernel {
    /// Every candidate the device can run.
    pub fn candidates(device: &wgpu::Device) -> Vec<CopyKernel> {
        Self::all(device.features().contains(wgpu::Features::SHADER_INT64))
    }

    /// Every candidate: each walk over vec4s and, `with_words`, 64-bit words,
    /// in both workgroup sizes.
    fn all(with_words: bool) -> Vec<CopyKernel> {
        let words: &[bool] = if with_words { &[false, true] } else { &[false] };
        let mut out = Vec::new();
        for walk in [Walk::GridStride, Walk::LaneSpans, Walk::InvocationSpans] {
            for &words in words {
                for workgroup_size in [64, 256] {
                    out.push(CopyKernel { walk, words, workgroup_size });
                }
            }
        }
        out
    }

    /// `grid-stride-vec4-wg256`: the name in the output (`copy_kernel`).
    pub fn name(self) -> String {
        let walk = match self.walk {
            Walk::GridStride => "grid-stride",
            Walk::LaneSpans => "lane-spans",
            Walk::InvocationSpans => "invocation-spans",
        };
        let ty = if self.words { "u64x2" } else { "vec4" };
        format!("{walk}-{ty}-wg{}", self.workgroup_size)
    }

    fn source(self) -> String {
        let ty = if self.words { "vec2<u64>" } else { "vec4<f32>" };
        let wg = self.workgroup_size;
        // Each walk as (first element, end, step) of invocation `t` of `total`.
        let walk = match self.walk {
            Walk::GridStride => "let first = t; let end = n; let step = total;",
            Walk::LaneSpans => {
                "let span = ((n + total / 8u - 1u) / (total / 8u) + 7u) / 8u * 8u; \
                 let first = t / 8u * span + t % 8u; let end = min(n, t / 8u * span + span); let step = 8u;"
            }
            Walk::InvocationSpans => {
                "let span = (n + total - 1u) / total; \
                 let first = t * span; let end = min(n, first + span); let step = 1u;"
            }
        };
        format!(
            "const WG: u32 = {wg}u;\n\
             @group(0) @binding(0) var<storage, read> src: array<{ty}>;\n\
             @group(0) @binding(1) var<storage, read_write> dst: array<{ty}>;\n\
             @compute @workgroup_size({wg})\n\
             fn copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,\n\
                     @builtin(num_workgroups) nwg: vec3<u32>) {{\n\
             \x20   let n = arrayLength(&dst);\n\
             \x20   let total = nwg.x * WG;\n\
             \x20   let t = wid.x * WG + lid.x;\n\
             \x20   {walk}\n\
             \x20   for (var i = first; i < end; i += step) {{\n\
             \x20       dst[i] = src[i];\n\
             \x20   }}\n\
             }}\n"
        )
    }

    /// Workgroups for a window of `elements` 16-byte elements.
    fn workgroups(self, elements: u64, max: u32) -> u32 {
        let wg = u64::from(self.workgroup_size);
        let groups = match self.walk {
            Walk::GridStride => elements.min(GRID_INVOCATIONS).div_ceil(wg),
            Walk::LaneSpans | Walk::InvocationSpans => elements.div_ceil(wg * SPAN),
        };
        groups.clamp(1, u64::from(max)) as u32
    }
}

/// A copy kernel bound to a source and a destination of `bytes / 2` each:
/// it moves `bytes` bytes. Buffers larger than one storage binding are
/// copied in windows, one dispatch each.
pub struct Copy {
    pub kernel: CopyKernel,
    pipeline: wgpu::ComputePipeline,
    groups: Vec<(wgpu::BindGroup, u32)>,
}

impl Copy {
    fn new(
        ctx: &Context,
        kernel: CopyKernel,
        pipeline: &wgpu::ComputePipeline,
        buffers: &(wgpu::Buffer, wgpu::Buffer),
    ) -> Result<Copy> {
        let device = ctx.device();
        let (src, dst) = buffers;
        let half = src.size();
        let limits = device.limits();
        let window = (limits.max_storage_buffer_binding_size / 256 * 256).max(256);
        ctx.scoped(|| {
            let mut groups = Vec::new();
            let mut offset = 0;
            while offset < half {
                let size = window.min(half - offset);
                let binding = |b| {
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: b,
                        offset,
                        size: std::num::NonZeroU64::new(size),
                    })
                };
                let group = bind(device, pipeline, &[(0, binding(src)), (1, binding(dst))]);
                groups.push((group, kernel.workgroups(size / 16, limits.max_compute_workgroups_per_dimension)));
                offset += size;
            }
            Ok(Copy { kernel, pipeline: pipeline.clone(), groups })
        })
    }

    /// Records the copy once.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let mut pass = encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("bench copy"), timestamp_writes: None });
        pass.set_pipeline(&self.pipeline);
        for (group, workgroups) in &self.groups {
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(*workgroups, 1, 1);
        }
        Ok(())
    }
}

/// The fastest copy kernel for each byte count met so far, chosen once per
/// byte count by timing every candidate.
pub struct Ceiling {
    candidates: Vec<CopyKernel>,
    chosen: HashMap<u64, CopyKernel>,
    /// Each kernel compiled once per run.
    pipelines: HashMap<CopyKernel, wgpu::ComputePipeline>,
}

impl Ceiling {
    /// Every candidate the device runs, or only those named in `only`
    /// (`Err(Parameter)` for a name that is no candidate here).
    pub fn new(ctx: &Context, only: Option<&[String]>) -> Result<Ceiling> {
        let all = CopyKernel::candidates(ctx.device());
        let candidates = match only {
            None => all,
            Some(names) => {
                let known: Vec<String> = all.iter().map(|k| k.name()).collect();
                if let Some(bad) = names.iter().find(|n| !known.contains(n)) {
                    return Err(Error::Parameter(format!(
                        "no copy kernel {bad:?} on this device; copy kernels: {}",
                        known.join(", ")
                    )));
                }
                all.into_iter().filter(|k| names.contains(&k.name())).collect()
            }
        };
        if candidates.is_empty() {
            return Err(Error::Parameter("no copy kernel given".into()));
        }
        Ok(Ceiling { candidates, chosen: HashMap::new(), pipelines: HashMap::new() })
    }

    /// The kernels that compete.
    pub fn kernels(&self) -> &[CopyKernel] {
        &self.candidates
    }

    /// `kernel`'s copy over `buffers`, its pipeline compiled on first use.
    fn copy(&mut self, ctx: &Context, kernel: CopyKernel, buffers: &(wgpu::Buffer, wgpu::Buffer)) -> Result<Copy> {
        let pipeline = match self.pipelines.get(&kernel) {
            Some(p) => p.clone(),
            None => {
                let device = ctx.device();
                let pipeline = ctx.scoped(|| {
                    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some("bench copy"),
                        source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
                    });
                    Ok(super::pipeline(device, &module, "copy"))
                })?;
                self.pipelines.entry(kernel).or_insert(pipeline).clone()
            }
        };
        Copy::new(ctx, kernel, &pipeline, buffers)
    }

    /// The fastest copy of `bytes` bytes, ready to be timed beside an op.
    /// `time` runs a recorder `runs` times and gives each run's time in ms
    /// (the bench's clock).
    pub fn fastest(
        &mut self,
        ctx: &Context,
        bytes: u64,
        time: &mut dyn FnMut(&Copy) -> Result<Vec<f64>>,
    ) -> Result<Copy> {
        let half = (bytes / 2).max(16).div_ceil(16) * 16;
        let buffers = (ctx.zeros("bench copy src", half)?, ctx.zeros("bench copy dst", half)?);
        if let Some(&kernel) = self.chosen.get(&bytes) {
            return self.copy(ctx, kernel, &buffers);
        }
        let mut best: Option<(f64, Copy)> = None;
        for kernel in self.candidates.clone() {
            let copy = self.copy(ctx, kernel, &buffers)?;
            let ms = super::median(&time(&copy)?);
            if best.as_ref().is_none_or(|(b, _)| ms < *b) {
                best = Some((ms, copy));
            }
        }
        let (_, copy) = best.ok_or_else(|| Error::Unsupported("no copy kernel to time".into()))?;
        self.chosen.insert(bytes, copy.kernel);
        Ok(copy)
    }
}

/// The host's `memcpy` bandwidth on one thread, in GB/s counted as the bench
/// counts a copy (bytes read plus bytes written): the median of several
/// copies of 64 MiB, after one untimed copy that faults the pages in.
pub fn host_memcpy_gbps() -> f64 {
    const BYTES: usize = 64 << 20;
    let src = vec![1u8; BYTES];
    let mut dst = vec![0u8; BYTES];
    dst.copy_from_slice(&src);
    let times: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
            start.elapsed().as_secs_f64()
        })
        .collect();
    2.0 * BYTES as f64 / super::median(&times) / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_cover_walks_types_and_sizes() {
        let kernels = CopyKernel::all(true);
        assert_eq!(CopyKernel::all(false).len(), 6, "no words without SHADER_INT64");
        let names: std::collections::HashSet<String> = kernels.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), 12, "each kernel has its own name");
        assert!(names.contains("grid-stride-vec4-wg256"));
        assert!(names.contains("invocation-spans-u64x2-wg64"));
        for k in kernels {
            let wgsl = k.source();
            let module = naga::front::wgsl::parse_str(&wgsl).unwrap_or_else(|e| panic!("{}: {e}", k.name()));
            let mut validator =
                naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
            validator.validate(&module).unwrap_or_else(|e| panic!("{}: {e:?}", k.name()));
        }
    }

    #[test]
    fn workgroups_cover_the_window() {
        let max = 65535;
        for walk in [Walk::GridStride, Walk::LaneSpans, Walk::InvocationSpans] {
            for wg in [64u32, 256] {
                let k = CopyKernel { walk, words: false, workgroup_size: wg };
                for elements in [1u64, 63, 64, 1000, 1 << 20, 8 << 20] {
                    let groups = u64::from(k.workgroups(elements, max));
                    assert!(groups >= 1 && groups <= u64::from(max));
                    // Spans hold at most SPAN elements each until the grid is full.
                    if walk != Walk::GridStride && groups < u64::from(max) {
                        assert!(groups * u64::from(wg) * SPAN >= elements, "{walk:?} wg{wg} {elements}");
                    }
                }
            }
        }
        let grid = CopyKernel { walk: Walk::GridStride, words: false, workgroup_size: 256 };
        assert_eq!(grid.workgroups(8 << 20, max), 4096, "grid-stride stops at 4096 workgroups of 256");
    }
}
