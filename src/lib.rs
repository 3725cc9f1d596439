#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod adapter;
pub mod bench;
pub mod config;
pub mod context;
pub mod dtype;
pub mod error;
pub mod kernel;
mod platform;
pub mod reference;
pub mod shaders;
pub mod timing;

pub use adapter::AdapterChoice;
pub use config::{
    EpsMode, Gain, LayerNormConfig, PartialRms, Residual, RmsNormConfig, DEFAULT_EPS,
    DEFAULT_LAYER_NORM_EPS,
};
pub use context::{BackwardInputs, GpuContext, NormGradients, Weights};
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
