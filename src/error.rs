//! The one error type of the crate. Every fallible call returns [`Error`].

/// Everything that can go wrong in wgpu-norm. Nothing in the crate panics on
/// input a caller can send; it returns one of these instead, and an op that
/// returns an error has recorded and written nothing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter matched the request (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`),
    /// or none exists at all. On Linux, installing Mesa's `mesa-vulkan-drivers`
    /// gives a CPU adapter (lavapipe).
    #[error("no GPU adapter found: {0}")]
    NoAdapter(String),

    /// The adapter refused to create a device with the features and limits asked for.
    #[error("could not open a device: {0}")]
    RequestDevice(String),

    /// A shape is not acceptable for the op: wrong rank, zero-sized dimension,
    /// or a channel count that disagrees with the op's parameters.
    #[error("bad shape: {0}")]
    Shape(String),

    /// A buffer cannot serve as the view asked for: too small for its shape at
    /// its offset, misaligned, lacking a usage flag, or aliasing another argument.
    #[error("bad buffer: {0}")]
    Buffer(String),

    /// A configuration value is out of range (`eps`, `momentum`, ...).
    #[error("bad parameter: {0}")]
    Parameter(String),

    /// Training-mode statistics need at least two values per channel
    /// (PyTorch: "Expected more than 1 value per channel when training").
    #[error("expected more than 1 value per channel when training, got input shape {0:?}")]
    OneValuePerChannel(Vec<usize>),

    /// A training batch's statistics were not finite and `check_finite`
    /// rejected it; running statistics were left untouched.
    #[error("non-finite batch statistics: {0}")]
    NonFinite(String),

    /// The op needs something the device lacks (a feature, a larger limit).
    #[error("unsupported on this device: {0}")]
    Unsupported(String),

    /// wgpu reported a validation error while the crate was creating or
    /// encoding something. It is a bug in the crate or in the caller's
    /// resources; the message is wgpu's.
    #[error("wgpu validation error: {0}")]
    Validation(String),

    /// The device ran out of memory.
    #[error("out of GPU memory: {0}")]
    OutOfMemory(String),

    /// The device was lost or destroyed; every later call fails with this.
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),

    /// A reference-case file (safetensors, see `golden`) is unreadable,
    /// malformed, or lacks a tensor its op needs.
    #[error("{file}: {message}")]
    Case {
        /// The file.
        file: String,
        /// What is wrong with it.
        message: String,
    },

    /// A saved layer state (PyTorch `state_dict` names in safetensors) lacks
    /// a tensor, or has one of the wrong shape or dtype; the message names it.
    #[error("state: {0}")]
    State(String),

    /// A SyncBatchNorm exchange failed: a rank left the group, or ranks sent
    /// values of different lengths.
    #[error("exchange between ranks failed: {0}")]
    Exchange(String),

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
