//! The LayerNorm baseline against its f64 reference, on the same variants as RMSNorm.
#![cfg(not(target_arch = "wasm32"))] // Native GPU tests; tests/web.rs runs in the browser.

mod common;

use common::*;
use wgpu_rmsnorm::reference;
use wgpu_rmsnorm::{Gain, KernelOptions, LayerNorm, LayerNormConfig, Reduction, Weights};

fn check(
    y: &[f32],
    x: &[f32],
    config: &LayerNormConfig,
    g: Option<&[f32]>,
    b: Option<&[f32]>,
    what: &str,
) {
    assert_close(y, &reference::layer_norm(x, config, g, b).unwrap(), what);
}

/// Through the low-level API, with the given options.
fn run(
    gpu: &wgpu_rmsnorm::GpuContext,
    config: &LayerNormConfig,
    options: &KernelOptions,
    x: &[f32],
) -> Vec<f32> {
    let kernel = LayerNorm::new(gpu.device(), config, options).unwrap();
    run_made_kernel(gpu, &kernel, config.hidden, x, None, None)
}

#[test]
fn hidden_sizes_and_reductions() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    for reduction in reductions(gpu) {
        let options = KernelOptions::with_reduction(reduction);
        for n in [1u32, 2, 3, 4, 5, 33, 255, 256, 257, 1000, 1024, 4097, 65536] {
            let rows = if n > 5000 { 1 } else { 3 };
            let x = data(rows * n as usize, u64::from(n));
            let config = LayerNormConfig::new(n);
            let y = run(gpu, &config, &options, &x);
            check(&y, &x, &config, None, None, &format!("{reduction:?} n={n}"));
        }
    }
}

/// One row per invocation, split rows and read-once, forced (by default: CPU adapters' rows
/// of at most 256 elements; few long rows; GPUs' rows of up to 32 f32 per invocation), with
/// gain and bias, a row of large mean and small spread and a constant row; split rows also
/// with a last piece that is empty (9 elements in 8 pieces).
#[test]
fn one_row_per_invocation_split_rows_and_read_once() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    let per_invocation = KernelOptions::with_reduction(Reduction::PerInvocation);
    let split = KernelOptions {
        split_rows: Some(true),
        ..KernelOptions::default()
    };
    // 64 invocations keep up to 128 x 64 vec4s: every shape below.
    let read_once = KernelOptions {
        read_once: Some(true),
        workgroup_size: Some(64),
        ..KernelOptions::default()
    };
    let shapes = [
        (1usize, 1u32),
        (9, 3),
        (17, 9),
        (5, 33),
        (13, 256),
        (7, 1000),
        (3, 4097),
    ];
    let long = [(1usize, 65536u32), (2, 100_003)];
    for (label, options, shapes) in [
        ("PerInvocation", per_invocation, &shapes[..]),
        ("split", split, &shapes[..]),
        ("split", split, &long[..]),
        ("read-once", read_once, &shapes[..]),
    ] {
        for &(rows, n) in shapes {
            let mut x = data(rows * n as usize, u64::from(n) + 5);
            let len = n as usize;
            x[..len].iter_mut().for_each(|v| *v = 1000.0 + *v * 1e-2);
            if rows > 1 {
                x[len..2 * len].fill(-3.25);
            }
            let g = data(len, 6);
            let b = data(len, 7);
            let config = LayerNormConfig::new(n)
                .with_gain(Gain::Scale)
                .with_bias(true);
            let kernel = LayerNorm::new(gpu.device(), &config, &options).unwrap();
            let probe = storage_buffer(gpu, &x);
            let buffers = wgpu_rmsnorm::RmsNormBuffers::new((&probe).into(), (&probe).into());
            let variant = kernel.variant_name(&buffers, rows as u32);
            // A row of one element has nothing to split.
            assert!(
                variant.contains(label) || n == 1,
                "{variant} is not {label}"
            );
            let y = run_made_kernel(gpu, &kernel, n, &x, Some(&g), Some(&b));
            check(
                &y,
                &x,
                &config,
                Some(&g),
                Some(&b),
                &format!("{variant}: {rows} x {n}"),
            );
        }
    }
    // Few long rows split by default, as RMSNorm's.
    let config = LayerNormConfig::new(262_147);
    let kernel = LayerNorm::new(gpu.device(), &config, &KernelOptions::default()).unwrap();
    let x = data(2 * 262_147, 8);
    let probe = storage_buffer(gpu, &x);
    let buffers = wgpu_rmsnorm::RmsNormBuffers::new((&probe).into(), (&probe).into());
    assert!(kernel.splits_rows(&buffers, 2));
    let y = run_made_kernel(gpu, &kernel, config.hidden, &x, None, None);
    check(&y, &x, &config, None, None, "2 x 262147 by default");
}

#[test]
fn gain_bias_eps_and_hard_rows() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    let n = 1000u32;
    let g = data(n as usize, 1);
    let b = data(n as usize, 2);
    // Row 1: a large mean with a small spread, where E[x^2] - E[x]^2 would cancel.
    // Row 2: constant (zero variance).
    let mut x = data(3 * n as usize, 3);
    for v in &mut x[n as usize..2 * n as usize] {
        *v = 1000.0 + *v * 1e-2;
    }
    x[2 * n as usize..].fill(7.5);
    for eps in [0.0f32, 1e-5] {
        for gain in [Gain::None, Gain::Scale, Gain::UnitOffset] {
            for bias in [false, true] {
                let config = LayerNormConfig::new(n)
                    .with_eps(eps)
                    .with_gain(gain)
                    .with_bias(bias);
                let weights = Weights {
                    gain: (gain != Gain::None).then_some(&g[..]),
                    bias: bias.then_some(&b[..]),
                };
                let y = no_gpu_errors(gpu.device(), || {
                    gpu.layer_norm_blocking(&x, &config, weights)
                })
                .unwrap();
                check(
                    &y,
                    &x,
                    &config,
                    weights.gain,
                    weights.bias,
                    &format!("eps={eps} {gain:?} bias={bias}"),
                );
                let constant_row = &y[2 * n as usize..];
                assert!(
                    constant_row.iter().all(|v| v.is_finite()),
                    "constant row, eps={eps}"
                );
            }
        }
    }
}

#[test]
fn bad_input_is_refused_like_rmsnorm() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    let e = gpu
        .layer_norm_blocking(&[1.0; 7], &LayerNormConfig::new(2), Weights::NONE)
        .unwrap_err();
    assert!(
        matches!(e, wgpu_rmsnorm::Error::InputNotMultipleOfHidden { .. }),
        "{e}"
    );
    let e = gpu
        .layer_norm_blocking(
            &[1.0; 8],
            &LayerNormConfig::new(2).with_eps(-1.0),
            Weights::NONE,
        )
        .unwrap_err();
    assert!(matches!(e, wgpu_rmsnorm::Error::InvalidEps { .. }), "{e}");
    let e = LayerNorm::new(
        gpu.device(),
        &LayerNormConfig::new(0),
        &KernelOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, wgpu_rmsnorm::Error::ZeroHiddenSize), "{e}");
    let e = gpu
        .layer_norm_blocking(
            &[1.0; 8],
            &LayerNormConfig::new(2).with_gain(Gain::Scale),
            Weights::NONE,
        )
        .unwrap_err();
    assert!(
        matches!(e, wgpu_rmsnorm::Error::MissingWeight { .. }),
        "{e}"
    );
}
