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
