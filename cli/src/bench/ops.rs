//! The bench's op registry (the names of the `--ops` and JSON contract,
//! the bytes each op must move, which ops a run leaves out by default),
//! what each op needs of a shape, and the parsers of `--ops`, `--shapes`
//! and `--layouts`.

use wgpu_norm::{Error, Layout, Result};
use wgpu_norm_reference::Fused;

/// An op the benchmark can run today.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `BatchNorm::forward`, eval mode (running statistics).
    BnForwardEval,
    /// `BatchNorm::forward`, training mode (batch statistics, running update).
    BnForwardTrain,
    /// `BatchNorm::backward`, training mode, after a training forward.
    BnBackwardTrain,
    /// `BatchNorm::backward`, eval mode.
    BnBackwardEval,
    /// `forward` then `backward`, training mode: one training step of the layer.
    BnTrainStep,
    /// `BatchNorm::forward` with `Epilogue::Relu`, training mode.
    BnReluForwardTrain,
    /// `BatchNorm::forward` with `Epilogue::AddRelu`, training mode (z is a second input).
    BnAddReluForwardTrain,
    /// `LayerNorm::forward` over the last dimension.
    LnForward,
    /// `LayerNorm::backward` after a forward.
    LnBackward,
    /// `RmsNorm::forward` over the last dimension.
    RmsForward,
    /// `RmsNorm::backward` after a forward.
    RmsBackward,
    /// `GroupNorm::forward` ([`group_count`] groups).
    GnForward,
    /// `GroupNorm::backward` after a forward.
    GnBackward,
    /// `InstanceNorm::forward` (PyTorch defaults: no affine, no running stats).
    InForward,
    /// `InstanceNorm::backward` after a forward.
    InBackward,
    /// `BatchNorm::forward` with `Epilogue::Relu`, eval mode.
    BnReluForwardEval,
    /// `BatchNorm::forward` with `Epilogue::AddRelu`, eval mode (z is a second input).
    BnAddReluForwardEval,
    /// `forward` then `backward` with `Epilogue::Relu`, training mode.
    BnReluTrainStep,
    /// `forward` then `backward` with `Epilogue::AddRelu` (dx and dz), training mode.
    BnAddReluTrainStep,
}

/// The layer an op runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Bn,
    Ln,
    Rms,
    Gn,
    In,
}

/// One entry of the op registry.
#[derive(Clone, Copy, Debug)]
pub struct OpInfo {
    /// The name used by `--ops` and in the JSON output (a contract).
    pub name: &'static str,
    /// Whole tensors the op must move at the least: inputs read once plus
    /// outputs written once. Bytes moved = `tensors * elements * 4`.
    pub tensors: u64,
    /// The op, or `None` while the library does not have it.
    pub op: Option<Op>,
    /// Whether the default run (no `--ops`) includes it; `--ops all` runs
    /// every op.
    pub default: bool,
}

/// Every op name of the benchmark's contract, in output order.
pub const OPS: &[OpInfo] = &[
    OpInfo { name: "bn_forward_eval", tensors: 2, op: Some(Op::BnForwardEval), default: true },
    OpInfo { name: "bn_forward_train", tensors: 2, op: Some(Op::BnForwardTrain), default: true },
    OpInfo { name: "bn_backward_train", tensors: 3, op: Some(Op::BnBackwardTrain), default: true },
    OpInfo { name: "bn_backward_eval", tensors: 3, op: Some(Op::BnBackwardEval), default: true },
    OpInfo { name: "bn_train_step", tensors: 5, op: Some(Op::BnTrainStep), default: true },
    // Fused BatchNorm: x (+ z) in, y out.
    OpInfo { name: "bn_relu_forward_train", tensors: 2, op: Some(Op::BnReluForwardTrain), default: true },
    OpInfo { name: "bn_add_relu_forward_train", tensors: 3, op: Some(Op::BnAddReluForwardTrain), default: true },
    // The normalization family: forward x -> y, backward x, dy -> dx.
    OpInfo { name: "ln_forward", tensors: 2, op: Some(Op::LnForward), default: true },
    OpInfo { name: "ln_backward", tensors: 3, op: Some(Op::LnBackward), default: true },
    OpInfo { name: "rms_forward", tensors: 2, op: Some(Op::RmsForward), default: true },
    OpInfo { name: "rms_backward", tensors: 3, op: Some(Op::RmsBackward), default: true },
    OpInfo { name: "gn_forward", tensors: 2, op: Some(Op::GnForward), default: true },
    OpInfo { name: "gn_backward", tensors: 3, op: Some(Op::GnBackward), default: true },
    OpInfo { name: "in_forward", tensors: 2, op: Some(Op::InForward), default: true },
    OpInfo { name: "in_backward", tensors: 3, op: Some(Op::InBackward), default: true },
    // The fused forms a residual network runs (`--model resnet50`): eval
    // forwards, and training steps whose backward reads x, (z,) dy and
    // writes dx (and dz).
    OpInfo { name: "bn_relu_forward_eval", tensors: 2, op: Some(Op::BnReluForwardEval), default: false },
    OpInfo { name: "bn_add_relu_forward_eval", tensors: 3, op: Some(Op::BnAddReluForwardEval), default: false },
    OpInfo { name: "bn_relu_train_step", tensors: 5, op: Some(Op::BnReluTrainStep), default: false },
    OpInfo { name: "bn_add_relu_train_step", tensors: 8, op: Some(Op::BnAddReluTrainStep), default: false },
];

/// GroupNorm's group count for `channels`: 32 (the usual choice, as in
/// ResNet/UNet GroupNorm layers) when 32 divides the channels, else the
/// largest divisor of the channels not above 32 (3 channels: 3 groups).
pub fn group_count(channels: usize) -> usize {
    (1..=channels.min(32)).rev().find(|&g| channels.is_multiple_of(g)).unwrap_or(1)
}

impl Op {
    /// The registry entry of this op.
    pub fn info(self) -> &'static OpInfo {
        OPS.iter().find(|i| i.op == Some(self)).expect("every Op has a registry entry")
    }

    /// The contract name (`bn_forward_eval`, ...).
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Bytes the op must move at the least on a tensor of `elements` f32.
    pub fn bytes(self, elements: usize) -> u64 {
        self.info().tensors * elements as u64 * 4
    }

    pub(super) fn kind(self) -> Kind {
        match self {
            Op::LnForward | Op::LnBackward => Kind::Ln,
            Op::RmsForward | Op::RmsBackward => Kind::Rms,
            Op::GnForward | Op::GnBackward => Kind::Gn,
            Op::InForward | Op::InBackward => Kind::In,
            _ => Kind::Bn,
        }
    }

    /// Family ops timed as a backward (after one forward in setup).
    pub(super) fn family_backward(self) -> bool {
        matches!(self, Op::LnBackward | Op::RmsBackward | Op::GnBackward | Op::InBackward)
    }

    /// LayerNorm and RMSNorm read their input row-major whatever the layout:
    /// the bench runs them once per shape, under the first of `--layouts`.
    pub fn ignores_layout(self) -> bool {
        matches!(self.kind(), Kind::Ln | Kind::Rms)
    }

    /// Whether the op has a naive baseline (BatchNorm, and its fused
    /// training forwards).
    pub fn has_naive(self) -> bool {
        self.kind() == Kind::Bn
            && !matches!(
                self,
                Op::BnReluForwardEval | Op::BnAddReluForwardEval | Op::BnReluTrainStep | Op::BnAddReluTrainStep
            )
    }

    /// The epilogue of a BatchNorm op.
    pub(super) fn fused(self) -> Fused {
        match self {
            Op::BnReluForwardTrain | Op::BnReluForwardEval | Op::BnReluTrainStep => Fused::Relu,
            Op::BnAddReluForwardTrain | Op::BnAddReluForwardEval | Op::BnAddReluTrainStep => Fused::AddRelu,
            _ => Fused::None,
        }
    }

    /// BatchNorm ops on batch statistics.
    pub(super) fn training(self) -> bool {
        matches!(
            self,
            Op::BnForwardTrain
                | Op::BnBackwardTrain
                | Op::BnTrainStep
                | Op::BnReluForwardTrain
                | Op::BnAddReluForwardTrain
                | Op::BnReluTrainStep
                | Op::BnAddReluTrainStep
        )
    }

    /// BatchNorm ops whose output y is checked.
    pub(super) fn runs_forward(self) -> bool {
        self.kind() == Kind::Bn && !matches!(self, Op::BnBackwardTrain | Op::BnBackwardEval)
    }

    /// BatchNorm ops whose gradients are checked.
    pub(super) fn runs_backward(self) -> bool {
        matches!(
            self,
            Op::BnBackwardTrain | Op::BnBackwardEval | Op::BnTrainStep | Op::BnReluTrainStep | Op::BnAddReluTrainStep
        )
    }

    /// Why the op does not run on `shape` in `layout`, if it does not:
    /// GroupNorm and InstanceNorm need spatial dimensions (rank >= 3).
    /// Tensors above the device's storage binding limit are cut into
    /// chunks: BatchNorm's anywhere; the family's into whole samples (rows
    /// for LayerNorm and RMSNorm) or, channels-second, whole groups of one
    /// sample, so one such unit must fit a binding.
    pub fn unsupported(self, shape: &[usize], layout: Layout, limits: &wgpu::Limits) -> Option<String> {
        let max_binding = limits.max_storage_buffer_binding_size;
        // Every tensor is made on the host and on the device: refuse before
        // allocating what neither can hold.
        let values = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        match values.and_then(|v| v.checked_mul(4)) {
            Some(bytes) if bytes > limits.max_buffer_size => {
                return Some(format!(
                    "{}: {bytes} bytes a tensor exceed the device's buffer size limit of {}",
                    self.name(),
                    limits.max_buffer_size
                ))
            }
            Some(_) if values > Some(MAX_TENSOR_VALUES) => {
                return Some(format!(
                    "{}: {} values a tensor; the bench holds its tensors on the host too, up to {MAX_TENSOR_VALUES}",
                    self.name(),
                    values.unwrap_or(u64::MAX)
                ))
            }
            None => return Some(format!("{}: the shape's size overflows", self.name())),
            _ => {}
        }
        let sample: u64 = shape.iter().skip(1).product::<usize>() as u64 * 4;
        let channels = shape.get(1).copied().unwrap_or(1).max(1) as u64;
        let unit_bytes = match self.kind() {
            Kind::Bn => 0,
            Kind::Ln | Kind::Rms => shape.last().copied().unwrap_or(0) as u64 * 4,
            Kind::Gn if layout == Layout::Nchw => sample / group_count(channels as usize) as u64,
            Kind::In if layout == Layout::Nchw => sample / channels,
            _ => sample,
        };
        match self.kind() {
            Kind::Gn | Kind::In if shape.len() < 3 => {
                Some(format!("{}: needs rank >= 3 (N, C, spatial...), got rank {}", self.name(), shape.len()))
            }
            // A part's binding also spans its offset's alignment (up to 256 bytes).
            _ if unit_bytes > 0 && unit_bytes + 260 > max_binding => Some(format!(
                "{}: {unit_bytes} bytes in one unit the op cannot cut (a sample, row or group) exceed the \
                 storage binding limit of {max_binding} bytes",
                self.name()
            )),
            _ => None,
        }
    }
}

/// The most values a bench tensor may have (2^31, 8 GiB of f32): each is
/// also made, and for `--verify` computed, on the host.
pub const MAX_TENSOR_VALUES: u64 = 1 << 31;

/// Names of the ops the crate has today.
pub fn available_ops() -> Vec<&'static str> {
    OPS.iter().filter(|i| i.op.is_some()).map(|i| i.name).collect()
}

/// Every available op, in registry order.
pub fn all_ops() -> Vec<Op> {
    OPS.iter().filter_map(|i| i.op).collect()
}

/// The ops of the default run, in registry order.
pub fn default_ops() -> Vec<Op> {
    OPS.iter().filter(|i| i.default).filter_map(|i| i.op).collect()
}

/// Parses `--ops` (comma-separated names, or `all`).
pub fn parse_ops(s: &str) -> Result<Vec<Op>> {
    let mut ops = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name == "all" {
            ops.extend(all_ops());
            continue;
        }
        match OPS.iter().find(|i| i.name == name) {
            Some(OpInfo { op: Some(op), .. }) => ops.push(*op),
            Some(OpInfo { op: None, .. }) => {
                return Err(Error::Parameter(format!(
                    "op {name:?} is not implemented in this crate yet; available ops: {}",
                    available_ops().join(", ")
                )))
            }
            None => {
                return Err(Error::Parameter(format!(
                    "unknown op {name:?}; available ops: {}",
                    available_ops().join(", ")
                )))
            }
        }
    }
    if ops.is_empty() {
        return Err(Error::Parameter(format!("no op given; available ops: {}", available_ops().join(", "))));
    }
    let mut unique: Vec<Op> = Vec::new();
    for op in ops {
        if !unique.contains(&op) {
            unique.push(op);
        }
    }
    Ok(unique)
}

/// Parses `--shapes`: shapes separated by `;`, dimensions by `,` (or `x`),
/// in logical order (N, C, spatial...).
///
/// ```
/// use wgpu_norm_cli::bench::parse_shapes;
/// assert_eq!(parse_shapes("32,64,56,56; 8192x512").unwrap(), [vec![32, 64, 56, 56], vec![8192, 512]]);
/// assert!(parse_shapes("7").is_err(), "rank 1");
/// assert!(parse_shapes("4,0,3").is_err(), "a zero dimension");
/// ```
pub fn parse_shapes(s: &str) -> Result<Vec<Vec<usize>>> {
    let mut shapes = Vec::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let dims: std::result::Result<Vec<usize>, _> =
            part.split([',', 'x']).map(|d| d.trim().parse::<usize>()).collect();
        let dims = dims.map_err(|e| Error::Parameter(format!("shape {part:?}: {e}")))?;
        if !(2..=5).contains(&dims.len()) || dims.contains(&0) {
            return Err(Error::Parameter(format!(
                "shape {part:?}: expected 2 to 5 non-zero dimensions (N, C, spatial...)"
            )));
        }
        shapes.push(dims);
    }
    if shapes.is_empty() {
        return Err(Error::Parameter("no shape given".into()));
    }
    Ok(shapes)
}

/// Parses `--layouts` (`nchw`, `nhwc`, comma-separated).
pub fn parse_layouts(s: &str) -> Result<Vec<Layout>> {
    let mut layouts = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let layout = match name.to_ascii_lowercase().as_str() {
            "nchw" => Layout::Nchw,
            "nhwc" => Layout::Nhwc,
            _ => return Err(Error::Parameter(format!("unknown layout {name:?}; layouts: nchw, nhwc"))),
        };
        if !layouts.contains(&layout) {
            layouts.push(layout);
        }
    }
    if layouts.is_empty() {
        return Err(Error::Parameter("no layout given; layouts: nchw, nhwc".into()));
    }
    Ok(layouts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_counts() {
        for (c, g) in [(64, 32), (2048, 32), (32, 32), (3, 3), (48, 24), (40, 20), (33, 11), (37, 1), (1, 1)] {
            assert_eq!(group_count(c), g, "{c} channels");
        }
    }

    #[test]
    fn every_op_is_available() {
        assert_eq!(all_ops().len(), OPS.len());
        for info in OPS {
            assert_eq!(parse_ops(info.name).unwrap(), vec![info.op.unwrap()]);
        }
        let limit = &wgpu::Limits { max_storage_buffer_binding_size: 1 << 20, ..wgpu::Limits::default() };
        let (nchw, nhwc) = (Layout::Nchw, Layout::Nhwc);
        assert!(Op::BnForwardTrain.unsupported(&[60000, 60000], nchw, limit).is_some(), "above the buffer limit");
        let roomy = &wgpu::Limits { max_buffer_size: u64::MAX, ..*limit };
        assert!(Op::BnForwardTrain.unsupported(&[60000, 60000], nchw, roomy).is_some(), "above the host's share");
        assert!(Op::BnForwardTrain.unsupported(&[usize::MAX, 3], nchw, roomy).is_some(), "overflowing");
        assert!(Op::GnForward.unsupported(&[8, 4], nchw, limit).is_some());
        assert!(Op::InBackward.unsupported(&[8, 4, 2], nchw, limit).is_none());
        assert!(Op::LnForward.unsupported(&[8, 4], nchw, limit).is_none());
        // Above the binding limit every op runs in chunks, the family's of
        // whole samples, or groups channels-second; one row above it does not.
        assert!(Op::LnForward.unsupported(&[1024, 1024], nchw, limit).is_none());
        assert!(Op::LnForward.unsupported(&[4, 1 << 19], nchw, limit).is_some());
        assert!(Op::GnForward.unsupported(&[2, 4, 256, 512], nchw, limit).is_none());
        assert!(Op::GnForward.unsupported(&[2, 4, 256, 512], nhwc, limit).is_some());
        assert!(Op::InForward.unsupported(&[2, 4, 1024, 1024], nchw, limit).is_some());
        assert!(Op::BnTrainStep.unsupported(&[2, 4, 512, 512], nhwc, limit).is_none());
    }
}
