//! The pipeline cache (one compiled pipeline per kernel and variant, per
//! context), the uniform every per-channel kernel reads, and small helpers
//! that remove bind-group boilerplate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::layout::ChannelView;
use crate::resident::Resident;
use crate::{Error, Result};

/// A WGSL source file of `shaders/`, compiled with `common.wgsl` in front.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Shader {
    /// Partial per-channel reductions (statistics and backward sums), of f16
    /// tensors with `f16`; with `finish`, the last workgroup merges.
    Reduce { f16: bool, finish: Finish },
    /// BatchNorm's partial reductions over vec4 values (of f16 in memory
    /// with `f16`, of f32 as two 64-bit words with `words`).
    ReduceVec4 { f16: bool, words: bool, finish: Finish },
    /// BatchNorm's partial reductions over channels-last vec4 rows walked
    /// by teams of eight invocations, `per_lane` columns a lane
    /// (generated: src/row_teams.rs), of f16 in memory with `f16`, of f32
    /// as two 64-bit words with `words`.
    ReduceTeams { per_lane: u8, f16: bool, words: bool },
    /// BatchNorm's per-channel kernels.
    BatchNorm,
    /// The family's (LayerNorm, RMSNorm, GroupNorm, InstanceNorm) per-row and
    /// elementwise kernels, over f16 tensors with `f16`, the elementwise
    /// passes four values at a time with `vec4` (of f32 as two 64-bit words
    /// with `words`).
    RowNorm { f16: bool, vec4: bool, words: bool },
    /// BatchNorm's elementwise passes over scalars or, with `vec4`, four
    /// values at a time (of f16 in memory with `f16`, of f32 as two 64-bit
    /// words with `words`).
    Elementwise { vec4: bool, f16: bool, words: bool },
    /// BatchNorm's elementwise passes over vec4 values walked by teams of
    /// eight invocations along wide channels-last rows, `per_lane` columns
    /// a lane (generated: src/row_teams.rs), of f16 in memory with `f16`,
    /// of f32 as two 64-bit words with `words`.
    ElementwiseRows { per_lane: u8, f16: bool, words: bool },
    /// LayerNorm's and RMSNorm's one-pass forward and backward for one row
    /// length (generated: src/resident.rs), over f16 tensors with `f16`, of
    /// f32 as two 64-bit words with `words`.
    Resident { plan: Resident, f16: bool, words: bool },
}

impl Shader {
    /// The same kernel with its f32 vec4 tensors as 64-bit words, where it
    /// has such tensors ([`crate::Access::Words64`]).
    fn in_words(self) -> Shader {
        match self {
            Shader::Elementwise { vec4: true, f16: false, .. } => {
                Shader::Elementwise { vec4: true, f16: false, words: true }
            }
            Shader::ElementwiseRows { per_lane, f16: false, .. } => {
                Shader::ElementwiseRows { per_lane, f16: false, words: true }
            }
            Shader::ReduceVec4 { f16: false, finish, .. } => Shader::ReduceVec4 { f16: false, words: true, finish },
            Shader::ReduceTeams { per_lane, f16: false, .. } => {
                Shader::ReduceTeams { per_lane, f16: false, words: true }
            }
            Shader::RowNorm { f16: false, vec4: true, .. } => Shader::RowNorm { f16: false, vec4: true, words: true },
            Shader::Resident { plan, f16: false, .. } => Shader::Resident { plan, f16: false, words: true },
            other => other,
        }
    }

    fn source(self) -> String {
        let generated;
        let body = match self {
            Shader::Reduce { .. } => {
                concat!(include_str!("../shaders/reduce.wgsl"), include_str!("../shaders/reduce_entries.wgsl"))
            }
            Shader::ReduceVec4 { .. } => {
                concat!(include_str!("../shaders/reduce_vec4.wgsl"), include_str!("../shaders/reduce_entries.wgsl"))
            }
            Shader::ReduceTeams { per_lane, .. } => {
                generated = format!(
                    "{}{}{}",
                    include_str!("../shaders/reduce_vec4.wgsl"),
                    include_str!("../shaders/reduce_entries.wgsl"),
                    crate::row_teams::reduce_source(per_lane.into())
                );
                &generated
            }
            Shader::BatchNorm => {
                concat!(
                    include_str!("../shaders/batch_norm.wgsl"),
                    include_str!("../shaders/running.wgsl"),
                    include_str!("../shaders/running_alone.wgsl")
                )
            }
            Shader::RowNorm { vec4, .. } => {
                generated = format!(
                    "{}{}{}{}{}",
                    include_str!("../shaders/row_bindings.wgsl"),
                    include_str!("../shaders/row_entry.wgsl"),
                    include_str!("../shaders/row_grads.wgsl"),
                    per_op(include_str!("../shaders/row_norm.wgsl"), &["apply", "dx"]),
                    if vec4 { "" } else { include_str!("../shaders/row_forward.wgsl") }
                );
                &generated
            }
            Shader::Elementwise { .. } => {
                generated = format!(
                    "{}{RUNNING}{MERGED}",
                    per_op(include_str!("../shaders/elementwise.wgsl"), ELEMENTWISE_OPS)
                );
                &generated
            }
            Shader::ElementwiseRows { per_lane, .. } => {
                generated = format!(
                    "{}{RUNNING}{MERGED}{}",
                    per_op(include_str!("../shaders/elementwise.wgsl"), ELEMENTWISE_OPS),
                    crate::row_teams::source(per_lane.into())
                );
                &generated
            }
            Shader::Resident { plan, .. } => {
                generated = plan.source();
                &generated
            }
        };
        // The compile-time differences between variants: the value type, how
        // four channels' entries spread over it, and the type in memory (`S`).
        let (f16, words) = match self {
            Shader::Reduce { f16, .. } => (f16, false),
            Shader::ReduceVec4 { f16, words, .. }
            | Shader::ReduceTeams { f16, words, .. }
            | Shader::RowNorm { f16, words, .. }
            | Shader::Elementwise { f16, words, .. }
            | Shader::ElementwiseRows { f16, words, .. }
            | Shader::Resident { f16, words, .. } => (f16, words),
            Shader::BatchNorm => (false, false),
        };
        let memory = match (f16, words) {
            (true, _) => "vec4<f16>",
            (false, true) => "vec2<u64>",
            (false, false) => "vec4<f32>",
        };
        let scalar = if f16 { "f16" } else { "f32" };
        // The elementwise shaders' value type V, and what they share over it.
        let lanes = include_str!("../shaders/lanes.wgsl");
        let lanes4 = "fn lanes4(a: f32, b: f32, c: f32, d: f32) -> V {\n";
        // The sum of a V's lanes.
        let total = "fn lanes_total(v: V) -> f32 {\n";
        let prelude = match self {
            Shader::Elementwise { vec4: true, .. }
            | Shader::ElementwiseRows { .. }
            | Shader::RowNorm { vec4: true, .. } => {
                format!(
                    "alias V = vec4<f32>;\nalias S = {memory};\n{lanes4}    return V(a, b, c, d);\n}}\n\
                     {total}    return v.x + v.y + v.z + v.w;\n}}\n{lanes}"
                )
            }
            Shader::Elementwise { vec4: false, .. } | Shader::RowNorm { vec4: false, .. } => {
                format!(
                    "alias V = f32;\nalias S = {scalar};\n{lanes4}    return a;\n}}\n{total}    return v;\n}}\n{lanes}"
                )
            }
            Shader::ReduceVec4 { .. } | Shader::ReduceTeams { .. } | Shader::Resident { .. } => {
                format!("alias S = {memory};\n")
            }
            Shader::Reduce { .. } => format!("alias S = {scalar};\n"),
            _ => String::new(),
        };
        // Values to and from their type in memory (S), for the shaders
        // that have a `words` variant.
        let value = match self {
            Shader::Elementwise { vec4: false, .. } | Shader::RowNorm { vec4: false, .. } => "f32",
            _ => "vec4<f32>",
        };
        let conversions = match self {
            Shader::Reduce { .. } | Shader::BatchNorm => String::new(),
            _ if words => WORDS.to_string(),
            _ => format!(
                "fn from_memory(s: S) -> {value} {{\n    return {value}(s);\n}}\n\
                 fn to_memory(v: {value}) -> S {{\n    return S(v);\n}}\n"
            ),
        };
        // An `enable` directive must come before everything else.
        let enable = if f16 { "enable f16;\n" } else { "" };
        // The merge kernels' shared loop (WGSL resolves declarations in any order).
        let merge = match self {
            Shader::BatchNorm
            | Shader::RowNorm { .. }
            | Shader::Elementwise { .. }
            | Shader::ElementwiseRows { .. } => {
                include_str!("../shaders/merge.wgsl")
            }
            _ => "",
        };
        // How invocations walk a view (runs, interleaved row ranges).
        let walks = match self {
            Shader::Elementwise { .. }
            | Shader::ElementwiseRows { .. }
            | Shader::RowNorm { .. }
            | Shader::Reduce { .. }
            | Shader::ReduceVec4 { .. }
            | Shader::ReduceTeams { .. } => {
                include_str!("../shaders/walks.wgsl")
            }
            _ => "",
        };
        let finish = match self {
            Shader::Reduce { finish, .. } => finish.source(false),
            Shader::ReduceVec4 { finish, .. } => finish.source(true),
            Shader::ReduceTeams { .. } => Finish::None.source(true),
            _ => String::new(),
        };
        let source = format!(
            "{enable}{}\n{FLAGS_WGSL}{prelude}{conversions}{}\n{merge}\n{walks}{finish}",
            include_str!("../shaders/common.wgsl"),
            body
        );
        match self {
            Shader::Reduce { finish, .. } | Shader::ReduceVec4 { finish, .. } if finish != Finish::None => {
                // The last workgroup reads the others' partials within the dispatch.
                source.replacen(PARTIALS, &format!("@coherent {PARTIALS}"), 1)
            }
            _ => source,
        }
    }
}

/// finish.wgsl's units where they are channels (of one view: BatchNorm's,
/// the family's columns), each `parts` partials from `chan_base`.
const CHANNEL_UNITS: &str = "
fn units(b: Block) -> vec3<u32> {
    return vec3<u32>(p.chan_base + b.first, b.step, p.chan_base + b.end);
}
fn unit_parts() -> u32 {
    return p.parts;
}
";

/// finish.wgsl's step after the merge, for the commits that end with it.
const AFTER_MERGE: &str = "fn after_merge(b: Block, t: u32) {}\n";

/// The partials' declaration in reduce_entries.wgsl.
const PARTIALS: &str = "var<storage, read_write> partials: array<vec4<f32>>;";

/// What a reduction's last workgroup does after every workgroup stored its
/// partials (shaders/finish.wgsl; src/batch_norm/finishing.rs says when).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Finish {
    /// Nothing: a merge kernel follows.
    None,
    /// Merges statistics into BatchNorm's entries (and running statistics).
    Stats,
    /// Merges the backward's sums into dweight, dbias and the dx coefficients.
    Grads,
    /// Merges the family's column sums into dweight and dbias.
    Columns,
    /// Merges the family's statistics into its stat rows' entries.
    Rows,
    /// Merges the eval backward's sums (each channel's entry taken from the
    /// running statistics) into dweight, dbias, the dx coefficients and the
    /// running entries.
    GradsEval,
    /// Merges GroupNorm's and InstanceNorm's sums per instance (each one's
    /// centre taken from its stat row), then the stat rows' dx
    /// coefficients, dweight and dbias.
    Instances,
}

impl Finish {
    /// The code appended to a reduce shader: a `finish_reduction` that does
    /// nothing, or finish.wgsl with its commit; and where the reduction
    /// reads a channel's entry (`channel_entry`): from `chan`, or the eval
    /// backward's from the running statistics. `vec4` shaders declare no
    /// weight of their own (reduce.wgsl's serves the scalar one).
    fn source(self, vec4: bool) -> String {
        let from_chan = "\nfn channel_entry(c: u32) -> vec4<f32> {\n    return chan[c];\n}\n";
        let commit = match self {
            Finish::None => return format!("{from_chan}fn finish_reduction(b: Block, t: u32) {{}}\n"),
            Finish::Stats => {
                concat!(include_str!("../shaders/finish_stats.wgsl"), include_str!("../shaders/running_alone.wgsl"))
            }
            Finish::Grads => include_str!("../shaders/finish_grads.wgsl"),
            Finish::Columns => include_str!("../shaders/finish_columns.wgsl"),
            Finish::GradsEval => include_str!("../shaders/finish_grads_eval.wgsl"),
            Finish::Rows => {
                concat!(include_str!("../shaders/finish_rows.wgsl"), include_str!("../shaders/row_entry.wgsl"))
            }
            Finish::Instances => {
                concat!(include_str!("../shaders/finish_instances.wgsl"), include_str!("../shaders/row_grads.wgsl"))
            }
        };
        // Where the reduction takes its entries, and what follows the merge:
        // finish_grads_eval.wgsl and finish_instances.wgsl say it themselves.
        let (from_chan, after_merge) = match self {
            Finish::GradsEval => ("", AFTER_MERGE),
            Finish::Instances => ("", ""),
            _ => (from_chan, AFTER_MERGE),
        };
        // A block's units are its channels, each a run of `parts` partials,
        // but for the family's stat rows (finish_rows.wgsl) and instances.
        let channel_units = if matches!(self, Finish::Rows | Finish::Instances) { "" } else { CHANNEL_UNITS };
        let weight = if vec4 { "@group(0) @binding(5) var<storage, read> weight: array<f32>;\n" } else { "" };
        format!(
            "{weight}{from_chan}{channel_units}{after_merge}{}{commit}{RUNNING}{}",
            include_str!("../shaders/finish.wgsl"),
            include_str!("../shaders/merge.wgsl")
        )
    }
}

/// BatchNorm's per-channel arithmetic (entries, running statistics, dx
/// coefficients), shared by its merge kernels and elementwise passes.
const RUNNING: &str = include_str!("../shaders/running.wgsl");

/// BatchNorm's elementwise passes that merge the partials themselves.
const MERGED: &str = include_str!("../shaders/merged.wgsl");

/// The line after which an elementwise shader is written once for all of
/// its ops, with `OP` standing for the op's name.
const PER_OP: &str = "// ---- per op ----\n";

/// BatchNorm's elementwise passes: apply, its eval form on running
/// coefficients, and dx.
const ELEMENTWISE_OPS: &[&str] = &["apply", "eval", "dx"];

/// An elementwise shader (elementwise.wgsl, row_norm.wgsl) with its per-op
/// part and the shared walks (elementwise_ops.wgsl) appended once for each
/// of `ops` in place of `OP`: the passes walk a view alike and differ only
/// in what they do at each value.
fn per_op(shader: &str, ops: &[&str]) -> String {
    let (common, template) = shader.split_once(PER_OP).unwrap_or((shader, ""));
    let template = format!("{template}{}", include_str!("../shaders/elementwise_ops.wgsl"));
    let mut s = common.to_string();
    for op in ops {
        s.push_str(&template.replace("OP_", &format!("{op}_")));
    }
    s
}

/// f32 vec4s as two 64-bit words (little-endian: a word's low half is the
/// first float). Bit casts only, so values pass unchanged, NaNs included.
const WORDS: &str = "\
fn from_memory(s: vec2<u64>) -> vec4<f32> {
    return vec4<f32>(
        bitcast<f32>(u32(s.x & 0xfffffffflu)), bitcast<f32>(u32(s.x >> 32u)),
        bitcast<f32>(u32(s.y & 0xfffffffflu)), bitcast<f32>(u32(s.y >> 32u)),
    );
}
fn to_memory(v: vec4<f32>) -> vec2<u64> {
    let b = bitcast<vec4<u32>>(v);
    return vec2<u64>(u64(b.x) | (u64(b.y) << 32u), u64(b.z) | (u64(b.w) << 32u));
}
";

/// One compute pipeline: a shader's entry point with its override constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KernelKey {
    pub shader: Shader,
    pub entry: &'static str,
    /// Value of the shader's `MODE` override, for shaders that have one.
    pub mode: Option<u32>,
    /// reduce.wgsl's `TRAILING` override (see [`KernelKey::trailing`]).
    pub trailing: bool,
}

impl KernelKey {
    pub const fn new(shader: Shader, entry: &'static str) -> KernelKey {
        KernelKey { shader, entry, mode: None, trailing: false }
    }

    pub const fn with_mode(shader: Shader, entry: &'static str, mode: u32) -> KernelKey {
        KernelKey { shader, entry, mode: Some(mode), trailing: false }
    }

    /// The same reduce.wgsl kernel for LayerNorm's and RMSNorm's geometry
    /// (one group, a weight per value): its weight and stat-row lookups
    /// take no division. An override, because on lavapipe a branch inside
    /// the loop costs both sides.
    pub const fn trailing(mut self, trailing: bool) -> KernelKey {
        self.trailing = trailing;
        self
    }
}

/// Compiled pipelines of one device. The set of keys is fixed by the crate's
/// code, so the cache is bounded.
pub(crate) struct KernelCache {
    device: wgpu::Device,
    /// Compile f32 vec4 kernels over 64-bit words ([`crate::Access`]).
    words: AtomicBool,
    modules: Mutex<HashMap<Shader, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<KernelKey, Arc<wgpu::ComputePipeline>>>,
}

impl KernelCache {
    pub fn new(device: &wgpu::Device, words: bool) -> KernelCache {
        KernelCache {
            device: device.clone(),
            words: AtomicBool::new(words),
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
        }
    }

    pub fn words(&self) -> bool {
        self.words.load(Ordering::Relaxed)
    }

    pub fn set_words(&self, words: bool) {
        self.words.store(words, Ordering::Relaxed);
    }

    /// `key` as it is compiled: over 64-bit words where the access says so.
    pub fn resolve(&self, mut key: KernelKey) -> KernelKey {
        if self.words() {
            key.shader = key.shader.in_words();
        }
        key
    }

    /// The pipeline for `key`, compiled on first use (over 64-bit words
    /// where the access says so). Call inside `Context::scoped` so compile
    /// errors become `Err`.
    pub fn get(&self, key: KernelKey) -> Result<Arc<wgpu::ComputePipeline>> {
        let key = self.resolve(key);
        if let Some(p) = lock(&self.pipelines).get(&key) {
            return Ok(p.clone());
        }
        let module = lock(&self.modules)
            .entry(key.shader)
            .or_insert_with(|| {
                self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(&format!("{:?}", key.shader)),
                    source: wgpu::ShaderSource::Wgsl(key.shader.source().into()),
                })
            })
            .clone();
        let mut constants: Vec<(&str, f64)> = key.mode.map(|m| ("MODE", m as f64)).into_iter().collect();
        if key.trailing {
            constants.push(("TRAILING", 1.0));
        }
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(key.entry),
            layout: None,
            module: &module,
            entry_point: Some(key.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                // Every kernel writes its workgroup memory before reading it.
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        let pipeline = Arc::new(pipeline);
        lock(&self.pipelines).insert(key, pipeline.clone());
        Ok(pipeline)
    }
}

/// Locks a mutex, ignoring poisoning: the guarded maps stay valid even if a
/// thread panicked while holding them.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Mirror of `struct Params` in shaders/common.wgsl (116 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ChannelParams {
    pub outer: u32,
    pub channels: u32,
    pub inner: u32,
    pub slices: u32,
    pub slice_len: u32,
    pub width: u32,
    pub parts: u32,
    pub flags: u32,
    pub x_off: u32,
    pub y_off: u32,
    pub dy_off: u32,
    pub dx_off: u32,
    pub eps: f32,
    pub momentum: f32,
    pub count: f32,
    pub tree: u32,
    pub z_off: u32,
    pub dz_off: u32,
    pub batch_stride: u32,
    pub row_div: u32,
    pub groups: u32,
    pub cpg: u32,
    pub wdiv: u32,
    pub rows: u32,
    pub chan_base: u32,
    pub part_base: u32,
    /// The family's part of one sample (a run of groups): its first weight.
    pub weight_base: u32,
    /// With FLAG_LANES_ARE_CHANNELS: the tensor's channels; lane l of view
    /// column c holds channel (4c + l) % lane_channels.
    pub lane_channels: u32,
    /// Always 0.0 (see `relu_zero` in common.wgsl).
    pub relu_zero: f32,
}

impl ChannelParams {
    /// The parameters of `view` with `flags` set where their condition
    /// holds, `eps`, `momentum` and `count` values per statistic; the rest
    /// zero.
    pub fn of(view: ChannelView, flags: &[(u32, bool)], eps: f32, momentum: f32, count: usize) -> ChannelParams {
        ChannelParams {
            outer: view.outer as u32,
            channels: view.channels as u32,
            inner: view.inner as u32,
            flags: flags.iter().filter(|(_, on)| *on).fold(0, |all, (flag, _)| all | flag),
            eps,
            momentum,
            count: count as f32,
            ..Default::default()
        }
    }
}

/// The bits of `ChannelParams::flags`, defined once: these constants and
/// their WGSL twins (`FLAGS_WGSL`), which every shader gets.
macro_rules! flags {
    ($($(#[doc = $doc:literal])* $name:ident = $bit:literal;)*) => {
        $($(#[doc = $doc])* pub(crate) const $name: u32 = $bit;)*
        const FLAGS_WGSL: &str = concat!($("const ", stringify!($name), ": u32 = ", stringify!($bit), "u;\n"),*);
    };
}

flags! {
    /// The layer's weight (and BatchNorm's bias) apply.
    FLAG_AFFINE = 1;
    /// BatchNorm: update the running statistics.
    FLAG_UPDATE_RUNNING = 2;
    /// Normalize with the batch's statistics (not the running ones).
    FLAG_BATCH_STATS = 4;
    /// Folding: the preceding layer has a bias.
    FLAG_LAYER_BIAS = 8;
    /// BatchNorm: reject a batch whose statistics are not finite.
    FLAG_CHECK_FINITE = 16;
    /// Family: a bias is added (LayerNorm's bias can be off while its weight is on).
    FLAG_BIAS = 32;
    /// Family: RMSNorm (no centring: normalize by sqrt(mean(x^2) + eps)).
    FLAG_RMS = 64;
    /// vec4 views of channels-last data: a vec4 holds four channels (see lane_channels).
    FLAG_LANES_ARE_CHANNELS = 128;
    /// BatchNorm's merge_stats writes the running statistics itself (no
    /// commit_running: momentum given, no check_finite).
    FLAG_RUNNING_IN_MERGE = 256;
}

/// The grid of a 64-invocation kernel that loops grid-stride over `n`
/// items (`struct Grid` in common.wgsl): one invocation an item, up to a
/// dispatch's 65,535 workgroups.
pub(crate) fn grid_stride(n: usize) -> (u32, u32) {
    (n.div_ceil(64).clamp(1, 65535) as u32, 1)
}

/// A bind group for `pipeline`'s group 0 from `(binding, resource)` pairs.
pub(crate) fn bind(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    entries: &[(u32, wgpu::BindingResource<'_>)],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry<'_>> = entries
        .iter()
        .map(|(binding, resource)| wgpu::BindGroupEntry { binding: *binding, resource: resource.clone() })
        .collect();
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    })
}

/// Records one dispatch with a 3-D grid.
pub(crate) fn dispatch3(
    pass: &mut wgpu::ComputePass<'_>,
    pipeline: &wgpu::ComputePipeline,
    group: &wgpu::BindGroup,
    workgroups: (u32, u32, u32),
) {
    pass.set_pipeline(pipeline);
    pass.set_bind_group(0, group, &[]);
    pass.dispatch_workgroups(workgroups.0, workgroups.1, workgroups.2);
    DISPATCHES.with(|d| d.set(d.get() + 1));
}

thread_local! {
    static DISPATCHES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many compute dispatches wgpu-norm's ops have recorded on this thread
/// so far. The difference around a call is what that call records: a
/// measure of the work it hands the GPU (each dispatch costs a GPU some
/// microseconds however small its grid).
pub fn recorded_dispatches() -> u64 {
    DISPATCHES.with(|d| d.get())
}

/// A buffer of `usage` holding `contents` (a multiple of 4 bytes, not
/// empty). Unlike wgpu's `create_buffer_init`, a lost device gives `Err`
/// rather than a panic.
pub(crate) fn create_init(
    device: &wgpu::Device,
    label: &str,
    contents: &[u8],
    usage: wgpu::BufferUsages,
) -> Result<wgpu::Buffer> {
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: contents.len() as u64,
        usage,
        mapped_at_creation: true,
    });
    buffer
        .get_mapped_range_mut(..)
        .map_err(|e| Error::DeviceLost(format!("could not fill a new buffer: {e}")))?
        .copy_from_slice(contents);
    buffer.unmap();
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resident::MAX_ONE_LANE;
    use crate::row_teams::{MAX_PER_LANE, MAX_REDUCE_PER_LANE};

    /// The memory types a kernel with `words` variants is built over:
    /// (f16, words) as the cache builds them (words only for f32).
    const MEMORY: [(bool, bool); 3] = [(false, false), (false, true), (true, false)];

    const FINISHES: [Finish; 7] = [
        Finish::None,
        Finish::Stats,
        Finish::Grads,
        Finish::Columns,
        Finish::GradsEval,
        Finish::Rows,
        Finish::Instances,
    ];

    /// Every shader the cache can build.
    fn every_variant() -> Vec<Shader> {
        let mut all = vec![Shader::BatchNorm];
        for f16 in [false, true] {
            for finish in FINISHES {
                all.push(Shader::Reduce { f16, finish });
            }
            all.push(Shader::RowNorm { f16, vec4: false, words: false });
            all.push(Shader::Elementwise { vec4: false, f16, words: false });
        }
        for (f16, words) in MEMORY {
            for finish in FINISHES {
                all.push(Shader::ReduceVec4 { f16, words, finish });
            }
            all.push(Shader::RowNorm { f16, vec4: true, words });
            all.push(Shader::Elementwise { vec4: true, f16, words });
            for per_lane in 1..=MAX_REDUCE_PER_LANE as u8 {
                all.push(Shader::ReduceTeams { per_lane, f16, words });
            }
            for per_lane in 1..=MAX_PER_LANE as u8 {
                all.push(Shader::ElementwiseRows { per_lane, f16, words });
            }
            // One invocation a row, or a subgroup of any size up to the workgroup's.
            let one_lane = (1..=MAX_ONE_LANE as u32).map(|vectors| Resident { lanes: 1, vectors });
            let subgroups = [4, 8, 16, 32, 64].into_iter().flat_map(|lanes| {
                (1..=crate::resident::MAX_PER_LANE as u32).map(move |vectors| Resident { lanes, vectors })
            });
            for plan in one_lane.chain(subgroups) {
                all.push(Shader::Resident { plan, f16, words });
            }
        }
        all
    }

    /// Which kind of shader a variant is: an exhaustive match, so that a new
    /// kind fails to compile here until `every_variant` covers it.
    fn kind(shader: Shader) -> usize {
        match shader {
            Shader::Reduce { .. } => 0,
            Shader::ReduceVec4 { .. } => 1,
            Shader::ReduceTeams { .. } => 2,
            Shader::BatchNorm => 3,
            Shader::RowNorm { .. } => 4,
            Shader::Elementwise { .. } => 5,
            Shader::ElementwiseRows { .. } => 6,
            Shader::Resident { .. } => 7,
        }
    }

    /// Every variant parses and validates with naga on the host, as on any
    /// device: a broken variant fails here, not only on the device that
    /// happens to select it.
    #[test]
    fn every_shader_variant_validates() {
        let all = every_variant();
        let kinds: std::collections::BTreeSet<usize> = all.iter().map(|&s| kind(s)).collect();
        assert_eq!(kinds.len(), 8, "every kind of shader is covered");
        for shader in all {
            assert_eq!(shader.in_words(), shader.in_words().in_words(), "{shader:?}");
            let source = shader.source();
            let module = naga::front::wgsl::parse_str(&source)
                .unwrap_or_else(|e| panic!("{shader:?} does not parse: {}", e.emit_to_string(&source)));
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
                .validate(&module)
                .unwrap_or_else(|e| panic!("{shader:?} does not validate: {}", e.emit_to_string(&source)));
        }
    }
}
