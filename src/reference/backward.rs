//! The backward pass in f64: the gradients of RMSNorm, pRMSNorm and LayerNorm with respect to
//! their input, gain and bias, given the gradient of the output. The derivation is in
//! `docs/backward.md`; the unit tests below check every form against central finite
//! differences of the forward, in f64.
//!
//! With the fused residual add the input is h = x + r, and the gradient reaching h is the
//! sum of what comes through the normalization and the gradient of the stored h (`dsum`):
//! `dx` is then the gradient of both x and r.

use crate::config::{EpsMode, Gain, LayerNormConfig, RmsNormConfig};
use crate::error::{Error, Result};

/// The gradients of one normalization of `rows` rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients {
    /// Of the input (x, or h = x + r with the residual: then of x and of r alike), one per
    /// element.
    pub dx: Vec<f64>,
    /// Of the gain, summed over rows; where the config has a gain.
    pub dgain: Option<Vec<f64>>,
    /// Of the bias, summed over rows; where the config has a bias.
    pub dbias: Option<Vec<f64>>,
    /// The scale an f32 computation's error in dx is measured against, per row: the
    /// magnitudes of the terms dx is made of (`r (max |u| + max |x̂| sum |u x̂| / k)` for
    /// RMSNorm, with `sum |u| / n` too for LayerNorm, and max |dsum|), so that a dx near
    /// zero by cancellation is held to the accuracy its terms allow ([`compare_normwise`]).
    pub dx_scale: Vec<f64>,
    /// The same for dgain, per column: `sum over rows of |dy x̂|`, and for LayerNorm of
    /// `|dy| max |x̂|` too (x̂ = (x − mean) / σ is a difference: its error is relative to the
    /// row's spread, not to the element).
    pub dgain_scale: Vec<f64>,
    /// The same for dbias, per column: `sum over rows of |dy|`.
    pub dbias_scale: Vec<f64>,
}

/// The norm-wise tolerance of the GPU backward: every element of dx within `BACKWARD_TOL`
/// times its row's [`Gradients::dx_scale`] of the f64 result, every element of dgain and
/// dbias within `BACKWARD_TOL` times its column's scale (for 16-bit dx: a rounding of a
/// value within that).
pub const BACKWARD_TOL: f64 = 1e-5;

/// Compares `actual` (widened from `dtype`) with `expected`, element i held to
/// `tol * scale[i / group]` (16-bit: a rounding to `dtype` of a value within it). `max_rel`
/// reports the largest error relative to its scale, `max_ulps` the largest in ulps of
/// `dtype` at the expected value.
pub fn compare_normwise(
    actual: &[f32],
    expected: &[f64],
    scale: &[f64],
    group: usize,
    dtype: crate::dtype::DType,
    tol: f64,
) -> super::ErrorStats {
    let mut stats = super::ErrorStats::default();
    if actual.len() != expected.len() || expected.len() > scale.len() * group.max(1) {
        stats.failures = actual.len().max(expected.len());
        return stats;
    }
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let a = f64::from(a);
        let bound = tol * scale[i / group.max(1)];
        let (lo, hi) = (dtype.round_f64(e - bound), dtype.round_f64(e + bound));
        if !(lo <= a && a <= hi) {
            stats.failures += 1;
        }
        let err = (a - e).abs();
        if err.is_nan() {
            stats.max_abs = f64::NAN;
            continue;
        }
        stats.max_abs = stats.max_abs.max(err);
        if bound > 0.0 {
            stats.max_rel = stats.max_rel.max(err / (bound / tol));
        }
        if e != 0.0 && err.is_finite() {
            stats.max_ulps = stats.max_ulps.max(err / dtype.ulp(e));
        }
    }
    stats
}

/// The gradients of RMSNorm or pRMSNorm (by `config.partial`) at the input `x` (h where the
/// config has a residual add), given the output's gradient `dy` and, where the sum h is
/// stored, its gradient `dsum`.
///
/// With `r = 1/sqrt(mean_{i<k} x_i^2 + eps)`, `x̂ = x r`, `u = dy G` (G the gain, or 1 + g,
/// or 1) and `c = sum_i u_i x̂_i` over the whole row: `dx_j = r (u_j - [j < k] x̂_j c / k)`.
/// eps added to the RMS (`r = 1/(rms + eps)`) scales the correction by `1/(r rms)`. A row
/// whose scale is 0 (all-zero first k with eps = 0) has dx = 0; at rms = 0 with eps added to
/// it the correction is 0 (x̂ = 0 there).
pub fn rms_norm_backward(
    x: &[f32],
    dy: &[f32],
    config: &RmsNormConfig,
    gain: Option<&[f32]>,
    dsum: Option<&[f32]>,
) -> Result<Gradients> {
    config.validate()?;
    check(x, dy, dsum, config, gain)?;
    let k = config.rms_count()? as usize;
    let rows = Rows::new(x, dy, dsum, config, gain);
    Ok(rows.run(|row, out| {
        rms_row(row, k, f64::from(config.eps), config.eps_mode, out);
    }))
}

/// The gradients of LayerNorm at `x` (h with the residual), given `dy` and `dsum`:
/// `dx = (u - mean(u) - x̂ mean(u x̂)) / σ` with `σ = sqrt(var + eps)`, `x̂ = (x - mean) / σ`,
/// `u = dy G`. A constant row with eps = 0 (scale 0) has dx = 0.
pub fn layer_norm_backward(
    x: &[f32],
    dy: &[f32],
    config: &LayerNormConfig,
    gain: Option<&[f32]>,
    dsum: Option<&[f32]>,
) -> Result<Gradients> {
    let core = config.as_rms_config();
    core.validate()?;
    check(x, dy, dsum, &core, gain)?;
    let rows = Rows::new(x, dy, dsum, &core, gain);
    Ok(rows.run(|row, out| layer_row(row, f64::from(config.eps), out)))
}

/// Shapes and weights checked like the forward's, and dy (and dsum) as long as x.
fn check(
    x: &[f32],
    dy: &[f32],
    dsum: Option<&[f32]>,
    config: &RmsNormConfig,
    gain: Option<&[f32]>,
) -> Result<()> {
    config.rows_in(x.len())?;
    config.check_weights(
        gain.map(<[f32]>::len),
        config.bias.then_some(config.hidden as usize),
    )?;
    for (which, len) in [
        ("output gradient", Some(dy.len())),
        ("sum gradient", dsum.map(<[f32]>::len)),
    ] {
        if let Some(len) = len.filter(|&len| len != x.len()) {
            return Err(Error::LengthMismatch {
                which,
                len,
                expected: x.len(),
            });
        }
    }
    Ok(())
}

/// One row's data, in f64, with the effective gain G (g, 1 + g, or 1).
struct Row<'a> {
    x: &'a [f64],
    u: &'a [f64],
}

/// Where one row's gradients go.
struct RowOut<'a> {
    dx: &'a mut [f64],
    /// The row's x̂, for dgain.
    normalized: &'a mut [f64],
    /// The row's error scale (see [`Gradients::dx_scale`]).
    scale: &'a mut f64,
    /// What x̂'s error is relative to besides x̂ itself (LayerNorm: the row's max |x̂|).
    spread: &'a mut f64,
}

/// The batch, converted once.
struct Rows {
    n: usize,
    x: Vec<f64>,
    dy: Vec<f64>,
    u: Vec<f64>,
    dsum: Option<Vec<f64>>,
    gain: bool,
    bias: bool,
}

impl Rows {
    fn new(
        x: &[f32],
        dy: &[f32],
        dsum: Option<&[f32]>,
        config: &RmsNormConfig,
        gain: Option<&[f32]>,
    ) -> Self {
        let n = config.hidden as usize;
        let wide = |v: &[f32]| v.iter().map(|&e| f64::from(e)).collect::<Vec<f64>>();
        let effective: Vec<f64> = (0..n)
            .map(|i| match (config.gain, gain) {
                (Gain::Scale, Some(g)) => f64::from(g[i]),
                (Gain::UnitOffset, Some(g)) => 1.0 + f64::from(g[i]),
                _ => 1.0,
            })
            .collect();
        let dy = wide(dy);
        let u = dy
            .iter()
            .enumerate()
            .map(|(i, &d)| d * effective[i % n])
            .collect();
        Self {
            n,
            x: wide(x),
            dy,
            u,
            dsum: dsum.map(wide),
            gain: config.gain != Gain::None,
            bias: config.bias,
        }
    }

    /// Runs `row_grad` on every row, then sums dgain and dbias over rows and adds dsum.
    fn run(self, row_grad: impl Fn(Row<'_>, RowOut<'_>)) -> Gradients {
        let n = self.n;
        let mut dx = vec![0.0; self.x.len()];
        let mut normalized = vec![0.0; n];
        let mut dgain = vec![0.0; n];
        let mut dbias = vec![0.0; n];
        let mut dx_scale = vec![0.0; self.x.len() / n.max(1)];
        let (mut dgain_scale, mut dbias_scale) = (vec![0.0; n], vec![0.0; n]);
        for (row, dx_row) in dx.chunks_exact_mut(n).enumerate() {
            let range = row * n..(row + 1) * n;
            let mut spread = 0.0;
            let data = Row {
                x: &self.x[range.clone()],
                u: &self.u[range.clone()],
            };
            let out = RowOut {
                dx: dx_row,
                normalized: &mut normalized,
                scale: &mut dx_scale[row],
                spread: &mut spread,
            };
            row_grad(data, out);
            for i in 0..n {
                let dy = self.dy[range.start + i];
                dgain[i] += dy * normalized[i];
                dbias[i] += dy;
                dgain_scale[i] += dy.abs() * (normalized[i].abs() + spread);
                dbias_scale[i] += dy.abs();
            }
        }
        if let Some(dsum) = &self.dsum {
            dx.iter_mut().zip(dsum).for_each(|(d, s)| *d += s);
            for (scale, row) in dx_scale.iter_mut().zip(dsum.chunks_exact(n)) {
                *scale += max_abs(row);
            }
        }
        Gradients {
            dx,
            dgain: self.gain.then_some(dgain),
            dbias: self.bias.then_some(dbias),
            dx_scale,
            dgain_scale,
            dbias_scale,
        }
    }
}

/// The largest magnitude in `v` (0 for none).
fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, e| m.max(e.abs()))
}

/// One row of RMSNorm's backward (see [`rms_norm_backward`]).
fn rms_row(row: Row<'_>, k: usize, eps: f64, eps_mode: EpsMode, out: RowOut<'_>) {
    let k = k.min(row.x.len());
    let mean = row.x[..k].iter().map(|v| v * v).sum::<f64>() / k as f64;
    let rms = mean.sqrt();
    let denominator = match eps_mode {
        EpsMode::InsideRoot => (mean + eps).sqrt(),
        EpsMode::AddedToRms => rms + eps,
    };
    let r = if denominator == 0.0 {
        0.0
    } else {
        1.0 / denominator
    };
    for (n, &v) in out.normalized.iter_mut().zip(row.x) {
        *n = v * r;
    }
    let c: f64 = row
        .u
        .iter()
        .zip(out.normalized.iter())
        .map(|(u, n)| u * n)
        .sum();
    // d r / d x_j = -r^3 x_j / k (inside the root), -r^2 x_j / (k rms) (added to the RMS).
    let coefficient_of = |c: f64| match eps_mode {
        EpsMode::InsideRoot => c / k as f64,
        EpsMode::AddedToRms if rms > 0.0 => c / (k as f64 * r * rms),
        EpsMode::AddedToRms => 0.0,
    };
    let coefficient = coefficient_of(c);
    let magnitude: f64 = row
        .u
        .iter()
        .zip(out.normalized.iter())
        .map(|(u, n)| (u * n).abs())
        .sum();
    *out.scale =
        r * (max_abs(row.u) + max_abs(&out.normalized[..k]) * coefficient_of(magnitude).abs());
    for (j, d) in out.dx.iter_mut().enumerate() {
        let correction = if j < k {
            out.normalized[j] * coefficient
        } else {
            0.0
        };
        *d = r * (row.u[j] - correction);
    }
}

/// One row of LayerNorm's backward (see [`layer_norm_backward`]).
fn layer_row(row: Row<'_>, eps: f64, out: RowOut<'_>) {
    let n = row.x.len() as f64;
    let mean = row.x.iter().sum::<f64>() / n;
    let variance = row.x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let denominator = (variance + eps).sqrt();
    let inverse = if denominator == 0.0 {
        0.0
    } else {
        1.0 / denominator
    };
    for (normalized, &v) in out.normalized.iter_mut().zip(row.x) {
        *normalized = (v - mean) * inverse;
    }
    let mean_u = row.u.iter().sum::<f64>() / n;
    let mean_ux: f64 = row
        .u
        .iter()
        .zip(out.normalized.iter())
        .map(|(u, x)| u * x)
        .sum::<f64>()
        / n;
    for ((d, u), x) in out.dx.iter_mut().zip(row.u).zip(out.normalized.iter()) {
        *d = inverse * (u - mean_u - x * mean_ux);
    }
    let sum_abs = |v: &mut dyn Iterator<Item = f64>| v.map(f64::abs).sum::<f64>() / n;
    let products = &mut row.u.iter().zip(out.normalized.iter()).map(|(u, x)| u * x);
    *out.scale = inverse
        * (max_abs(row.u)
            + sum_abs(&mut row.u.iter().copied())
            + max_abs(out.normalized) * sum_abs(products));
    *out.spread = max_abs(out.normalized);
}

#[cfg(test)]
mod tests {
    //! Every gradient against central finite differences of an independent f64 forward of
    //! the loss `L = sum_i dy_i y_i + sum_i dsum_i h_i`.

    use super::*;
    use crate::config::{PartialRms, Residual};
    use crate::reference::sample_data;

    /// The forward in f64, written apart from the backward: rows of `n`, gain and bias in
    /// f64.
    fn forward(x: &[f64], n: usize, norm: &Norm, g: &[f64], b: &[f64]) -> Vec<f64> {
        let mut y = Vec::with_capacity(x.len());
        for row in x.chunks_exact(n) {
            let (shift, scale) = match *norm {
                Norm::Rms { k, eps, mode } => {
                    let mean = row[..k].iter().map(|v| v * v).sum::<f64>() / k as f64;
                    let d = match mode {
                        EpsMode::InsideRoot => (mean + eps).sqrt(),
                        EpsMode::AddedToRms => mean.sqrt() + eps,
                    };
                    (0.0, 1.0 / d)
                }
                Norm::Layer { eps } => {
                    let mean = row.iter().sum::<f64>() / n as f64;
                    let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
                    (mean, 1.0 / (var + eps).sqrt())
                }
            };
            for (i, &v) in row.iter().enumerate() {
                y.push((v - shift) * scale * g[i] + b[i]);
            }
        }
        y
    }

    #[derive(Debug, Clone, Copy)]
    enum Norm {
        Rms { k: usize, eps: f64, mode: EpsMode },
        Layer { eps: f64 },
    }

    fn loss(x: &[f64], n: usize, norm: &Norm, g: &[f64], b: &[f64], dy: &[f64], ds: &[f64]) -> f64 {
        let y = forward(x, n, norm, g, b);
        let through: f64 = y.iter().zip(dy).map(|(y, d)| y * d).sum();
        through + x.iter().zip(ds).map(|(h, d)| h * d).sum::<f64>()
    }

    /// Central differences of the loss in each element of `v` (x, g or b), with steps of
    /// 1e-6 of the vector's largest magnitude.
    fn numeric(v: &[f64], at: &dyn Fn(&[f64]) -> f64) -> Vec<f64> {
        let h = 1e-6 * v.iter().fold(0.0f64, |m, e| m.max(e.abs()));
        (0..v.len())
            .map(|j| {
                let mut plus = v.to_vec();
                let mut minus = v.to_vec();
                plus[j] += h;
                minus[j] -= h;
                (at(&plus) - at(&minus)) / (2.0 * h)
            })
            .collect()
    }

    fn assert_near(analytic: &[f64], numeric: &[f64], what: &str) {
        let scale = numeric.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
        for (j, (a, e)) in analytic.iter().zip(numeric).enumerate() {
            assert!(
                (a - e).abs() <= 1e-6 * scale,
                "{what}: element {j}: analytic {a} against finite differences {e}"
            );
        }
    }

    /// One case: the analytic gradients against finite differences in x, g and b.
    fn case(config: &RmsNormConfig, layer: bool, scale: f32) {
        let n = config.hidden as usize;
        let rows = 3;
        let x32: Vec<f32> = sample_data(rows * n, 7, 2.0)
            .iter()
            .map(|v| v * scale)
            .collect();
        let dy32 = sample_data(rows * n, 8, 1.0);
        let g32 = sample_data(n, 9, 1.5);
        let b32 = sample_data(n, 10, 0.5);
        let ds32 = sample_data(rows * n, 11, 1.0);
        let wide = |v: &[f32]| v.iter().map(|&e| f64::from(e)).collect::<Vec<f64>>();
        let (x, dy, b) = (wide(&x32), wide(&dy32), wide(&b32));
        let ds = if config.residual.stores_sum() {
            wide(&ds32)
        } else {
            vec![0.0; x.len()]
        };
        let g: Vec<f64> = match config.gain {
            Gain::None => vec![1.0; n],
            Gain::Scale => wide(&g32),
            Gain::UnitOffset => g32.iter().map(|&v| 1.0 + f64::from(v)).collect(),
        };
        let gain = (config.gain != Gain::None).then_some(&g32[..]);
        let dsum = config.residual.stores_sum().then_some(&ds32[..]);
        let (grads, norm) = if layer {
            let lc = LayerNormConfig::new(config.hidden)
                .with_eps(config.eps)
                .with_gain(config.gain)
                .with_bias(config.bias)
                .with_residual(config.residual);
            let eps = f64::from(config.eps);
            (
                layer_norm_backward(&x32, &dy32, &lc, gain, dsum).unwrap(),
                Norm::Layer { eps },
            )
        } else {
            let k = config.rms_count().unwrap() as usize;
            let norm = Norm::Rms {
                k,
                eps: f64::from(config.eps),
                mode: config.eps_mode,
            };
            (
                rms_norm_backward(&x32, &dy32, config, gain, dsum).unwrap(),
                norm,
            )
        };
        let what = format!("{config:?} layer={layer} scale={scale:e}");
        let dx = numeric(&x, &|x| loss(x, n, &norm, &g, &b, &dy, &ds));
        assert_near(&grads.dx, &dx, &format!("dx {what}"));
        if let Some(dgain) = &grads.dgain {
            // d/dg of (1 + g) is 1: the numeric gradient in G is the gradient in g.
            let numeric_g = numeric(&g, &|g| loss(&x, n, &norm, g, &b, &dy, &ds));
            assert_near(dgain, &numeric_g, &format!("dgain {what}"));
        }
        if let Some(dbias) = &grads.dbias {
            let numeric_b = numeric(&b, &|b| loss(&x, n, &norm, &g, b, &dy, &ds));
            assert_near(dbias, &numeric_b, &format!("dbias {what}"));
        }
    }

    #[test]
    fn rms_norm_gradients_match_finite_differences() {
        for partial in [
            PartialRms::Full,
            PartialRms::Fraction(0.3),
            PartialRms::Count(1),
        ] {
            for eps_mode in [EpsMode::InsideRoot, EpsMode::AddedToRms] {
                for gain in [Gain::None, Gain::Scale, Gain::UnitOffset] {
                    for residual in [Residual::None, Residual::AddStoreSum] {
                        let config = RmsNormConfig::new(13)
                            .with_partial(partial)
                            .with_eps(1e-3)
                            .with_eps_mode(eps_mode)
                            .with_gain(gain)
                            .with_bias(true)
                            .with_residual(residual);
                        case(&config, false, 1.0);
                    }
                }
            }
        }
        // Large and small rows: the x̂ form keeps every term in range.
        for scale in [1e15f32, 1e-15] {
            let config = RmsNormConfig::new(13).with_eps(0.0).with_gain(Gain::Scale);
            case(&config, false, scale);
        }
    }

    #[test]
    fn layer_norm_gradients_match_finite_differences() {
        for gain in [Gain::None, Gain::Scale, Gain::UnitOffset] {
            for residual in [Residual::None, Residual::AddStoreSum] {
                let config = RmsNormConfig::new(11)
                    .with_eps(1e-3)
                    .with_gain(gain)
                    .with_bias(true)
                    .with_residual(residual);
                case(&config, true, 1.0);
            }
        }
    }

    /// pRMSNorm: elements at or past k get no correction term, dx_j = r u_j exactly.
    #[test]
    fn prms_norm_tail_gets_no_correction() {
        let config = RmsNormConfig::new(8)
            .with_partial(PartialRms::Count(3))
            .with_eps(0.0);
        let x = [3.0f32, 4.0, 0.0, 5.0, -2.0, 7.0, 1.0, 9.0];
        let dy = [1.0f32; 8];
        let grads = rms_norm_backward(&x, &dy, &config, None, None).unwrap();
        // rms over the first 3 = sqrt(25 / 3).
        let r = 1.0 / (25.0f64 / 3.0).sqrt();
        for j in 3..8 {
            assert!((grads.dx[j] - r).abs() < 1e-15, "{j}: {}", grads.dx[j]);
        }
    }

    /// Zero rows: with eps > 0 the gradient is r dy (x̂ = 0); with eps = 0 the scale is 0
    /// and so is the gradient; never NaN.
    #[test]
    fn zero_rows_have_defined_gradients() {
        let dy = [1.0f32, -2.0, 0.5, 4.0];
        for eps_mode in [EpsMode::InsideRoot, EpsMode::AddedToRms] {
            let config = RmsNormConfig::new(4).with_eps_mode(eps_mode).with_eps(0.25);
            let grads = rms_norm_backward(&[0.0; 4], &dy, &config, None, None).unwrap();
            let r = match eps_mode {
                EpsMode::InsideRoot => 2.0,
                EpsMode::AddedToRms => 4.0,
            };
            let expected: Vec<f64> = dy.iter().map(|&d| r * f64::from(d)).collect();
            assert_eq!(grads.dx, expected, "{eps_mode:?}");
            let config = config.with_eps(0.0);
            let grads = rms_norm_backward(&[0.0; 4], &dy, &config, None, None).unwrap();
            assert_eq!(grads.dx, vec![0.0; 4], "{eps_mode:?} eps = 0");
        }
        let layer = LayerNormConfig::new(4).with_eps(0.0);
        let grads = layer_norm_backward(&[2.0; 4], &dy, &layer, None, None).unwrap();
        assert_eq!(grads.dx, vec![0.0; 4]);
    }

    #[test]
    fn bad_lengths_are_refused() {
        let config = RmsNormConfig::new(4);
        let e = rms_norm_backward(&[1.0; 8], &[1.0; 4], &config, None, None).unwrap_err();
        assert_eq!(
            e,
            Error::LengthMismatch {
                which: "output gradient",
                len: 4,
                expected: 8
            }
        );
        let e = rms_norm_backward(&[1.0; 8], &[1.0; 8], &config, None, Some(&[0.0; 3]));
        assert!(matches!(
            e,
            Err(Error::LengthMismatch {
                which: "sum gradient",
                ..
            })
        ));
    }
}
