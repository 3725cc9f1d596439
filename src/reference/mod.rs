//! The CPU reference: RMSNorm, pRMSNorm and LayerNorm in f64, forward and backward, the
//! yardstick for the GPU kernels.
//!
//! Sums are taken in f64 (53-bit mantissa): against the kernels' f32 results they are exact
//! for every purpose here. Magnitudes beyond f64's range are not expected: f32 inputs square
//! to at most ~1.2e77.

mod backward;

pub use backward::{
    compare_normwise, layer_norm_backward, rms_norm_backward, Gradients, BACKWARD_TOL,
};

use crate::config::{EpsMode, Gain, LayerNormConfig, RmsNormConfig};
use crate::dtype::DType;
use crate::error::Result;

/// The scale `1 / rms_k` (with eps) applied to the row `row`, by the config's conventions.
/// A zero RMS with eps = 0 gives 0, as the kernels do. `k` beyond the row is taken as the
/// whole row; an empty row (or k = 0) has no RMS and gives 0.
pub fn row_scale(row: &[f32], k: usize, eps: f32, eps_mode: EpsMode) -> f64 {
    let k = k.min(row.len());
    if k == 0 {
        return 0.0;
    }
    let sumsq: f64 = row[..k].iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let mean = sumsq / k as f64;
    let eps = f64::from(eps);
    let denominator = match eps_mode {
        EpsMode::InsideRoot => (mean + eps).sqrt(),
        EpsMode::AddedToRms => mean.sqrt() + eps,
    };
    if denominator == 0.0 {
        0.0
    } else {
        1.0 / denominator
    }
}

/// `y` in f64 for `x` of `rows * hidden` elements, checking the input like the GPU path.
pub fn rms_norm(
    x: &[f32],
    config: &RmsNormConfig,
    gain: Option<&[f32]>,
    bias: Option<&[f32]>,
) -> Result<Vec<f64>> {
    config.validate()?;
    config.rows_in(x.len())?;
    config.check_weights(gain.map(<[f32]>::len), bias.map(<[f32]>::len))?;
    let k = config.rms_count()? as usize;
    let n = config.hidden as usize;
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks_exact(n) {
        let scale = row_scale(row, k, config.eps, config.eps_mode);
        for (i, &v) in row.iter().enumerate() {
            y.push(apply_weights(
                f64::from(v) * scale,
                i,
                config.gain,
                gain,
                bias,
            ));
        }
    }
    Ok(y)
}

/// LayerNorm in f64 (two-pass mean and variance), checking the input like the GPU path.
/// A zero variance with eps = 0 gives a scale of 0, as the kernels do.
pub fn layer_norm(
    x: &[f32],
    config: &LayerNormConfig,
    gain: Option<&[f32]>,
    bias: Option<&[f32]>,
) -> Result<Vec<f64>> {
    let rms_config = config.as_rms_config();
    rms_config.validate()?;
    rms_config.rows_in(x.len())?;
    rms_config.check_weights(gain.map(<[f32]>::len), bias.map(<[f32]>::len))?;
    let n = config.hidden as usize;
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks_exact(n) {
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        let variance = row
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        let denominator = (variance + f64::from(config.eps)).sqrt();
        let scale = if denominator == 0.0 {
            0.0
        } else {
            1.0 / denominator
        };
        for (i, &v) in row.iter().enumerate() {
            y.push(apply_weights(
                (f64::from(v) - mean) * scale,
                i,
                config.gain,
                gain,
                bias,
            ));
        }
    }
    Ok(y)
}

fn apply_weights(
    normalized: f64,
    i: usize,
    mode: Gain,
    gain: Option<&[f32]>,
    bias: Option<&[f32]>,
) -> f64 {
    let mut out = normalized;
    if let Some(g) = gain {
        let g = f64::from(g[i]);
        out *= match mode {
            Gain::UnitOffset => 1.0 + g,
            _ => g,
        };
    }
    if let Some(b) = bias {
        out += f64::from(b[i]);
    }
    out
}

/// Deterministic data of varied sign and magnitude in `[-amplitude, amplitude)`, the same for
/// the same `seed` on every platform (xorshift64): for tests, the CLI and the demo.
pub fn sample_data(len: usize, seed: u64, amplitude: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
            (unit * 2.0 - 1.0) * amplitude
        })
        .collect()
}

/// The largest errors of `actual` against `expected`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ErrorStats {
    /// max |actual - expected|.
    pub max_abs: f64,
    /// max |actual - expected| / |expected| over the elements where the relative tolerance
    /// is the larger term (|expected| >= abs_tol / rel_tol): near zero a relative error says
    /// nothing, and the absolute tolerance applies.
    pub max_rel: f64,
    /// Elements outside `abs_tol + rel_tol * |expected|` (NaN counts as outside); for a
    /// 16-bit output, elements that are not a rounding of a value within that tolerance.
    pub failures: usize,
    /// max |actual - expected| in units in the last place of the output type at
    /// `expected`, over the same elements as `max_rel` (near zero the absolute tolerance
    /// governs, and an ulp there says nothing).
    pub max_ulps: f64,
}

/// Compares element by element with tolerance `abs_tol + rel_tol * |expected|`.
pub fn compare(actual: &[f32], expected: &[f64], abs_tol: f64, rel_tol: f64) -> ErrorStats {
    let mut stats = ErrorStats::default();
    if actual.len() != expected.len() {
        stats.failures = actual.len().max(expected.len());
        return stats;
    }
    for (&a, &e) in actual.iter().zip(expected) {
        let err = (f64::from(a) - e).abs();
        let within = err <= abs_tol + rel_tol * e.abs();
        if !within {
            stats.failures += 1;
        }
        if err.is_nan() {
            stats.max_abs = f64::NAN;
            continue;
        }
        stats.max_abs = stats.max_abs.max(err);
        if e != 0.0 && e.abs() * rel_tol >= abs_tol {
            stats.max_rel = stats.max_rel.max(err / e.abs());
            stats.max_ulps = stats.max_ulps.max(err / DType::F32.ulp(e));
        }
    }
    stats
}

/// Compares outputs of `dtype` (widened to f32) with the f64 results: each must be a
/// rounding to `dtype` (nearest, ties to even) of some value within `abs_tol + rel_tol *
/// |expected|` of the exact result, i.e. lie between the roundings of the interval's ends:
/// at most 1 ulp of `dtype` from the correctly rounded result, and exactly it except where
/// the f32 computation's own error crosses a rounding boundary. An exact result beyond the
/// type's range rounds to inf, so inf is then the expected output. For f32 this is
/// [`compare`].
pub fn compare_rounded(
    actual: &[f32],
    expected: &[f64],
    dtype: DType,
    abs_tol: f64,
    rel_tol: f64,
) -> ErrorStats {
    if dtype == DType::F32 {
        return compare(actual, expected, abs_tol, rel_tol);
    }
    let mut stats = ErrorStats::default();
    if actual.len() != expected.len() {
        stats.failures = actual.len().max(expected.len());
        return stats;
    }
    for (&a, &e) in actual.iter().zip(expected) {
        let a = f64::from(a);
        let tol = abs_tol + rel_tol * e.abs();
        let (lo, hi) = (dtype.round_f64(e - tol), dtype.round_f64(e + tol));
        if !(lo <= a && a <= hi) {
            stats.failures += 1;
        }
        let err = (a - e).abs();
        if err.is_nan() {
            stats.max_abs = f64::NAN;
            continue;
        }
        if err.is_finite() {
            stats.max_abs = stats.max_abs.max(err);
            if e != 0.0 && e.abs() * rel_tol >= abs_tol {
                stats.max_rel = stats.max_rel.max(err / e.abs());
                stats.max_ulps = stats.max_ulps.max(err / dtype.ulp(e));
            }
        }
    }
    stats
}

/// The normalized input of a call with a residual add, as the kernels compute it: `x + r`
/// added in f32 and rounded to `dtype` (the values of 16-bit tensors widened to f32).
pub fn residual_sum(x: &[f32], r: &[f32], dtype: DType) -> Vec<f32> {
    x.iter().zip(r).map(|(&a, &b)| dtype.round(a + b)).collect()
}

/// The tolerance the f32 kernels are held to: relative 1e-5, absolute 1e-6.
pub const F32_REL_TOL: f64 = 1e-5;
/// See [`F32_REL_TOL`].
pub const F32_ABS_TOL: f64 = 1e-6;
