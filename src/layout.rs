//! Memory order of a tensor and how it maps onto the `[outer, channels, inner]`
//! view that every per-channel reduction in this crate works on.

/// Where the channel axis sits in memory. Shapes are always given in logical
/// order (N, C, spatial...), as PyTorch prints them, whatever the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Layout {
    /// Channels second (`NCHW`, `NCDHW`, `NC`, `NCL`): PyTorch's default.
    #[default]
    Nchw,
    /// Channels last (`NHWC`, `NDHWC`, `NLC`).
    Nhwc,
}

impl Layout {
    /// Parses `NCHW` / `NHWC` (any case; `nchw`, `channels_first`, `channels_last` too).
    pub fn parse(s: &str) -> Option<Layout> {
        match s.to_ascii_lowercase().as_str() {
            "nchw" | "ncl" | "ncdhw" | "nc" | "channels_first" => Some(Layout::Nchw),
            "nhwc" | "nlc" | "ndhwc" | "channels_last" => Some(Layout::Nhwc),
            _ => None,
        }
    }

    /// The lower-case name used by the CLI and JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Nchw => "nchw",
            Layout::Nhwc => "nhwc",
        }
    }
}

/// A tensor seen as `[outer][channels][inner]` in memory: element
/// `(o, c, i)` lives at `(o * channels + c) * inner + i`.
///
/// Channels second gives `outer = N`, `inner = spatial size`; channels last
/// gives `outer = N * spatial size`, `inner = 1`. Rank-2 tensors have
/// `inner = 1` in both layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelView {
    /// How many times the channel axis repeats, outside it.
    pub outer: usize,
    /// The channel count.
    pub channels: usize,
    /// Consecutive values of one channel in memory.
    pub inner: usize,
}

impl ChannelView {
    /// Splits a logical shape `(N, C, spatial...)` (rank >= 2) for `layout`.
    pub fn of(shape: &[usize], layout: Layout) -> ChannelView {
        assert!(shape.len() >= 2, "ChannelView needs rank >= 2");
        let n = shape[0];
        let channels = shape[1];
        // Saturating: a shape this large is refused by the checks that
        // follow, never wrapped into a small one.
        let spatial = shape[2..].iter().fold(1usize, |n, &d| n.saturating_mul(d));
        match layout {
            Layout::Nchw => ChannelView { outer: n, channels, inner: spatial },
            Layout::Nhwc => ChannelView { outer: n.saturating_mul(spatial), channels, inner: 1 },
        }
    }

    /// Number of values that share one channel.
    pub fn per_channel(&self) -> usize {
        self.outer * self.inner
    }

    /// Total number of elements.
    pub fn len(&self) -> usize {
        self.outer.saturating_mul(self.channels).saturating_mul(self.inner)
    }

    /// True when the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Channel of the element at flat memory index `idx`.
    pub fn channel_of(&self, idx: usize) -> usize {
        (idx / self.inner) % self.channels
    }
}
