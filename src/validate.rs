//! Parameter checks every op's configuration shares, so each rule and its
//! message is written once.

use crate::{Error, Result};

/// `Err(Parameter)` unless `eps` is finite and positive.
pub(crate) fn check_eps(eps: f32) -> Result<()> {
    if !(eps.is_finite() && eps > 0.0) {
        return Err(Error::Parameter(format!("eps = {eps} must be finite and positive")));
    }
    Ok(())
}

/// `Err(Parameter)` unless `momentum` is `None` (cumulative) or within [0, 1].
pub(crate) fn check_momentum(momentum: Option<f32>) -> Result<()> {
    match momentum {
        Some(m) if !(0.0..=1.0).contains(&m) => Err(Error::Parameter(format!("momentum = {m} must be within [0, 1]"))),
        _ => Ok(()),
    }
}

/// `Err(Parameter)` unless `num_features` is a channel count the kernels'
/// 32-bit indices can hold.
pub(crate) fn check_channels(num_features: usize) -> Result<()> {
    if num_features == 0 || num_features > u32::MAX as usize {
        return Err(Error::Parameter(format!("num_features = {num_features} is not a usable channel count")));
    }
    Ok(())
}

/// `Err(Unsupported)` unless a buffer of `bytes_per_feature` bytes for each
/// of `features` fits one storage binding of a device with `limits` (a
/// layer's per-feature buffers are bound whole): checked before a layer
/// allocates anything, on the host or the device.
pub(crate) fn check_features_fit(limits: &wgpu::Limits, features: usize, bytes_per_feature: u64) -> Result<()> {
    let limit = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
    match (features as u64).checked_mul(bytes_per_feature) {
        Some(bytes) if bytes <= limit => Ok(()),
        needed => Err(Error::Unsupported(format!(
            "{features} features need {} bytes per statistics buffer; the device binds at most {limit}",
            needed.map_or("more than 2^64".to_string(), |b| b.to_string())
        ))),
    }
}
