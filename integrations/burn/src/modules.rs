//! burn modules for RMSNorm, pRMSNorm and LayerNorm that run this library's kernels on
//! burn's wgpu backend and burn's tensor ops everywhere else.

use crate::cube;
use crate::device::cube_device;
use crate::ops::NormBackend;
use crate::spec::NormSpec;
use burn::backend::Dispatch;
use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Tensor};
use wgpu_rmsnorm::kernel::plan::Pass;
use wgpu_rmsnorm::PartialRms;

/// Configuration of an [`RmsNorm`]: burn's `RmsNormConfig` (`d_model`, `epsilon`) plus
/// pRMSNorm's fraction of each row in the RMS.
#[derive(Config, Debug)]
pub struct RmsNormConfig {
    /// Elements per row: the last dimension of the input.
    pub d_model: usize,
    /// Added to the mean square inside the root. Default 1e-5, as burn's. 0 is allowed.
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// pRMSNorm: the RMS is taken over the first `ceil(d_model · partial)` elements of each
    /// row (the paper's p; 0.0625 is its 6.25%). Default 1: RMSNorm.
    #[config(default = 1.0)]
    pub partial: f64,
}

impl RmsNormConfig {
    /// The module on `device`, its gain initialized to ones; a typed error (what to change)
    /// for an empty row, a `partial` outside (0, 1] or an `epsilon` that is not a finite
    /// number >= 0.
    pub fn try_init(&self, device: &Device) -> wgpu_rmsnorm::Result<RmsNorm> {
        let hidden =
            u32::try_from(self.d_model).map_err(|_| wgpu_rmsnorm::Error::ZeroHiddenSize)?;
        let core = wgpu_rmsnorm::RmsNormConfig::new(hidden)
            .with_partial(PartialRms::Fraction(self.partial))
            .with_eps(self.epsilon as f32);
        core.validate()?;
        let k = core.rms_count()? as usize;
        Ok(RmsNorm {
            gamma: Param::from_tensor(Tensor::ones([self.d_model], device)),
            epsilon: self.epsilon,
            k,
        })
    }

    /// [`RmsNormConfig::try_init`], panicking with its error's message.
    pub fn init(&self, device: &Device) -> RmsNorm {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// RMSNorm (pRMSNorm where `k < d_model`) over the last dimension:
/// `y = x / sqrt(mean(x[..k]²) + eps) · gamma`. On burn's wgpu backend (WGSL) with f32
/// tensors its forward and backward are this library's kernels, one dispatch each (plus the
/// pass summing dgain), on burn's buffers; elsewhere burn's tensor ops compute the same.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// The gain.
    pub gamma: Param<Tensor<1>>,
    /// Added to the mean square inside the root.
    pub epsilon: f64,
    /// Leading elements of each row in the RMS (`d_model` for RMSNorm).
    pub k: usize,
}

impl RmsNorm {
    /// What the kernels compute.
    pub fn spec(&self) -> NormSpec {
        NormSpec::Rms {
            hidden: self.gamma.dims()[0],
            k: self.k,
            eps: self.epsilon as f32,
        }
    }

    /// The normalization of `x` (`[.., d_model]`), or a typed error where its last dimension
    /// is not `d_model`.
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> wgpu_rmsnorm::Result<Tensor<D>> {
        let spec = self.spec();
        // The fields are public: what init checked is checked again.
        spec.core_config()?;
        check_last_dim(&x, spec.hidden())?;
        let gamma = self.gamma.val();
        if !kernels_take(&x, &[&gamma], &spec) {
            return Ok(reference_rms_norm(x, gamma, spec));
        }
        let shape = x.shape();
        let rows = shape.num_elements() / spec.hidden();
        let x = x.reshape([rows, spec.hidden()]);
        let y = Dispatch::rms_norm(x.into_dispatch(), gamma.into_dispatch(), spec);
        Ok(Tensor::<2>::from_dispatch(y).reshape(shape))
    }

    /// Whether `forward(x)` runs on the kernels (else on burn's tensor ops): x and the gain
    /// f32 on burn's wgpu runtime compiling WGSL, a call the launch plan can run with each
    /// tensor in one binding.
    pub fn runs_on_kernels<const D: usize>(&self, x: &Tensor<D>) -> bool {
        kernels_take(x, &[&self.gamma.val()], &self.spec())
    }

    /// [`RmsNorm::try_forward`], panicking with its error's message (as burn's modules do
    /// for a wrong shape).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.try_forward(x).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Configuration of a [`LayerNorm`]: burn's `LayerNormConfig` with its bias.
#[derive(Config, Debug)]
pub struct LayerNormConfig {
    /// Elements per row: the last dimension of the input.
    pub d_model: usize,
    /// Added to the variance inside the root. Default 1e-5, as burn's.
    #[config(default = 1e-5)]
    pub epsilon: f64,
}

impl LayerNormConfig {
    /// The module on `device`: gain ones, bias zeros; a typed error for an empty row or an
    /// `epsilon` that is not a finite number >= 0.
    pub fn try_init(&self, device: &Device) -> wgpu_rmsnorm::Result<LayerNorm> {
        let spec = NormSpec::Layer {
            hidden: self.d_model,
            eps: self.epsilon as f32,
        };
        spec.core_config()?;
        Ok(LayerNorm {
            gamma: Param::from_tensor(Tensor::ones([self.d_model], device)),
            beta: Param::from_tensor(Tensor::zeros([self.d_model], device)),
            epsilon: self.epsilon,
        })
    }

    /// [`LayerNormConfig::try_init`], panicking with its error's message.
    pub fn init(&self, device: &Device) -> LayerNorm {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// LayerNorm over the last dimension, `y = (x - mean) / sqrt(var + eps) · gamma + beta`
/// (biased variance), the paper's baseline, on the same terms as [`RmsNorm`].
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// The gain.
    pub gamma: Param<Tensor<1>>,
    /// The bias.
    pub beta: Param<Tensor<1>>,
    /// Added to the variance inside the root.
    pub epsilon: f64,
}

impl LayerNorm {
    /// What the kernels compute.
    pub fn spec(&self) -> NormSpec {
        NormSpec::Layer {
            hidden: self.gamma.dims()[0],
            eps: self.epsilon as f32,
        }
    }

    /// The normalization of `x` (`[.., d_model]`), or a typed error where its last dimension
    /// is not `d_model`.
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> wgpu_rmsnorm::Result<Tensor<D>> {
        let spec = self.spec();
        spec.core_config()?;
        check_last_dim(&x, spec.hidden())?;
        let (gamma, beta) = (self.gamma.val(), self.beta.val());
        // The fields are public: a bias of another length than the gain is refused.
        let [beta_len] = beta.dims();
        if beta_len != spec.hidden() {
            return Err(wgpu_rmsnorm::Error::WeightLength {
                which: "bias",
                len: beta_len,
                hidden: crate::spec::hidden_u32(spec.hidden())?,
            });
        }
        if !kernels_take(&x, &[&gamma, &beta], &spec) {
            return Ok(reference_layer_norm(x, gamma, beta, spec));
        }
        let shape = x.shape();
        let rows = shape.num_elements() / spec.hidden();
        let x = x.reshape([rows, spec.hidden()]);
        let y = Dispatch::layer_norm(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            spec,
        );
        Ok(Tensor::<2>::from_dispatch(y).reshape(shape))
    }

    /// Whether `forward(x)` runs on the kernels (see [`RmsNorm::runs_on_kernels`]).
    pub fn runs_on_kernels<const D: usize>(&self, x: &Tensor<D>) -> bool {
        kernels_take(x, &[&self.gamma.val(), &self.beta.val()], &self.spec())
    }

    /// [`LayerNorm::try_forward`], panicking with its error's message.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.try_forward(x).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A typed error where the last dimension of `x` is not `hidden`.
fn check_last_dim<const D: usize>(x: &Tensor<D>, hidden: usize) -> wgpu_rmsnorm::Result<()> {
    let dims = x.dims();
    if D == 0 || dims[D - 1] != hidden {
        return Err(wgpu_rmsnorm::Error::InputNotMultipleOfHidden {
            len: x.shape().num_elements(),
            hidden: hidden as u32,
        });
    }
    Ok(())
}

/// Whether a call on `x` with these weights runs on the kernels: f32 tensors of at least one
/// row on burn's wgpu runtime compiling WGSL, whose forward and backward the launch plan can
/// run in one binding per tensor.
fn kernels_take<const D: usize>(x: &Tensor<D>, weights: &[&Tensor<1>], spec: &NormSpec) -> bool {
    let Some(device) = cube_device(&x.device()) else {
        return false;
    };
    let f32_tensors = x.dtype() == DType::F32 && weights.iter().all(|w| w.dtype() == DType::F32);
    if !f32_tensors {
        return false;
    }
    let rows = x.shape().num_elements() / spec.hidden().max(1);
    // No rows: nothing to launch (burn's ops return the empty result and zero gradients).
    let Ok(rows @ 1..) = u32::try_from(rows) else {
        return false;
    };
    [Pass::Forward, Pass::Backward].into_iter().all(|pass| {
        cube::plan_for(&device, spec, pass)
            .and_then(|(plan, config)| plan.external_call(&config, rows))
            .is_ok()
    })
}

/// RMSNorm with burn's tensor ops: the same formula as the kernels, in f32 (as the kernels
/// sum), the result in x's dtype.
pub fn reference_rms_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    spec: NormSpec,
) -> Tensor<D> {
    let NormSpec::Rms { hidden, k, eps } = spec else {
        unreachable!("an RMSNorm spec")
    };
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let leading = if k < hidden {
        x.clone().narrow(D - 1, 0, k)
    } else {
        x.clone()
    };
    let inv_rms = (leading.square().mean_dim(D - 1) + f64::from(eps))
        .sqrt()
        .recip();
    (x * inv_rms * gamma.cast(DType::F32).unsqueeze::<D>()).cast(dtype)
}

/// LayerNorm with burn's tensor ops: the same formula as the kernels, in f32, the result in
/// x's dtype.
pub fn reference_layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    spec: NormSpec,
) -> Tensor<D> {
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let centred = x.clone() - x.mean_dim(D - 1);
    let var = centred.clone().square().mean_dim(D - 1);
    let inv_std = (var + f64::from(spec.eps())).sqrt().recip();
    let (gamma, beta) = (gamma.cast(DType::F32), beta.cast(DType::F32));
    (centred * inv_std * gamma.unsqueeze::<D>() + beta.unsqueeze::<D>()).cast(dtype)
}
