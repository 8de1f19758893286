//! GroupNorm and InstanceNorm, forward and backward.

use super::*;

/// One `F.group_norm` call: per sample, the channels split into `num_groups`
/// consecutive groups, each normalized over its channels and all positions.
#[derive(Clone, Copy, Debug)]
pub struct GroupNormArgs<'a> {
    /// Logical shape `(N, C, spatial…)`, rank >= 2.
    pub shape: &'a [usize],
    /// Memory order of `x`, `dy` and the outputs.
    pub layout: Layout,
    /// Number of groups; must divide `C`.
    pub num_groups: usize,
    /// Per-channel gamma; `None` means ones.
    pub weight: Option<&'a [f32]>,
    /// Per-channel beta; `None` means zeros.
    pub bias: Option<&'a [f32]>,
    /// Added to the variance before the square root.
    pub eps: f64,
}

/// Geometry of a group norm: the channel view and the group sizes.
struct Groups {
    view: ChannelView,
    n: usize,
    groups: usize,
    /// Channels per group.
    cpg: usize,
}

impl Groups {
    fn new(shape: &[usize], layout: Layout, groups: usize) -> Groups {
        assert!(shape.len() >= 2, "group_norm needs rank >= 2, got shape {shape:?}");
        let view = ChannelView::of(shape, layout);
        assert!(!view.is_empty(), "group_norm needs a non-empty input, got shape {shape:?}");
        assert!(
            groups > 0 && view.channels.is_multiple_of(groups),
            "num_groups {groups} does not divide {} channels",
            view.channels
        );
        Groups { view, n: shape[0], groups, cpg: view.channels / groups }
    }

    /// Flat indices of group `g` of sample `n`.
    fn indices(&self, n: usize, g: usize) -> impl Iterator<Item = usize> + Clone {
        let view = self.view;
        let per_sample = view.outer / self.n;
        let chans = g * self.cpg..(g + 1) * self.cpg;
        (n * per_sample..(n + 1) * per_sample).flat_map(move |o| {
            chans.clone().flat_map(move |c| {
                let base = (o * view.channels + c) * view.inner;
                base..base + view.inner
            })
        })
    }
}

/// GroupNorm forward; `mean`/`rstd` are `N * num_groups`, `(n, g)` order.
pub fn group_norm_forward(args: &GroupNormArgs, x: &[f32]) -> NormForward {
    let gs = Groups::new(args.shape, args.layout, args.num_groups);
    check_len(x, gs.view.len(), "x");
    let c = gs.view.channels;
    let w = param_or(args.weight, c, 1.0, "weight");
    let b = param_or(args.bias, c, 0.0, "bias");
    let mut y = vec![0.0; x.len()];
    let (mut mean, mut rstd) = (Vec::new(), Vec::new());
    for n in 0..gs.n {
        for g in 0..gs.groups {
            let idx = gs.indices(n, g);
            let (mu, var) = mean_var(idx.clone().map(|i| f64::from(x[i])));
            let rs = 1.0 / (var + args.eps).sqrt();
            for i in idx {
                let ch = gs.view.channel_of(i);
                y[i] = (f64::from(x[i]) - mu) * rs * w[ch] + b[ch];
            }
            mean.push(mu);
            rstd.push(rs);
        }
    }
    NormForward { y, mean, rstd }
}

/// GroupNorm backward; `dweight`/`dbias` per channel.
pub fn group_norm_backward(args: &GroupNormArgs, x: &[f32], dy: &[f32]) -> NormBackward {
    let fwd = group_norm_forward(args, x);
    let gs = Groups::new(args.shape, args.layout, args.num_groups);
    check_len(dy, x.len(), "dy");
    let c = gs.view.channels;
    let w = param_or(args.weight, c, 1.0, "weight");
    let mut xhat = vec![0.0; x.len()];
    let mut gx = vec![0.0; x.len()];
    let mut dweight = vec![0.0; c];
    let mut dbias = vec![0.0; c];
    let mut dx = vec![0.0; x.len()];
    for n in 0..gs.n {
        for g in 0..gs.groups {
            let k = n * gs.groups + g;
            let idx = gs.indices(n, g);
            for i in idx.clone() {
                let ch = gs.view.channel_of(i);
                let d = f64::from(dy[i]);
                xhat[i] = (f64::from(x[i]) - fwd.mean[k]) * fwd.rstd[k];
                gx[i] = d * w[ch];
                dweight[ch] += d * xhat[i];
                dbias[ch] += d;
            }
            normalized_backward(idx, &xhat, &gx, fwd.rstd[k], &mut dx);
        }
    }
    NormBackward { dx, dweight, dbias }
}

/// One `F.instance_norm` call: GroupNorm with one group per channel, plus
/// optional running statistics as `nn.InstanceNorm*d(track_running_stats=True)`.
#[derive(Clone, Copy, Debug)]
pub struct InstanceNormArgs<'a> {
    /// Logical shape `(N, C, spatial…)`, rank >= 3 in practice (>= 2 accepted).
    pub shape: &'a [usize],
    /// Memory order of `x`, `dy` and the outputs.
    pub layout: Layout,
    /// Per-channel gamma; `None` means ones.
    pub weight: Option<&'a [f32]>,
    /// Per-channel beta; `None` means zeros.
    pub bias: Option<&'a [f32]>,
    /// Running mean before the call, `C` values; `None` when not tracked.
    pub running_mean: Option<&'a [f32]>,
    /// Running variance before the call; given iff `running_mean` is.
    pub running_var: Option<&'a [f32]>,
    /// Normalize with each instance's own statistics (`training or not
    /// track_running_stats` in `nn.InstanceNorm`); false uses the running
    /// statistics, which must then be given.
    pub use_input_stats: bool,
    /// Running-average factor (`nn.InstanceNorm` passes 0 for `momentum=None`).
    pub momentum: f64,
    /// Added to the variance before the square root.
    pub eps: f64,
}

/// InstanceNorm forward result.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceNormForward {
    /// Output, same shape and layout as `x`.
    pub y: Vec<f64>,
    /// Mean that normalized each `(n, c)`, `N * C` values (the running mean,
    /// repeated per sample, when `use_input_stats` is false).
    pub mean: Vec<f64>,
    /// `1 / sqrt(var + eps)` per `(n, c)`, ordered as `mean`.
    pub rstd: Vec<f64>,
    /// Running mean after the call (`None` when not tracked).
    pub running_mean: Option<Vec<f64>>,
    /// Running variance after the call (`None` when not tracked).
    pub running_var: Option<Vec<f64>>,
}

impl<'a> InstanceNormArgs<'a> {
    fn group_args(&self) -> GroupNormArgs<'a> {
        assert!(self.shape.len() >= 2, "instance_norm needs rank >= 2, got {:?}", self.shape);
        GroupNormArgs {
            shape: self.shape,
            layout: self.layout,
            num_groups: self.shape[1],
            weight: self.weight,
            bias: self.bias,
            eps: self.eps,
        }
    }

    /// Eval mode with running statistics is exactly BatchNorm in eval mode.
    fn batch_norm_eval_args(&self) -> BatchNormArgs<'a> {
        assert!(
            self.running_mean.is_some() && self.running_var.is_some(),
            "instance_norm without input stats needs running_mean and running_var"
        );
        BatchNormArgs {
            weight: self.weight,
            bias: self.bias,
            running_mean: self.running_mean,
            running_var: self.running_var,
            training: false,
            eps: self.eps,
            ..BatchNormArgs::new(self.shape, self.layout)
        }
    }
}

/// InstanceNorm forward. With input statistics and running stats given, the
/// running stats move as PyTorch's: `rm = (1 - m) rm + m mean_n(mean_nc)`,
/// `rv = (1 - m) rv + m mean_n(unbiased var_nc)`.
pub fn instance_norm_forward(args: &InstanceNormArgs, x: &[f32]) -> InstanceNormForward {
    assert_eq!(
        args.running_mean.is_some(),
        args.running_var.is_some(),
        "running_mean and running_var must be given together"
    );
    if !args.use_input_stats {
        let bn = batch_norm_forward(&args.batch_norm_eval_args(), x, None);
        let n = args.shape[0];
        return InstanceNormForward {
            y: bn.y,
            mean: bn.save_mean.repeat(n),
            rstd: bn.save_invstd.repeat(n),
            running_mean: bn.running_mean,
            running_var: bn.running_var,
        };
    }
    let gargs = args.group_args();
    let gs = Groups::new(gargs.shape, gargs.layout, gargs.num_groups);
    let fwd = group_norm_forward(&gargs, x);
    let (n, c) = (gs.n, gs.view.channels);
    let (running_mean, running_var) = match (args.running_mean, args.running_var) {
        (Some(rm), Some(rv)) => {
            check_len(rm, c, "running_mean");
            check_len(rv, c, "running_var");
            let k = gs.view.per_channel() / n;
            assert!(k > 1, "expected more than 1 spatial element when training, got {:?}", args.shape);
            let f = args.momentum;
            let mut new_rm = to_f64(rm);
            let mut new_rv = to_f64(rv);
            for ch in 0..c {
                let (mut sum_mean, mut sum_var) = (0.0, 0.0);
                for s in 0..n {
                    // The variance again from the data: rstd has eps folded in.
                    let (mu, var) = mean_var(gs.indices(s, ch).map(|i| f64::from(x[i])));
                    sum_mean += mu;
                    sum_var += var * k as f64 / (k as f64 - 1.0);
                }
                new_rm[ch] = (1.0 - f) * new_rm[ch] + f * sum_mean / n as f64;
                new_rv[ch] = (1.0 - f) * new_rv[ch] + f * sum_var / n as f64;
            }
            (Some(new_rm), Some(new_rv))
        }
        _ => (None, None),
    };
    InstanceNormForward { y: fwd.y, mean: fwd.mean, rstd: fwd.rstd, running_mean, running_var }
}

/// InstanceNorm backward: GroupNorm's with one group per channel, or, when
/// the running statistics normalized, BatchNorm's eval-mode backward.
pub fn instance_norm_backward(args: &InstanceNormArgs, x: &[f32], dy: &[f32]) -> NormBackward {
    if args.use_input_stats {
        group_norm_backward(&args.group_args(), x, dy)
    } else {
        let bn = batch_norm_backward(&args.batch_norm_eval_args(), x, None, dy);
        NormBackward { dx: bn.dx, dweight: bn.dweight, dbias: bn.dbias }
    }
}
