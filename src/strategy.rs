//! How the kernels suit the device class: the reduction strategy and the
//! memory access, chosen per device by the context and overridable. Plain
//! values, so that plans and kernels can name them without a device.

/// How a reduction combines the values of one workgroup's invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// A tree in workgroup memory (eight barriers), one partial per
    /// workgroup: what GPUs run best.
    Tree = 0,
    /// One partial per invocation and no barrier, for the merge kernels to
    /// combine: what CPU adapters (lavapipe, WARP, SwiftShader) run best,
    /// since they execute a workgroup in SIMD batches and pay each barrier
    /// with a switch between all of them.
    PerInvocation = 1,
}

/// How the vec4 kernels move f32 tensors through memory. Both give the
/// same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Four f32 values a vec4: what GPUs run best.
    Floats,
    /// Two 64-bit words a vec4 (needs `SHADER_INT64`): what CPU adapters
    /// run best. lavapipe loads and stores each component of each lane on
    /// its own, so a vec4 of f32 costs four of those and two words two.
    Words64,
}

impl Reduction {
    /// `tree` or `per-invocation`: the names `WGPU_NORM_REDUCTION` and
    /// `wgpu-norm bench --reduction` take.
    pub fn name(self) -> &'static str {
        match self {
            Reduction::Tree => "tree",
            Reduction::PerInvocation => "per-invocation",
        }
    }

    /// The strategy of a [`Self::name`].
    pub fn from_name(name: &str) -> Option<Reduction> {
        [Reduction::Tree, Reduction::PerInvocation].into_iter().find(|r| r.name() == name)
    }
}

impl Access {
    /// `floats` or `words64`: the names `WGPU_NORM_ACCESS` and
    /// `wgpu-norm bench --access` take.
    pub fn name(self) -> &'static str {
        match self {
            Access::Floats => "floats",
            Access::Words64 => "words64",
        }
    }

    /// The access of a [`Self::name`].
    pub fn from_name(name: &str) -> Option<Access> {
        [Access::Floats, Access::Words64].into_iter().find(|a| a.name() == name)
    }
}
