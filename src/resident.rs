//! The family's one-pass forward (shaders/row_resident.wgsl): when every
//! stat row is a contiguous run short enough to stay in a workgroup's
//! registers, one kernel reads it once, takes its statistics and writes y,
//! two accesses per value instead of the three of statistics-then-apply.
//!
//! GPUs only ([`Reduction::Tree`]): the row's reductions need workgroup
//! barriers, and lavapipe runs a workgroup's 32 SIMD batches one after
//! another, switching between all of them at every barrier. There the one
//! pass took LayerNorm 8192x512 from 9.7 to 27 ms (13 ms with the barriers
//! taken out, wrong results), so CPU adapters keep the two passes.

use crate::context::Reduction;
use crate::family::Geometry;
use crate::kernels::{KernelKey, Shader};

/// Most vec4s one lane holds (the shader's K, a power of two).
const MAX_K: usize = 8;
/// vec4s per lane the lane count aims for: rows of up to 4 * 256 vec4s keep
/// K at 4 or below, so a LayerNorm lane's weights also fit in registers.
const TARGET_K: usize = 4;
const WG: usize = 256;
const MAX_GRID: usize = 65535;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ResidentPlan {
    /// Lanes per row, a power of two up to 256 (the shader's MODE).
    pub lanes: u32,
    /// vec4s per lane (the shader's K).
    pub k: u32,
    pub grid: (u32, u32),
}

impl ResidentPlan {
    /// The plan for `geo` with x and y starting `x_off` and `y_off` values
    /// into their bindings, or None when its rows are not contiguous runs of
    /// whole vec4s that fit (channels-last groups, rows above 8192 values,
    /// views not aligned to four values) or the reduction is per invocation
    /// (CPU adapters): those take the two-pass forward.
    pub fn new(geo: &Geometry, x_off: u32, y_off: u32, reduction: Reduction) -> Option<ResidentPlan> {
        if reduction != Reduction::Tree {
            return None;
        }
        let row_len = geo.row_len();
        let contiguous = !geo.batched && geo.stat.outer == 1;
        let aligned = x_off.is_multiple_of(4) && y_off.is_multiple_of(4) && row_len.is_multiple_of(4);
        let n4 = row_len / 4;
        if !contiguous || !aligned || n4 == 0 || n4 > WG * MAX_K || geo.rows() == 0 {
            return None;
        }
        let lanes = n4.div_ceil(TARGET_K).next_power_of_two().min(WG);
        let k = n4.div_ceil(lanes).next_power_of_two();
        let blocks = geo.rows().div_ceil(WG / lanes);
        Some(ResidentPlan { lanes: lanes as u32, k: k as u32, grid: (blocks.min(MAX_GRID) as u32, 1) })
    }

    pub fn kernel(&self, f16: bool) -> KernelKey {
        KernelKey::with_mode(Shader::Resident { f16, k: self.k }, "forward_resident", self.lanes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;

    #[test]
    fn rows_that_fit_take_one_pass() {
        // LayerNorm rows of 512: 32 lanes of four vec4s, eight rows a workgroup.
        let ln = ResidentPlan::new(&Geometry::trailing(8192, 512), 0, 0, Reduction::Tree).unwrap();
        assert_eq!((ln.lanes, ln.k, ln.grid), (32, 4, (1024, 1)));
        // Rows of 56: 14 vec4s over 4 lanes of 4.
        let short = ResidentPlan::new(&Geometry::trailing(100, 56), 0, 0, Reduction::Tree).unwrap();
        assert_eq!((short.lanes, short.k, short.grid), (4, 4, (2, 1)));
        // GroupNorm 32x64x56x56, 32 groups: 1568 vec4s a row, 256 lanes of 8.
        let gn = Geometry::grouped(&[32, 64, 56, 56], Layout::Nchw, 32);
        let plan = ResidentPlan::new(&gn, 0, 0, Reduction::Tree).unwrap();
        assert_eq!((plan.lanes, plan.k, plan.grid), (256, 8, (1024, 1)));
    }

    #[test]
    fn other_rows_take_two_passes() {
        let ln = Geometry::trailing(8192, 512);
        assert_eq!(ResidentPlan::new(&ln, 0, 0, Reduction::PerInvocation), None);
        let nhwc = Geometry::grouped(&[2, 8, 4, 4], Layout::Nhwc, 4);
        assert_eq!(ResidentPlan::new(&nhwc, 0, 0, Reduction::Tree), None);
        assert_eq!(ResidentPlan::new(&Geometry::trailing(4, 8196), 0, 0, Reduction::Tree), None);
        assert_eq!(ResidentPlan::new(&Geometry::trailing(4, 8192), 0, 0, Reduction::Tree).map(|p| p.k), Some(8));
        assert_eq!(ResidentPlan::new(&Geometry::trailing(4, 6), 0, 0, Reduction::Tree), None);
        assert_eq!(ResidentPlan::new(&Geometry::trailing(4, 8), 2, 0, Reduction::Tree), None);
        assert_eq!(ResidentPlan::new(&Geometry::trailing(4, 8), 0, 6, Reduction::Tree), None);
    }
}
