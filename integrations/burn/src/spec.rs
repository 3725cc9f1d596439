//! What one normalization computes, in this crate's and the core's terms.

use wgpu_rmsnorm::kernel::Norm;
use wgpu_rmsnorm::{EpsMode, Gain, PartialRms, RmsNormConfig};

/// Which normalization, over rows of `hidden` elements (the last dimension).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NormSpec {
    /// RMSNorm over the first `k` elements of each row (`k == hidden`: RMSNorm, fewer:
    /// pRMSNorm), y = x / sqrt(mean(x[..k]²) + eps) · gain.
    Rms {
        /// Elements per row.
        hidden: usize,
        /// Leading elements in the RMS, 1..=hidden.
        k: usize,
        /// Added to the mean square inside the root.
        eps: f32,
    },
    /// LayerNorm, y = (x - mean) / sqrt(var + eps) · gain + bias (biased variance).
    Layer {
        /// Elements per row.
        hidden: usize,
        /// Added to the variance inside the root.
        eps: f32,
    },
}

impl NormSpec {
    /// Elements per row.
    pub fn hidden(&self) -> usize {
        match *self {
            NormSpec::Rms { hidden, .. } | NormSpec::Layer { hidden, .. } => hidden,
        }
    }

    /// eps.
    pub fn eps(&self) -> f32 {
        match *self {
            NormSpec::Rms { eps, .. } | NormSpec::Layer { eps, .. } => eps,
        }
    }

    /// Whether the normalization adds a bias.
    pub fn has_bias(&self) -> bool {
        matches!(self, NormSpec::Layer { .. })
    }

    /// The core's kernel.
    pub fn norm(&self) -> Norm {
        match self {
            NormSpec::Rms { .. } => Norm::Rms,
            NormSpec::Layer { .. } => Norm::Layer,
        }
    }

    /// f32 words of statistics per row the forward saves for the backward.
    pub fn stats_per_row(&self) -> usize {
        match self {
            NormSpec::Rms { .. } => 2,
            NormSpec::Layer { .. } => 3,
        }
    }

    /// The core's config: f32 tensors, a gain (and LayerNorm's bias), eps inside
    /// the root, statistics saved by the forward and read by the backward. A typed error
    /// where the core refuses the shape or eps.
    pub fn core_config(&self) -> wgpu_rmsnorm::Result<RmsNormConfig> {
        let hidden = hidden_u32(self.hidden())?;
        let (partial, bias) = match *self {
            // A k past u32 is past hidden: refused by validate as out of range.
            NormSpec::Rms { k, .. } => (
                PartialRms::Count(u32::try_from(k).unwrap_or(u32::MAX)),
                false,
            ),
            NormSpec::Layer { .. } => (PartialRms::Full, true),
        };
        let config = RmsNormConfig::new(hidden)
            .with_partial(partial)
            .with_eps(self.eps())
            .with_eps_mode(EpsMode::InsideRoot)
            .with_gain(Gain::Scale)
            .with_bias(bias)
            .with_saved_stats(true);
        config.validate()?;
        Ok(config)
    }
}

/// `d_model` as the core's hidden size, or the typed error of a row past any binding.
pub(crate) fn hidden_u32(d_model: usize) -> wgpu_rmsnorm::Result<u32> {
    u32::try_from(d_model).map_err(|_| wgpu_rmsnorm::Error::RowExceedsBindingLimit {
        hidden: u32::MAX,
        row_bytes: (d_model as u64).saturating_mul(4),
        limit: u64::from(u32::MAX),
    })
}
