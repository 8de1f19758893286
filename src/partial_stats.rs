//! The values SyncBatchNorm exchanges between ranks: a slice's per-channel
//! statistics (count, mean, M2) for the forward, and its per-channel gradient
//! sums for the backward. Host values in f64, so merging many ranks loses
//! nothing the f32 GPU values had.

use crate::{Error, Result};

/// Per-channel statistics of one slice of a batch: the number of values, their
/// mean, and M2, the sum of squared deviations from that mean (biased
/// variance = M2 / count). Any split of a batch merges back exactly with
/// [`PartialStats::merge`] (Chan et al.'s parallel formula); a slice with no
/// values has count 0 and merges as nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct PartialStats {
    /// Values seen, per channel.
    pub count: Vec<f64>,
    /// Their mean, per channel.
    pub mean: Vec<f64>,
    /// Their sum of squared deviations from the mean, per channel.
    pub m2: Vec<f64>,
}

impl PartialStats {
    /// The statistics of no values: what a rank with an empty slice contributes.
    pub fn empty(channels: usize) -> PartialStats {
        PartialStats { count: vec![0.0; channels], mean: vec![0.0; channels], m2: vec![0.0; channels] }
    }

    /// The number of channels.
    pub fn channels(&self) -> usize {
        self.count.len()
    }

    /// The statistics of both slices together. `Err(Shape)` when the channel
    /// counts differ.
    pub fn merge(&self, other: &PartialStats) -> Result<PartialStats> {
        self.check_lengths()?;
        other.check_lengths()?;
        if other.channels() != self.channels() {
            return Err(Error::Shape(format!(
                "merging statistics of {} channels with {}",
                self.channels(),
                other.channels()
            )));
        }
        let mut out = PartialStats::empty(self.channels());
        for c in 0..self.channels() {
            let (na, nb) = (self.count[c], other.count[c]);
            let n = na + nb;
            (out.count[c], out.mean[c], out.m2[c]) = if nb == 0.0 {
                (na, self.mean[c], self.m2[c])
            } else if na == 0.0 {
                (nb, other.mean[c], other.m2[c])
            } else {
                let d = other.mean[c] - self.mean[c];
                (n, self.mean[c] + d * (nb / n), self.m2[c] + other.m2[c] + d * d * (na * nb / n))
            };
        }
        Ok(out)
    }

    /// Merges slices in order (every rank merging the same list in the same
    /// order gets bit-identical results).
    pub fn merge_all<'a>(channels: usize, parts: impl IntoIterator<Item = &'a PartialStats>) -> Result<PartialStats> {
        parts.into_iter().try_fold(PartialStats::empty(channels), |acc, p| acc.merge(p))
    }

    /// Biased variance (M2 / count) per channel: what BatchNorm normalizes with.
    pub fn var_biased(&self) -> Vec<f64> {
        self.m2.iter().zip(&self.count).map(|(m2, n)| m2 / n).collect()
    }

    /// Unbiased variance (M2 / (count - 1)): what the running variance tracks.
    pub fn var_unbiased(&self) -> Vec<f64> {
        self.m2.iter().zip(&self.count).map(|(m2, n)| m2 / (n - 1.0)).collect()
    }

    /// `count`, `mean` and `m2` one after the other: `3 * channels` values,
    /// the form the exchange sends.
    pub fn to_flat(&self) -> Vec<f64> {
        [&self.count[..], &self.mean, &self.m2].concat()
    }

    /// The inverse of [`Self::to_flat`]; `Err(Shape)` unless `flat` holds
    /// `3 * channels` values.
    pub fn from_flat(channels: usize, flat: &[f64]) -> Result<PartialStats> {
        if flat.len() != 3 * channels {
            return Err(Error::Shape(format!(
                "{} exchanged values for statistics of {channels} channels (expected {})",
                flat.len(),
                3 * channels
            )));
        }
        let (count, rest) = flat.split_at(channels);
        let (mean, m2) = rest.split_at(channels);
        Ok(PartialStats { count: count.to_vec(), mean: mean.to_vec(), m2: m2.to_vec() })
    }

    /// The GPU form: (count, mean, M2, 0) per channel, as the reduction's partials.
    pub(crate) fn to_gpu(&self) -> Vec<[f32; 4]> {
        (0..self.channels()).map(|c| [self.count[c] as f32, self.mean[c] as f32, self.m2[c] as f32, 0.0]).collect()
    }

    /// From the GPU form, with the exact `count` (an f32 count rounds above 2^24).
    pub(crate) fn from_gpu(values: &[[f32; 4]], count: f64) -> PartialStats {
        PartialStats {
            count: vec![count; values.len()],
            mean: values.iter().map(|v| f64::from(v[1])).collect(),
            m2: values.iter().map(|v| f64::from(v[2])).collect(),
        }
    }

    /// `Err(Shape)` unless count, mean and M2 have one value per channel each.
    pub(crate) fn check_lengths(&self) -> Result<()> {
        if self.mean.len() != self.channels() || self.m2.len() != self.channels() {
            return Err(Error::Shape(format!(
                "statistics with {} counts, {} means and {} M2 values",
                self.channels(),
                self.mean.len(),
                self.m2.len()
            )));
        }
        if let Some(bad) = self.count.iter().find(|c| !c.is_finite() || **c < 0.0) {
            return Err(Error::Parameter(format!("a statistics count of {bad}: counts are finite and not negative")));
        }
        Ok(())
    }
}

/// Per-channel sums of a backward over one slice, with `mean` the saved
/// (global) batch mean: `sum(dy)`, `sum(dy * (x - mean))` and `sum(x - mean)`
/// (near zero; it corrects for the f32 rounding of the mean). They add across
/// slices, and so does `count`, the number of values per channel.
///
/// With `m` the global count and `invstd` the saved inverse std,
/// `sum(dy * xhat) = (sum_dy_xmu - sum_xmu / m * sum_dy) * invstd`; that and
/// `sum(dy)` are dweight and dbias.
#[derive(Clone, Debug, PartialEq)]
pub struct GradSums {
    /// Values per channel the sums span (the same for every channel).
    pub count: f64,
    /// `sum(dy)` per channel.
    pub sum_dy: Vec<f64>,
    /// `sum(dy * (x - mean))` per channel.
    pub sum_dy_xmu: Vec<f64>,
    /// `sum(x - mean)` per channel (the f32 rounding of the mean).
    pub sum_xmu: Vec<f64>,
}

impl GradSums {
    /// The sums over no values.
    pub fn empty(channels: usize) -> GradSums {
        GradSums {
            count: 0.0,
            sum_dy: vec![0.0; channels],
            sum_dy_xmu: vec![0.0; channels],
            sum_xmu: vec![0.0; channels],
        }
    }

    /// The number of channels.
    pub fn channels(&self) -> usize {
        self.sum_dy.len()
    }

    /// `count`, then `sum_dy`, `sum_dy_xmu` and `sum_xmu`: `1 + 3 * channels`
    /// values that an all-reduce sums elementwise.
    pub fn to_flat(&self) -> Vec<f64> {
        [&[self.count][..], &self.sum_dy, &self.sum_dy_xmu, &self.sum_xmu].concat()
    }

    /// The inverse of [`Self::to_flat`].
    pub fn from_flat(channels: usize, flat: &[f64]) -> Result<GradSums> {
        if flat.len() != 1 + 3 * channels {
            return Err(Error::Shape(format!(
                "{} exchanged values for gradient sums of {channels} channels (expected {})",
                flat.len(),
                1 + 3 * channels
            )));
        }
        let v = &flat[1..];
        Ok(GradSums {
            count: flat[0],
            sum_dy: v[..channels].to_vec(),
            sum_dy_xmu: v[channels..2 * channels].to_vec(),
            sum_xmu: v[2 * channels..].to_vec(),
        })
    }

    /// The GPU form: (sum dy, sum dy * (x - mean), sum (x - mean), 0) per channel.
    pub(crate) fn to_gpu(&self) -> Result<Vec<[f32; 4]>> {
        let c = self.channels();
        if self.sum_dy_xmu.len() != c || self.sum_xmu.len() != c {
            return Err(Error::Shape(format!(
                "gradient sums with {c}, {} and {} values per field",
                self.sum_dy_xmu.len(),
                self.sum_xmu.len()
            )));
        }
        Ok((0..c).map(|i| [self.sum_dy[i] as f32, self.sum_dy_xmu[i] as f32, self.sum_xmu[i] as f32, 0.0]).collect())
    }

    pub(crate) fn from_gpu(values: &[[f32; 4]], count: f64) -> GradSums {
        let field = |k: usize| values.iter().map(|v| f64::from(v[k])).collect();
        GradSums { count, sum_dy: field(0), sum_dy_xmu: field(1), sum_xmu: field(2) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_of(channels: &[&[f64]]) -> PartialStats {
        let mut s = PartialStats::empty(channels.len());
        for (c, v) in channels.iter().enumerate() {
            let n = v.len() as f64;
            let mean = if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / n };
            s.count[c] = n;
            s.mean[c] = mean;
            s.m2[c] = v.iter().map(|x| (x - mean) * (x - mean)).sum();
        }
        s
    }

    #[test]
    fn merging_slices_gives_the_whole_batch_statistics() {
        let all = [1.0, 4.0, -2.0, 8.5, 3.25, 0.0, 7.0];
        let whole = stats_of(&[&all]);
        for cut in 0..=all.len() {
            let merged = stats_of(&[&all[..cut]]).merge(&stats_of(&[&all[cut..]])).unwrap();
            assert_eq!(merged.count, whole.count, "cut at {cut}");
            assert!((merged.mean[0] - whole.mean[0]).abs() < 1e-12, "cut at {cut}");
            assert!((merged.m2[0] - whole.m2[0]).abs() < 1e-10, "cut at {cut}");
        }
        // Three slices, the middle one empty.
        let three = [stats_of(&[&all[..2]]), PartialStats::empty(1), stats_of(&[&all[2..]])];
        let merged = PartialStats::merge_all(1, &three).unwrap();
        assert!((merged.var_biased()[0] - whole.var_biased()[0]).abs() < 1e-12);
    }

    #[test]
    fn flat_forms_round_trip_and_reject_wrong_lengths() {
        let s = stats_of(&[&[1.0, 2.0], &[3.0, 5.0, 8.0]]);
        assert_eq!(PartialStats::from_flat(2, &s.to_flat()).unwrap(), s);
        assert!(matches!(PartialStats::from_flat(3, &s.to_flat()), Err(Error::Shape(_))));
        assert!(matches!(s.merge(&PartialStats::empty(3)), Err(Error::Shape(_))));
        let g = GradSums { count: 6.0, sum_dy: vec![1.0, 2.0], sum_dy_xmu: vec![3.0, 4.0], sum_xmu: vec![0.5, 0.25] };
        assert_eq!(GradSums::from_flat(2, &g.to_flat()).unwrap(), g);
        assert!(matches!(GradSums::from_flat(2, &g.to_flat()[1..]), Err(Error::Shape(_))));
    }
}
