//! The one splitter behind every op: a tensor larger than a storage binding
//! is cut into pieces that each fit one, along the same three levels for
//! BatchNorm and the family. Pure host arithmetic, and the windows that bind
//! each piece of the op's tensors.

use crate::tensor::{check_range, window, TensorView, Window};
use crate::{Error, Result};
use std::ops::Range;

/// How an op's tensor may be cut: `units` independent units (BatchNorm's
/// outer rows, the family's samples) of `subs` sub-units (channels; groups
/// of a channels-second sample) of `sub_len` contiguous values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Units {
    pub units: usize,
    pub subs: usize,
    pub sub_len: usize,
    /// A unit may be cut between its sub-units.
    pub split_subs: bool,
    /// A sub-unit may be cut into runs of values (BatchNorm's planes: its
    /// partials merge whatever the cut; a family row may not be).
    pub split_values: bool,
}

/// One piece: which units, sub-units of each and values of each it holds,
/// where it starts, and its slot among the pieces that cover one sub-unit
/// (where its partials go in the sub-unit's run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub start: usize,
    pub units: Range<usize>,
    pub subs: Range<usize>,
    pub values: Range<usize>,
    pub slot: usize,
}

impl Piece {
    /// Values in the piece.
    pub fn len(&self) -> usize {
        self.units.len() * self.subs.len() * self.values.len()
    }
}

impl Units {
    fn unit_len(&self) -> usize {
        self.subs * self.sub_len
    }

    /// The pieces of at most `max_values` values each: the whole tensor;
    /// else runs of whole units, of equal size; else runs of sub-units of
    /// one unit (a multiple of four where four fit, so channels-last pieces
    /// stay vec4-aligned); else runs of one sub-unit's values (a multiple of
    /// four). `Err(Unsupported)` where the level needed may not be cut.
    pub fn cut(&self, max_values: usize) -> Result<Vec<Piece>> {
        let (n, unit) = (self.units, self.unit_len());
        let whole = |units: Range<usize>, slot| Piece {
            start: units.start * unit,
            units,
            subs: 0..self.subs,
            values: 0..self.sub_len,
            slot,
        };
        if n * unit <= max_values {
            return Ok(vec![whole(0..n, 0)]);
        }
        if unit <= max_values {
            let per = equal_runs(n, max_values / unit, false);
            return Ok((0..n).step_by(per).enumerate().map(|(k, u0)| whole(u0..(u0 + per).min(n), k)).collect());
        }
        let too_large = || {
            Error::Unsupported(format!(
                "one unit of {unit} values exceeds the device's storage binding limit of {max_values} values, \
                 and it cannot be cut (a row, a channels-last sample, or one group above the limit)"
            ))
        };
        let mut pieces = Vec::new();
        if self.sub_len <= max_values && self.split_subs {
            let per = equal_runs(self.subs, max_values / self.sub_len, true);
            for o in 0..n {
                for s0 in (0..self.subs).step_by(per) {
                    let subs = s0..(s0 + per).min(self.subs);
                    let start = o * unit + s0 * self.sub_len;
                    pieces.push(Piece { start, units: o..o + 1, subs, values: 0..self.sub_len, slot: o });
                }
            }
            return Ok(pieces);
        }
        if !self.split_values || max_values == 0 {
            return Err(too_large());
        }
        let per = if max_values >= 4 { max_values / 4 * 4 } else { max_values };
        let per_sub = self.sub_len.div_ceil(per);
        for o in 0..n {
            for s in 0..self.subs {
                for (j, v0) in (0..self.sub_len).step_by(per).enumerate() {
                    let values = v0..(v0 + per).min(self.sub_len);
                    let start = o * unit + s * self.sub_len + v0;
                    pieces.push(Piece { start, units: o..o + 1, subs: s..s + 1, values, slot: o * per_sub + j });
                }
            }
        }
        Ok(pieces)
    }
}

/// The run length that cuts `n` items into the fewest runs of at most
/// `most`, all of about equal size; with `by_four` a multiple of four where
/// `most` is at least four.
fn equal_runs(n: usize, most: usize, by_four: bool) -> usize {
    let most = if by_four && most >= 4 { most / 4 * 4 } else { most.max(1) };
    let per = n.div_ceil(n.div_ceil(most).max(1)).max(1);
    if by_four && most >= 4 {
        per.next_multiple_of(4).min(most)
    } else {
        per
    }
}

/// Values of `esize` bytes that one binding holds on a device with
/// `limits`, leaving room to align a window's start and round its end.
pub(crate) fn max_values(limits: &wgpu::Limits, esize: u64) -> usize {
    let align = u64::from(limits.min_storage_buffer_offset_alignment.max(16));
    let max_bytes = limits.max_storage_buffer_binding_size.min(u64::from(u32::MAX)).saturating_sub(align + 4);
    (max_bytes / esize) as usize
}

/// Checks every tensor's range in its buffer, then returns each piece's
/// windows of them (in the order given), all checked before anything is
/// recorded.
pub(crate) fn windows<'a>(
    pieces: &[Piece],
    tensors: &[(&TensorView<'a>, &str)],
    limits: &wgpu::Limits,
) -> Result<Vec<Vec<Window<'a>>>> {
    for (t, name) in tensors {
        check_range(t.buffer, t.offset, t.len(), t.dtype.size(), name)?;
    }
    pieces
        .iter()
        .map(|piece| {
            tensors
                .iter()
                .map(|(t, name)| {
                    let esize = t.dtype.size();
                    window(t.buffer, t.offset + piece.start as u64 * esize, piece.len(), esize, name, limits)
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(units: usize, subs: usize, sub_len: usize) -> Units {
        Units { units, subs, sub_len, split_subs: true, split_values: true }
    }

    /// Every value lies in exactly one piece, each piece fits, and pieces
    /// that share a sub-unit have distinct slots.
    fn covers(u: Units, max: usize) {
        let pieces = u.cut(max).unwrap();
        let mut seen = vec![0u8; u.units * u.subs * u.sub_len];
        for p in &pieces {
            assert!(p.len() <= max, "{u:?} {max}: {p:?}");
            for o in p.units.clone() {
                for s in p.subs.clone() {
                    for v in p.values.clone() {
                        seen[(o * u.subs + s) * u.sub_len + v] += 1;
                    }
                }
            }
            assert_eq!(p.start, (p.units.start * u.subs + p.subs.start) * u.sub_len + p.values.start);
        }
        assert!(seen.iter().all(|&c| c == 1), "{u:?} {max}");
        for s in 0..u.subs {
            let mut slots: Vec<usize> = pieces.iter().filter(|p| p.subs.contains(&s)).map(|p| p.slot).collect();
            let n = slots.len();
            slots.sort();
            slots.dedup();
            assert_eq!(slots.len(), n, "{u:?} {max}: slots of sub-unit {s} repeat");
        }
    }

    #[test]
    fn every_level_covers_the_tensor_once() {
        covers(units(7, 5, 3), 1000); // whole
        covers(units(7, 5, 3), 40); // runs of units
        covers(units(2, 9, 3), 14); // runs of sub-units
        covers(units(2, 3, 37), 8); // runs of values
        covers(units(3, 16, 5), 23); // runs of sub-units, by four
    }

    #[test]
    fn runs_are_of_equal_size_and_channel_runs_multiples_of_four() {
        let pieces = units(10, 1, 1).cut(4).unwrap();
        assert_eq!(pieces.iter().map(|p| p.units.len()).collect::<Vec<_>>(), [4, 4, 2]);
        let pieces = units(9, 2, 1).cut(8).unwrap();
        assert_eq!(pieces.iter().map(|p| p.units.len()).collect::<Vec<_>>(), [3, 3, 3]);
        let pieces = units(1, 18, 1).cut(9).unwrap();
        assert!(pieces.iter().all(|p| p.subs.start % 4 == 0), "{pieces:?}");
    }

    #[test]
    fn what_may_not_be_cut_is_refused() {
        let rows = Units { units: 2, subs: 1, sub_len: 100, split_subs: false, split_values: false };
        assert!(matches!(rows.cut(50), Err(Error::Unsupported(_))));
        let groups = Units { units: 2, subs: 4, sub_len: 10, split_subs: false, split_values: false };
        assert!(matches!(groups.cut(30), Err(Error::Unsupported(_))));
        assert_eq!(Units { split_subs: true, ..groups }.cut(30).unwrap().len(), 4);
    }
}
