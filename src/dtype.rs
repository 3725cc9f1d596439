//! Element types of tensors: f32, f16 and bf16 (the `half` crate's types), chosen
//! independently for activations (x, the residual, the output, the stored sum) and for
//! weights (gain, bias). Arithmetic is f32 on every path; a 16-bit output is rounded once,
//! to nearest with ties to even, overflowing to +-inf as IEEE rounding does.

pub use half::{bf16, f16};

/// The element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DType {
    /// IEEE binary32.
    #[default]
    F32,
    /// IEEE binary16: 11-bit significand, largest finite value 65504.
    F16,
    /// bfloat16: f32's exponent range with an 8-bit significand.
    Bf16,
}

impl DType {
    /// Every element type.
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::Bf16];

    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
        }
    }

    /// The name used by the CLI, the benchmark reports and JavaScript: `f32`, `f16`, `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
        }
    }

    /// The type named `name` (see [`DType::name`]).
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// `v` rounded to this type (nearest, ties to even) and widened back to f32: what the
    /// kernels store.
    pub fn round(self, v: f32) -> f32 {
        match self {
            DType::F32 => v,
            DType::F16 => f16::from_f32(v).to_f32(),
            DType::Bf16 => bf16::from_f32(v).to_f32(),
        }
    }

    /// `v` (an f64) rounded to this type, nearest with ties to even, widened to f64. Exact:
    /// no double rounding through f32.
    pub fn round_f64(self, v: f64) -> f64 {
        match self {
            DType::F32 => f64::from(v as f32),
            DType::F16 => f16::from_f64(v).to_f64(),
            DType::Bf16 => bf16::from_f64(v).to_f64(),
        }
    }

    /// The spacing of this type's values at `v` (the unit in the last place), for errors
    /// reported in ulps.
    pub fn ulp(self, v: f64) -> f64 {
        let (mantissa_bits, min_exponent) = match self {
            DType::F32 => (23, -126),
            DType::F16 => (10, -14),
            DType::Bf16 => (7, -126),
        };
        let exponent = if v == 0.0 || !v.is_finite() {
            min_exponent
        } else {
            (v.abs().log2().floor() as i32).max(min_exponent)
        };
        2f64.powi(exponent - mantissa_bits)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust element type of the high-level API: `f32`, [`f16`] or [`bf16`].
pub trait Element: bytemuck::Pod + Send + Sync + std::fmt::Debug + 'static {
    /// Its [`DType`].
    const DTYPE: DType;
    /// Widened exactly to f32.
    fn to_f32(self) -> f32;
    /// Rounded from f32, nearest with ties to even.
    fn from_f32(v: f32) -> Self;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::Bf16;
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_nearest_even_with_ieee_overflow() {
        assert_eq!(DType::F16.round(65519.0), 65504.0);
        assert_eq!(DType::F16.round(65520.0), f32::INFINITY);
        assert_eq!(DType::F16.round(-1e6), f32::NEG_INFINITY);
        // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even.
        assert_eq!(DType::F16.round(1.0 + 2f32.powi(-11)), 1.0);
        assert_eq!(DType::Bf16.round(1.0 + 2f32.powi(-8)), 1.0);
        // bf16's largest finite value is (2 - 2^-7) 2^127; f32::MAX is past the halfway point.
        assert_eq!(DType::Bf16.round(f32::MAX), f32::INFINITY);
        assert_eq!(DType::F16.ulp(1.0), 2f64.powi(-10));
        assert_eq!(DType::F16.ulp(1e-7), 2f64.powi(-24));
        assert_eq!(DType::from_name("bf16"), Some(DType::Bf16));
    }
}
