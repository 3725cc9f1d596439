//! Every native test that needs no repository files, in one binary: `cargo xtask bundle`
//! builds it in release for machines without Rust (each test binary links wgpu statically,
//! so one binary keeps the bundle small). Not built by `cargo test` (`test = false` in
//! Cargo.toml): there each file is its own binary.
//!
//! Each module has its own `common` (so its own device), as in its own binary.
#![cfg(not(target_arch = "wasm32"))]

#[path = "adversarial.rs"]
mod adversarial;
#[path = "backward.rs"]
mod backward;
#[path = "buffers.rs"]
mod buffers;
#[path = "contract.rs"]
mod contract;
#[path = "driver_workarounds.rs"]
mod driver_workarounds;
#[path = "errors.rs"]
mod errors;
#[path = "formats.rs"]
mod formats;
#[path = "forward.rs"]
mod forward;
#[path = "layernorm.rs"]
mod layernorm;
#[path = "plan.rs"]
mod plan;
#[path = "shaders.rs"]
mod shader_validation;

/// What `src/shader_check.rs` (included by `shader_validation`) names `crate::shaders`.
mod shaders {
    pub use wgpu_rmsnorm::shaders::*;
}
