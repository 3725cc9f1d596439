//! The LayerNorm baseline next to RMSNorm on the same rows, with gain and bias, through the
//! high-level API; checked against the f64 reference, with the time of each call.
//!
//!     cargo run --example layer_norm

#[cfg(not(target_arch = "wasm32"))]
use wgpu_rmsnorm::reference::{self, F32_ABS_TOL, F32_REL_TOL};
#[cfg(not(target_arch = "wasm32"))]
use wgpu_rmsnorm::{Gain, GpuContext, LayerNormConfig, RmsNormConfig, Weights};

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
    // Timestamp queries around each call, where the device has them.
    let gpu = GpuContext::new_blocking()?.with_call_timing(true);
    let (rows, hidden) = (1024usize, 1024u32);
    let x = reference::sample_data(rows * hidden as usize, 5, 4.0);
    let gain = reference::sample_data(hidden as usize, 6, 1.0);
    let bias = reference::sample_data(hidden as usize, 7, 0.5);
    let weights = Weights {
        gain: Some(&gain),
        bias: Some(&bias),
    };

    let layer = LayerNormConfig::new(hidden)
        .with_gain(Gain::Scale)
        .with_bias(true);
    let y = gpu.layer_norm_blocking(&x, &layer, weights)?;
    let layer_time = gpu.last_gpu_seconds();
    let expected = reference::layer_norm(&x, &layer, Some(&gain), Some(&bias))?;
    report("LayerNorm", &y, &expected, layer_time)?;

    let rms = RmsNormConfig::new(hidden)
        .with_gain(Gain::Scale)
        .with_bias(true);
    let y = gpu.rms_norm_blocking(&x, &rms, weights)?;
    let rms_time = gpu.last_gpu_seconds();
    let expected = reference::rms_norm(&x, &rms, Some(&gain), Some(&bias))?;
    report("RMSNorm", &y, &expected, rms_time)?;
    Ok(())
}

#[cfg(not(target_arch = "wasm32"))]
fn report(name: &str, y: &[f32], expected: &[f64], seconds: Option<f64>) -> Result<(), String> {
    let stats = reference::compare(y, expected, F32_ABS_TOL, F32_REL_TOL);
    let time = seconds.map_or("untimed (no timestamp queries)".to_string(), |s| {
        format!("{:.3} ms on the GPU", s * 1e3)
    });
    println!("{name}: max rel err {:.2e}, {time}", stats.max_rel);
    match stats.failures {
        0 => Ok(()),
        n => Err(format!("{name}: {n} values outside the tolerance")),
    }
}

// The examples are native programs; in the browser the npm package is the way in.
#[cfg(target_arch = "wasm32")]
fn main() {}
