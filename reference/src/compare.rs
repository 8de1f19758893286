//! How a GPU result is compared with the f64 reference: one error measure
//! and one tolerance for the tests, `wgpu-norm check` and `bench --verify`.

/// Default tolerance: 1e-3 of the expected magnitude.
pub const DEFAULT_TOLERANCE: f64 = 1e-3;

/// `max|got - want| / max(1, max|want|)`; NaN where only one side is NaN
/// counts as infinite, NaN on both sides as equal.
///
/// ```
/// use wgpu_norm_reference::normalized_error;
/// // Errors scale with the largest expected magnitude, at least 1.
/// assert_eq!(normalized_error(&[1.0, 2.5], &[1.0, 2.0]), 0.25);
/// assert_eq!(normalized_error(&[0.5], &[0.25]), 0.25);
/// assert_eq!(normalized_error(&[f32::NAN], &[f64::NAN]), 0.0);
/// assert!(normalized_error(&[f32::NAN], &[1.0]).is_infinite());
/// assert!(normalized_error(&[1.0], &[1.0, 2.0]).is_infinite(), "lengths differ");
/// ```
pub fn normalized_error(got: &[f32], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let scale = want.iter().fold(1.0f64, |m, w| if w.is_finite() { m.max(w.abs()) } else { m });
    let worst = got.iter().zip(want).fold(0.0f64, |worst, (&g, &w)| {
        let g = f64::from(g);
        let e = if g.is_nan() || w.is_nan() {
            if g.is_nan() == w.is_nan() {
                0.0
            } else {
                f64::INFINITY
            }
        } else if g == w {
            0.0
        } else {
            (g - w).abs()
        };
        worst.max(e)
    });
    worst / scale
}
