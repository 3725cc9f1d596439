//! What to compute: hidden size, pRMSNorm's k, eps and its convention, gain and bias,
//! element types, and the fused residual add.

use crate::dtype::DType;
use crate::error::{Error, Result};

/// How many leading elements of each row the RMS is estimated from.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum PartialRms {
    /// All `n` elements: RMSNorm.
    #[default]
    Full,
    /// pRMSNorm with `k = ceil(n * p)`, as in the paper; `0 < p <= 1`, `p = 1` is RMSNorm.
    Fraction(f64),
    /// pRMSNorm over exactly the first `k` elements, `1 <= k <= n`.
    Count(u32),
}

/// Where eps enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EpsMode {
    /// `y = x / sqrt(mean(x^2) + eps)`: LLaMA, T5, PyTorch `F.rms_norm`, ONNX, the authors'
    /// TensorFlow code. The default.
    #[default]
    InsideRoot,
    /// `y = x / (sqrt(mean(x^2)) + eps)`: the authors' PyTorch code.
    AddedToRms,
}

/// The per-element gain applied after normalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Gain {
    /// No gain (all ones).
    #[default]
    None,
    /// `y = x / rms * g`.
    Scale,
    /// `y = x / rms * (1 + g)`, as in Gemma: a zero-initialized `g` is the identity.
    UnitOffset,
}

/// The residual add fused before the normalization, as in a pre-norm transformer:
/// `h = x + r` is added in f32 and rounded to the activations' type, and that rounded h is
/// normalized (so the fused kernel computes exactly what an add kernel followed by the
/// normalization computes). pRMSNorm's k applies to h.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Residual {
    /// No residual: `y = norm(x)`.
    #[default]
    None,
    /// `y = norm(x + r)`; h is not stored.
    Add,
    /// `y = norm(x + r)`, and h stored to a buffer of its own (the next layer's residual).
    AddStoreSum,
    /// `y = norm(x + r)`, and h stored over r, as vLLM's `fused_add_rms_norm` does.
    AddStoreSumInPlace,
}

impl Residual {
    /// Whether there is a residual input.
    pub fn is_some(self) -> bool {
        self != Residual::None
    }

    /// Whether h is stored (to its own buffer or over r).
    pub fn stores_sum(self) -> bool {
        matches!(self, Residual::AddStoreSum | Residual::AddStoreSumInPlace)
    }
}

/// The default eps, used by [`RmsNormConfig::new`].
pub const DEFAULT_EPS: f32 = 1e-6;

/// A complete description of one RMSNorm or pRMSNorm operation over rows of `hidden`
/// elements.
///
/// ```
/// use wgpu_rmsnorm::{EpsMode, Gain, PartialRms, RmsNormConfig};
/// let config = RmsNormConfig::new(4096)
///     .with_partial(PartialRms::Fraction(0.0625))
///     .with_eps(1e-8)
///     .with_eps_mode(EpsMode::AddedToRms)
///     .with_gain(Gain::Scale);
/// assert_eq!(config.rms_count().unwrap(), 256);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RmsNormConfig {
    /// Elements per row, `n`.
    pub hidden: u32,
    /// RMSNorm, or pRMSNorm's leading-element count.
    pub partial: PartialRms,
    /// Finite and `>= 0`. With eps = 0 a row whose first k elements are all zero has no
    /// defined scale: the kernels then use a scale of 0, so the row's output is the bias (or
    /// zeros), never inf or NaN.
    pub eps: f32,
    /// Where eps enters.
    pub eps_mode: EpsMode,
    /// Gain, if any.
    pub gain: Gain,
    /// Whether a bias vector is added after the gain.
    pub bias: bool,
    /// Element type of x, the residual, the output and the stored sum.
    pub dtype: DType,
    /// Element type of the gain and bias.
    pub weight_dtype: DType,
    /// The fused residual add, if any.
    pub residual: Residual,
    /// Whether the forward saves each row's statistics (f32: the two factors whose product
    /// is 1 / rms) for the backward, which then reads them instead of recomputing them.
    pub save_stats: bool,
}

impl RmsNormConfig {
    /// RMSNorm over rows of `hidden` f32 elements, eps = [`DEFAULT_EPS`] inside the root, no
    /// gain, no bias, no residual.
    pub fn new(hidden: u32) -> Self {
        Self {
            hidden,
            partial: PartialRms::Full,
            eps: DEFAULT_EPS,
            eps_mode: EpsMode::InsideRoot,
            gain: Gain::None,
            bias: false,
            dtype: DType::F32,
            weight_dtype: DType::F32,
            residual: Residual::None,
            save_stats: false,
        }
    }

    /// Sets whether the forward saves each row's statistics for the backward (see
    /// [`RmsNormConfig::save_stats`]).
    pub fn with_saved_stats(mut self, save_stats: bool) -> Self {
        self.save_stats = save_stats;
        self
    }

    /// Sets the element type of every tensor, activations and weights (then
    /// [`RmsNormConfig::with_weight_dtype`] for weights of another type).
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self.weight_dtype = dtype;
        self
    }

    /// Sets the element type of the gain and bias alone.
    pub fn with_weight_dtype(mut self, dtype: DType) -> Self {
        self.weight_dtype = dtype;
        self
    }

    /// Sets the fused residual add.
    pub fn with_residual(mut self, residual: Residual) -> Self {
        self.residual = residual;
        self
    }

    /// Sets how many leading elements the RMS is taken over.
    pub fn with_partial(mut self, partial: PartialRms) -> Self {
        self.partial = partial;
        self
    }

    /// Sets eps.
    pub fn with_eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }

    /// Sets where eps enters.
    pub fn with_eps_mode(mut self, eps_mode: EpsMode) -> Self {
        self.eps_mode = eps_mode;
        self
    }

    /// Sets the gain.
    pub fn with_gain(mut self, gain: Gain) -> Self {
        self.gain = gain;
        self
    }

    /// Adds (or removes) the bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        self.rms_count()?;
        if !self.eps.is_finite() || self.eps < 0.0 {
            return Err(Error::InvalidEps { eps: self.eps });
        }
        if self.eps != 0.0 && self.eps < f32::MIN_POSITIVE {
            return Err(Error::SubnormalEps { eps: self.eps });
        }
        Ok(())
    }

    /// `k`, the number of leading elements the RMS is taken over (`n` for RMSNorm).
    pub fn rms_count(&self) -> Result<u32> {
        let n = self.hidden;
        if n == 0 {
            return Err(Error::ZeroHiddenSize);
        }
        match self.partial {
            PartialRms::Full => Ok(n),
            PartialRms::Fraction(p) => {
                // `!(p > 0.0)` rather than `p <= 0.0` so that NaN is refused too.
                if !(p > 0.0 && p <= 1.0) {
                    return Err(Error::InvalidFraction { p });
                }
                // n * p is computed in f64 like Python's `math.ceil(n * p)`, so that p = 0.1
                // and n = 10 give k = 1. Clamped: a tiny p still gives k = 1.
                let k = (f64::from(n) * p).ceil();
                Ok((k as u32).clamp(1, n))
            }
            PartialRms::Count(k) => {
                if k == 0 || k > n {
                    return Err(Error::InvalidCount { k, hidden: n });
                }
                Ok(k)
            }
        }
    }

    /// Rows in an input of `len` elements.
    pub fn rows_in(&self, len: usize) -> Result<usize> {
        if self.hidden == 0 {
            return Err(Error::ZeroHiddenSize);
        }
        let hidden = self.hidden as usize;
        if !len.is_multiple_of(hidden) {
            return Err(Error::InputNotMultipleOfHidden {
                len,
                hidden: self.hidden,
            });
        }
        Ok(len / hidden)
    }

    /// Checks that `gain` and `bias` match the config: present exactly when it asks for them,
    /// and `hidden` long.
    pub fn check_weights(&self, gain: Option<usize>, bias: Option<usize>) -> Result<()> {
        let gain_fix_missing = "set gain to Gain::None";
        let gain_fix_unexpected = "set gain to Gain::Scale or Gain::UnitOffset";
        check_weight(
            "gain",
            self.gain != Gain::None,
            gain,
            self.hidden,
            gain_fix_missing,
            gain_fix_unexpected,
        )?;
        check_weight(
            "bias",
            self.bias,
            bias,
            self.hidden,
            "set bias to false",
            "set bias to true",
        )
    }
}

/// The default eps of [`LayerNormConfig::new`], PyTorch's `nn.LayerNorm`'s.
pub const DEFAULT_LAYER_NORM_EPS: f32 = 1e-5;

/// LayerNorm over rows of `hidden` f32: `y = (x - mean) / sqrt(var + eps) * g + b`, the
/// baseline of the paper's comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerNormConfig {
    /// Elements per row, `n`.
    pub hidden: u32,
    /// Finite and `>= 0`, inside the root. With eps = 0 a constant row's scale is 0.
    pub eps: f32,
    /// Gain, if any.
    pub gain: Gain,
    /// Whether a bias vector is added after the gain.
    pub bias: bool,
    /// Element type of x, the residual, the output and the stored sum.
    pub dtype: DType,
    /// Element type of the gain and bias.
    pub weight_dtype: DType,
    /// The fused residual add, if any.
    pub residual: Residual,
    /// Whether the forward saves each row's statistics (f32: shift, mean and scale, the
    /// row's mean being shift + mean and its 1 / std the scale) for the backward, which then
    /// reads them instead of recomputing them.
    pub save_stats: bool,
}

impl LayerNormConfig {
    /// LayerNorm over rows of `hidden` f32 elements, eps = [`DEFAULT_LAYER_NORM_EPS`], no
    /// gain, no bias, no residual.
    pub fn new(hidden: u32) -> Self {
        Self {
            hidden,
            eps: DEFAULT_LAYER_NORM_EPS,
            gain: Gain::None,
            bias: false,
            dtype: DType::F32,
            weight_dtype: DType::F32,
            residual: Residual::None,
            save_stats: false,
        }
    }

    /// Sets whether the forward saves each row's statistics for the backward (see
    /// [`LayerNormConfig::save_stats`]).
    pub fn with_saved_stats(mut self, save_stats: bool) -> Self {
        self.save_stats = save_stats;
        self
    }

    /// Sets the element type of every tensor (see [`RmsNormConfig::with_dtype`]).
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self.weight_dtype = dtype;
        self
    }

    /// Sets the element type of the gain and bias alone.
    pub fn with_weight_dtype(mut self, dtype: DType) -> Self {
        self.weight_dtype = dtype;
        self
    }

    /// Sets the fused residual add.
    pub fn with_residual(mut self, residual: Residual) -> Self {
        self.residual = residual;
        self
    }

    /// Sets eps.
    pub fn with_eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }

    /// Sets the gain.
    pub fn with_gain(mut self, gain: Gain) -> Self {
        self.gain = gain;
        self
    }

    /// Adds (or removes) the bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// LayerNorm with an RMSNorm config's hidden size, eps, gain, bias, element types,
    /// residual add and saved statistics (its k and eps mode do not apply: LayerNorm's eps
    /// is inside the root, over the whole row).
    pub fn from_rms_config(config: &RmsNormConfig) -> Self {
        Self::new(config.hidden)
            .with_eps(config.eps)
            .with_gain(config.gain)
            .with_bias(config.bias)
            .with_dtype(config.dtype)
            .with_weight_dtype(config.weight_dtype)
            .with_residual(config.residual)
            .with_saved_stats(config.save_stats)
    }

    /// The same checks as RMSNorm's: the fields they share are validated alike.
    pub(crate) fn as_rms_config(&self) -> RmsNormConfig {
        RmsNormConfig::new(self.hidden)
            .with_eps(self.eps)
            .with_gain(self.gain)
            .with_bias(self.bias)
            .with_dtype(self.dtype)
            .with_weight_dtype(self.weight_dtype)
            .with_residual(self.residual)
            .with_saved_stats(self.save_stats)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        self.as_rms_config().validate()
    }
}

fn check_weight(
    which: &'static str,
    wanted: bool,
    given: Option<usize>,
    hidden: u32,
    fix_missing: &'static str,
    fix_unexpected: &'static str,
) -> Result<()> {
    match (wanted, given) {
        (true, None) => Err(Error::MissingWeight {
            which,
            fix: fix_missing,
        }),
        (false, Some(_)) => Err(Error::UnexpectedWeight {
            which,
            fix: fix_unexpected,
        }),
        (true, Some(len)) if len != hidden as usize => {
            Err(Error::WeightLength { which, len, hidden })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fraction_uses_ceil_like_the_paper() {
        let k = |n, p| {
            RmsNormConfig::new(n)
                .with_partial(PartialRms::Fraction(p))
                .rms_count()
        };
        assert_eq!(k(10, 0.1), Ok(1));
        assert_eq!(k(4096, 0.0625), Ok(256));
        assert_eq!(k(4097, 0.0625), Ok(257));
        assert_eq!(k(3, 0.5), Ok(2));
        assert_eq!(k(1000, 1e-12), Ok(1));
        assert_eq!(k(7, 1.0), Ok(7));
    }

    #[test]
    fn bad_fields_are_refused() {
        let c = RmsNormConfig::new(8);
        for p in [0.0, -0.5, 1.0001, f64::NAN, f64::INFINITY] {
            let e = c
                .with_partial(PartialRms::Fraction(p))
                .validate()
                .unwrap_err();
            assert!(matches!(e, Error::InvalidFraction { .. }), "{p}: {e}");
        }
        for k in [0, 9] {
            let e = c.with_partial(PartialRms::Count(k)).validate().unwrap_err();
            assert_eq!(e, Error::InvalidCount { k, hidden: 8 });
        }
        for eps in [-1e-6, f32::NAN, f32::INFINITY] {
            let e = c.with_eps(eps).validate().unwrap_err();
            assert!(matches!(e, Error::InvalidEps { .. }), "{e}");
        }
        assert_eq!(RmsNormConfig::new(0).validate(), Err(Error::ZeroHiddenSize));
        assert!(c.with_eps(0.0).validate().is_ok());
    }

    #[test]
    fn weights_must_match_the_config() {
        let c = RmsNormConfig::new(4);
        assert!(matches!(
            c.check_weights(Some(4), None),
            Err(Error::UnexpectedWeight { which: "gain", .. })
        ));
        let c = c.with_gain(Gain::Scale).with_bias(true);
        assert!(matches!(
            c.check_weights(None, Some(4)),
            Err(Error::MissingWeight { which: "gain", .. })
        ));
        assert!(matches!(
            c.check_weights(Some(4), Some(3)),
            Err(Error::WeightLength {
                which: "bias",
                len: 3,
                ..
            })
        ));
        assert!(c.check_weights(Some(4), Some(4)).is_ok());
        assert_eq!(
            c.rows_in(10),
            Err(Error::InputNotMultipleOfHidden { len: 10, hidden: 4 })
        );
        assert_eq!(c.rows_in(0), Ok(0));
    }
}
