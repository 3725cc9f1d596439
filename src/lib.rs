#![doc = include_str!("../docs/crate.md")]
#![warn(missing_docs)]

/// The repository README's Rust examples, compiled as written (doc tests).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod adapter;
// Not part of the API (hidden, no semver promise): the benchmark's measurements, GPU timers
// and shader composition, shared with this repository's CLI, benchmark, tests and
// integrations.
#[doc(hidden)]
pub mod bench;
pub mod config;
pub mod context;
pub mod dtype;
pub mod error;
pub mod kernel;
mod platform;
pub mod reference;
#[doc(hidden)]
pub mod shaders;
#[doc(hidden)]
pub mod timing;

pub use adapter::AdapterChoice;
pub use config::{
    EpsMode, Gain, LayerNormConfig, PartialRms, Residual, RmsNormConfig, DEFAULT_EPS,
    DEFAULT_LAYER_NORM_EPS,
};
pub use context::{
    device_descriptor, recommended_features, BackwardInputs, GpuContext, NormGradients, Weights,
};
pub use dtype::{bf16, f16, DType, Element};
pub use error::{Error, Result};
pub use kernel::plan::{DeviceCaps, Plan};
pub use kernel::{
    BackwardBuffers, BufferRegion, KernelOptions, LayerNorm, LayerNormBackward, NormBackward,
    NormKernel, Reduction, RmsNorm, RmsNormBackward, RmsNormBuffers,
};
#[cfg(not(target_arch = "wasm32"))]
pub use platform::block_on;
/// The wgpu this crate is built on: devices, buffers and encoders passed to the low-level
/// API must come from this version.
pub use wgpu;
#[cfg(target_arch = "wasm32")]
pub mod web;
