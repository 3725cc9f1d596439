//! RMSNorm, pRMSNorm and LayerNorm for [burn](https://burn.dev), running
//! [wgpu-rmsnorm](https://crates.io/crates/wgpu-rmsnorm)'s WGSL kernels on burn's wgpu
//! backend: the forward (which saves each row's statistics) and the backward (dx, and dgain
//! and dbias summed without atomics) are one kernel each on burn's own tensor buffers, with
//! burn's fusion and autodiff. On any other backend, or for tensors the kernels do not take
//! (not f32, or a compiler other than WGSL), the same modules compute the same formula with
//! burn's tensor ops. The crate's README (its example doc-tested below) has the details.

/// The README's example, compiled as written (a doc test).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod cube;
mod device;
mod modules;
mod ops;
mod spec;

pub use burn::backend::wgpu::WgpuBackend;
pub use device::{adapter_name, backend_from_env, caps_of, wgpu_device};
pub use modules::{
    reference_layer_norm, reference_rms_norm, LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig,
};
pub use ops::{NormBackend, NormKernels};
pub use spec::NormSpec;
