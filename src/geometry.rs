//! Which values a statistic of the normalization family spans: the two
//! views of one tensor (the stat rows and the weights) that describe
//! LayerNorm, RMSNorm, GroupNorm and InstanceNorm. Pure host arithmetic.

use crate::layout::{ChannelView, Layout};

/// Which values a statistic spans, as two views of the same tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// A view whose channels are the stat rows (of one sample when `batch > 1`).
    pub stat: ChannelView,
    /// Views reduced at once, `batch_stride` elements apart.
    pub batch: usize,
    pub batch_stride: usize,
    /// A view whose channels index the weight (gamma, beta).
    pub weights: ChannelView,
    /// Element (o, c, i) of `weights` belongs to stat row
    /// `(o / row_div) * groups + c / cpg`; channel c at inner index i of
    /// `stat` multiplies weight `(c % groups) * cpg + i / wdiv`.
    pub groups: usize,
    pub cpg: usize,
    pub row_div: usize,
    pub wdiv: usize,
    /// Independent units along the tensor's first axis (rows, or samples):
    /// a tensor too large for one binding is cut into runs of them.
    pub samples: usize,
    /// The stat view grows with the samples through `batch` (else through
    /// its channels).
    pub batched: bool,
}

impl Geometry {
    /// `rows` rows of `cols` contiguous values, weights per column (LayerNorm, RMSNorm).
    pub fn trailing(rows: usize, cols: usize) -> Geometry {
        Geometry {
            stat: ChannelView { outer: 1, channels: rows, inner: cols },
            batch: 1,
            batch_stride: 0,
            weights: ChannelView { outer: rows, channels: cols, inner: 1 },
            groups: 1,
            cpg: cols,
            row_div: 1,
            wdiv: 1,
            samples: rows,
            batched: false,
        }
    }

    /// `groups` groups of consecutive channels per sample of a (N, C,
    /// spatial...) tensor, weights per channel (GroupNorm, InstanceNorm).
    pub fn grouped(shape: &[usize], layout: Layout, groups: usize) -> Geometry {
        let (n, c) = (shape[0], shape[1]);
        let hw: usize = shape[2..].iter().product();
        let cpg = c / groups;
        let weights = ChannelView::of(shape, layout);
        match layout {
            // Each (n, g) is one contiguous run of cpg * hw values.
            Layout::Nchw => Geometry {
                stat: ChannelView { outer: 1, channels: n * groups, inner: cpg * hw },
                batch: 1,
                batch_stride: 0,
                weights,
                groups,
                cpg,
                row_div: 1,
                wdiv: hw,
                samples: n,
                batched: false,
            },
            // Sample n is [hw][groups][cpg]: the groups are its channels.
            Layout::Nhwc => Geometry {
                stat: ChannelView { outer: hw, channels: groups, inner: cpg },
                batch: n,
                batch_stride: hw * c,
                weights,
                groups,
                cpg,
                row_div: hw,
                wdiv: 1,
                samples: n,
                batched: true,
            },
        }
    }

    /// Number of stat rows.
    pub fn rows(&self) -> usize {
        self.batch * self.stat.channels
    }

    /// Values per stat row.
    pub fn row_len(&self) -> usize {
        self.stat.per_channel()
    }

    /// Stat rows per sample.
    pub fn sample_rows(&self) -> usize {
        self.rows() / self.samples
    }

    /// The geometry of groups `g0..g1` of one sample, for a sample too large
    /// for one binding. Channels-second only: there a group's values are one
    /// contiguous run (channels-last interleaves them).
    pub fn group_run(&self, g0: usize, g1: usize) -> Option<Geometry> {
        if self.batched || self.groups == 0 || self.sample_rows() != self.groups {
            return None;
        }
        let groups = g1 - g0;
        let mut g = *self;
        g.stat = ChannelView { outer: 1, channels: groups, inner: self.row_len() };
        g.weights = ChannelView { outer: 1, channels: groups * self.cpg, inner: self.weights.inner };
        g.groups = groups;
        g.samples = 1;
        Some(g)
    }

    /// The geometry of the first `n` samples (any run of `n`: they are alike).
    pub fn for_samples(&self, n: usize) -> Geometry {
        let mut g = *self;
        g.weights.outer = self.weights.outer / self.samples * n;
        if self.batched {
            g.batch = n;
        } else {
            g.stat.channels = self.stat.channels / self.samples * n;
        }
        g.samples = n;
        g
    }

    /// Whether weights index whole channels of a grouped tensor (GroupNorm,
    /// InstanceNorm), not positions of a trailing block (LayerNorm, RMSNorm).
    pub fn is_grouped(&self) -> bool {
        !(self.groups == 1 && self.wdiv == 1 && self.row_div == 1)
    }

    /// The same tensor with one stat row per (n, c) instance, in the order of
    /// the rows: instance i lies in row i / cpg (InstanceNorm's geometry).
    pub fn instances(&self) -> Geometry {
        let mut g = *self;
        g.stat = ChannelView {
            outer: self.stat.outer,
            channels: self.stat.channels * self.cpg,
            inner: self.stat.inner / self.cpg,
        };
        g.groups = self.groups * self.cpg;
        g.cpg = 1;
        g
    }
}
