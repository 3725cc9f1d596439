//! The high-level API: slices in, `Vec` out, on a device the crate picks (a GPU, else a
//! software adapter; `WGPU_BACKEND` chooses the backend). Checks each result against the
//! crate's f64 reference and fails if one is off.
//!
//!     cargo run --example high_level

#[cfg(not(target_arch = "wasm32"))]
use wgpu_rmsnorm::reference::{self, F32_ABS_TOL, F32_REL_TOL};
#[cfg(not(target_arch = "wasm32"))]
use wgpu_rmsnorm::{EpsMode, Gain, GpuContext, PartialRms, RmsNormConfig, Weights};

/// Errors reported by their message (a `main` returning `Result` would print their Debug form).
#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn run() -> Result<(), Box<dyn std::error::Error>> {
    let gpu = GpuContext::new_blocking()?;
    println!(
        "adapter: {} ({:?})",
        gpu.adapter_info().name,
        gpu.adapter_info().backend
    );

    let (rows, hidden) = (64usize, 4096u32);
    let x = reference::sample_data(rows * hidden as usize, 1, 3.0);
    let gain = reference::sample_data(hidden as usize, 2, 1.0);
    let weights = Weights {
        gain: Some(&gain),
        bias: None,
    };

    // RMSNorm with a gain, eps = 1e-6 inside the root.
    let config = RmsNormConfig::new(hidden).with_gain(Gain::Scale);
    let y = gpu.rms_norm_blocking(&x, &config, weights)?;
    check(
        "RMSNorm",
        &y,
        &reference::rms_norm(&x, &config, Some(&gain), None)?,
    )?;

    // pRMSNorm: the RMS from the first 6.25% of each row, eps added to the RMS.
    let partial = config
        .with_partial(PartialRms::Fraction(0.0625))
        .with_eps_mode(EpsMode::AddedToRms)
        .with_eps(1e-8);
    let yp = gpu.rms_norm_blocking(&x, &partial, weights)?;
    check(
        "pRMSNorm",
        &yp,
        &reference::rms_norm(&x, &partial, Some(&gain), None)?,
    )?;
    Ok(())
}

/// Fails unless every element is within the f32 tolerance of the f64 reference.
#[cfg(not(target_arch = "wasm32"))]
fn check(name: &str, y: &[f32], expected: &[f64]) -> Result<(), String> {
    let stats = reference::compare(y, expected, F32_ABS_TOL, F32_REL_TOL);
    println!(
        "{name}: {} values, max abs err {:.2e}, max rel err {:.2e}",
        y.len(),
        stats.max_abs,
        stats.max_rel
    );
    match stats.failures {
        0 => Ok(()),
        n => Err(format!("{name}: {n} values outside the tolerance")),
    }
}

// The examples are native programs; in the browser the npm package is the way in.
#[cfg(target_arch = "wasm32")]
fn main() {}
