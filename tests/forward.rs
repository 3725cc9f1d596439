//! RMSNorm and pRMSNorm against the f64 reference on the GPU, every reduction.
#![cfg(not(target_arch = "wasm32"))] // Native GPU tests; tests/web.rs runs in the browser.

mod common;

use common::*;
use wgpu_rmsnorm::{EpsMode, Gain, KernelOptions, PartialRms, Reduction, RmsNormConfig, Weights};

const HIDDEN_SIZES: [u32; 22] = [
    1, 2, 3, 4, 5, 31, 32, 33, 127, 255, 256, 257, 1000, 1023, 1024, 1025, 4095, 4096, 4097, 8192,
    12289, 65536,
];

#[test]
fn every_hidden_size_and_reduction_matches_the_reference() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    for reduction in reductions(gpu) {
        let options = KernelOptions::with_reduction(reduction);
        for (i, n) in HIDDEN_SIZES.into_iter().enumerate() {
            let rows = if n <= 4097 { 3 } else { 1 };
            let x = data(rows * n as usize, i as u64);
            let config = RmsNormConfig::new(n);
            let y = run_kernel(gpu, &config, &options, &x, None, None);
            assert_matches_reference(&y, &x, &config, None, None, &format!("{reduction:?} n={n}"));
        }
    }
}

/// Rows long enough that one invocation per 8 elements would loop past llvmpipe's limit of
/// 65535 iterations (it then stops the loops silently): the default variant must not.
#[test]
fn very_long_rows_with_the_default_variant() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    for (rows, n) in [(1usize, 1_048_576u32), (2, 262_147), (1, 1_048_572)] {
        let x = data(rows * n as usize, u64::from(n));
        for partial in [PartialRms::Full, PartialRms::Fraction(0.75)] {
            let config = RmsNormConfig::new(n).with_partial(partial);
            let y = gpu.rms_norm_blocking(&x, &config, Weights::NONE).unwrap();
            assert_matches_reference(&y, &x, &config, None, None, &format!("{rows} x {n}"));
        }
    }
    // The rescaled path too (four passes over the row).
    let n = 1_048_576u32;
    let x: Vec<f32> = data(n as usize, 3).iter().map(|v| v * 1e25).collect();
    let config = RmsNormConfig::new(n);
    let y = gpu.rms_norm_blocking(&x, &config, Weights::NONE).unwrap();
    assert_matches_reference(&y, &x, &config, None, None, "1 x 1048576 of ~1e25");
}

#[test]
fn row_counts_through_the_high_level_api() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    for rows in [1usize, 3, 64, 1000] {
        for n in [5u32, 257, 1024] {
            let x = data(rows * n as usize, rows as u64 + u64::from(n));
            let config = RmsNormConfig::new(n);
            let y = gpu.rms_norm_blocking(&x, &config, Weights::NONE).unwrap();
            assert_matches_reference(&y, &x, &config, None, None, &format!("{rows} x {n}"));
            if gpu
                .device()
                .features()
                .contains(wgpu::Features::TIMESTAMP_QUERY)
            {
                let seconds = gpu.last_gpu_seconds().expect("timed call");
                assert!(seconds > 0.0 && seconds < 10.0, "{seconds} s");
            }
        }
    }
}

#[test]
fn more_rows_than_workgroups_in_one_dispatch() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    let max = gpu.device().limits().max_compute_workgroups_per_dimension as usize;
    let rows = max + 4465;
    for n in [3u32, 4] {
        let x = data(rows * n as usize, 7);
        let config = RmsNormConfig::new(n).with_partial(PartialRms::Count(2));
        let y = gpu.rms_norm_blocking(&x, &config, Weights::NONE).unwrap();
        assert_matches_reference(&y, &x, &config, None, None, &format!("{rows} x {n}"));
    }
}

#[test]
fn partial_rms_fractions_and_counts() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    for reduction in reductions(gpu) {
        let options = KernelOptions::with_reduction(reduction);
        for n in [5u32, 1000, 4096, 4097] {
            let x = data(4 * n as usize, u64::from(n));
            let full = run_kernel(gpu, &RmsNormConfig::new(n), &options, &x, None, None);
            let p_one = RmsNormConfig::new(n).with_partial(PartialRms::Fraction(1.0));
            let y = run_kernel(gpu, &p_one, &options, &x, None, None);
            assert_eq!(bits(&y), bits(&full), "p = 1 must be RMSNorm bit for bit");
            let k_n = RmsNormConfig::new(n).with_partial(PartialRms::Count(n));
            let y = run_kernel(gpu, &k_n, &options, &x, None, None);
            assert_eq!(bits(&y), bits(&full), "k = n must be RMSNorm bit for bit");

            let partials = [
                PartialRms::Fraction(1.0 / 16.0),
                PartialRms::Fraction(0.5),
                PartialRms::Fraction(1e-9),
                PartialRms::Count(1),
                PartialRms::Count((n / 3).max(1)),
            ];
            for partial in partials {
                let config = RmsNormConfig::new(n).with_partial(partial);
                let y = run_kernel(gpu, &config, &options, &x, None, None);
                let what = format!("{reduction:?} n={n} {partial:?}");
                assert_matches_reference(&y, &x, &config, None, None, &what);
            }
        }
    }
    let tiny = RmsNormConfig::new(4096).with_partial(PartialRms::Fraction(1e-9));
    assert_eq!(tiny.rms_count(), Ok(1));
}

#[test]
fn eps_modes_gain_and_bias() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    for n in [257u32, 1024] {
        let x = data(5 * n as usize, 11);
        let g = data(n as usize, 12);
        let b = data(n as usize, 13);
        for eps_mode in [EpsMode::InsideRoot, EpsMode::AddedToRms] {
            for eps in [0.0, 1e-8, 1e-5, 0.5] {
                for gain in [Gain::None, Gain::Scale, Gain::UnitOffset] {
                    for bias in [false, true] {
                        let config = RmsNormConfig::new(n)
                            .with_eps(eps)
                            .with_eps_mode(eps_mode)
                            .with_gain(gain)
                            .with_bias(bias)
                            .with_partial(PartialRms::Fraction(0.25));
                        let weights = Weights {
                            gain: (gain != Gain::None).then_some(g.as_slice()),
                            bias: bias.then_some(b.as_slice()),
                        };
                        let y = gpu.rms_norm_blocking(&x, &config, weights).unwrap();
                        assert_matches_reference(
                            &y,
                            &x,
                            &config,
                            weights.gain,
                            weights.bias,
                            &format!("n={n} {eps_mode:?} eps={eps} {gain:?} bias={bias}"),
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn rescaling_invariance_and_no_shift_invariance() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    for reduction in reductions(gpu) {
        let options = KernelOptions::with_reduction(reduction);
        for n in [33u32, 4096] {
            let config = RmsNormConfig::new(n).with_eps(0.0);
            let x = data(2 * n as usize, 21);
            let y = run_kernel(gpu, &config, &options, &x, None, None);
            // Powers of two: x * 2^j is exact, so any difference is the kernel's.
            for j in [-40, -3, 1, 7, 40] {
                let scaled: Vec<f32> = x.iter().map(|v| v * 2f32.powi(j)).collect();
                let ys = run_kernel(gpu, &config, &options, &scaled, None, None);
                let worst = ulp_distance(&y, &ys);
                assert!(worst <= 4, "{reduction:?} n={n} 2^{j}: {worst} ulp apart");
            }
            // A positive factor that is not a power of two: equal within f32 rounding.
            let scaled: Vec<f32> = x.iter().map(|v| v * 3.7).collect();
            let ys = run_kernel(gpu, &config, &options, &scaled, None, None);
            let max_diff = y
                .iter()
                .zip(&ys)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                max_diff < 1e-5,
                "{reduction:?} n={n} x3.7: differs by {max_diff}"
            );
            // Shifting changes the result.
            let shifted: Vec<f32> = x.iter().map(|v| v + 1.5).collect();
            let yt = run_kernel(gpu, &config, &options, &shifted, None, None);
            let max_diff = y
                .iter()
                .zip(&yt)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                max_diff > 0.1,
                "{reduction:?} n={n}: shift changed only {max_diff}"
            );
        }
    }
}

#[test]
fn zero_rows_give_zero_or_bias_never_nan() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    let n = 1000u32;
    let b = data(n as usize, 31);
    let g = data(n as usize, 32);
    let mut x = data(3 * n as usize, 33);
    x[n as usize..2 * n as usize].fill(0.0);
    for reduction in reductions(gpu) {
        let options = KernelOptions::with_reduction(reduction);
        for eps_mode in [EpsMode::InsideRoot, EpsMode::AddedToRms] {
            for eps in [1e-6f32, 0.0] {
                let config = RmsNormConfig::new(n).with_eps(eps).with_eps_mode(eps_mode);
                let y = run_kernel(gpu, &config, &options, &x, None, None);
                let zero_row = &y[n as usize..2 * n as usize];
                assert!(
                    zero_row.iter().all(|&v| v == 0.0),
                    "{reduction:?} eps={eps}"
                );
                assert_matches_reference(&y, &x, &config, None, None, "zero row");

                let affine = config.with_gain(Gain::Scale).with_bias(true);
                let y = run_kernel(gpu, &affine, &options, &x, Some(&g), Some(&b));
                assert_eq!(bits(&y[n as usize..2 * n as usize]), bits(&b));
            }
        }
        // pRMSNorm whose first k elements are zero but the rest are not: with eps = 0 the
        // documented scale is 0; with eps > 0 the elements are scaled by 1/sqrt(eps).
        let mut x = data(n as usize, 34);
        x[..10].fill(0.0);
        for eps in [0.0f32, 1e-4] {
            let config = RmsNormConfig::new(n)
                .with_eps(eps)
                .with_partial(PartialRms::Count(10));
            let y = run_kernel(gpu, &config, &options, &x, None, None);
            assert!(y.iter().all(|v| v.is_finite()), "{reduction:?} eps={eps}");
            assert_matches_reference(&y, &x, &config, None, None, "zero prefix");
        }
    }
}

#[test]
fn extreme_magnitudes_stay_finite_and_correct() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    let n = 1027u32;
    let base = data(n as usize, 41);
    for reduction in reductions(gpu) {
        let options = KernelOptions::with_reduction(reduction);
        for eps_mode in [EpsMode::InsideRoot, EpsMode::AddedToRms] {
            for eps in [0.0f32, 1e-6] {
                let config = RmsNormConfig::new(n).with_eps(eps).with_eps_mode(eps_mode);
                for scale in [1e20f32, 1e30, 1e37, 1e-20, 1e-30, 1e-36] {
                    let x: Vec<f32> = base.iter().map(|v| v * scale).collect();
                    let y = run_kernel(gpu, &config, &options, &x, None, None);
                    let what = format!("{reduction:?} {eps_mode:?} eps={eps} scale={scale:e}");
                    assert_matches_reference(&y, &x, &config, None, None, &what);
                }
                // A constant row of 1e20: every output is exactly representable as 1.
                let x = vec![1e20f32; n as usize];
                let y = run_kernel(gpu, &config, &options, &x, None, None);
                assert!(
                    y.iter().all(|&v| (v - 1.0).abs() < 1e-6),
                    "row of 1e20: {}",
                    y[0]
                );
                // Near f32::MAX.
                let x: Vec<f32> = base.iter().map(|v| v / 6.0 * 3.0e38).collect();
                let y = run_kernel(gpu, &config, &options, &x, None, None);
                assert_matches_reference(&y, &x, &config, None, None, "near f32::MAX");
            }
        }
    }
}

/// Split rows whose pieces differ in magnitude: a piece's plain sum of squares is used where
/// it is in range, and pieces out of range (huge, tiny, zero) are summed again scaled by
/// their own power of two; the row combines them at the largest exponent.
#[test]
fn split_pieces_of_every_magnitude_combine() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    let n = 20000u32;
    let base = data(n as usize, 43);
    let piece = 2500;
    // Per row, the scale of each eighth of it.
    let rows: [[f32; 8]; 5] = [
        [1.0, 1e25, 0.0, 1e-30, 1.0, 1.0, 1.0, 1.0],
        [1e-30, 1e-30, 1e-36, 0.0, 1e-25, 1e-30, 1e-30, 1e-30],
        [1e30, 1e37, 1e30, 1e30, 1.0, 1e-30, 0.0, 1e30],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0],
        [1.0; 8],
    ];
    let x: Vec<f32> = rows
        .iter()
        .flat_map(|scales| base.iter().enumerate().map(|(i, v)| v * scales[i / piece]))
        .collect();
    for reduction in reductions(gpu) {
        let options = KernelOptions {
            reduction,
            split_rows: Some(true),
            ..KernelOptions::default()
        };
        for partial in [PartialRms::Full, PartialRms::Fraction(0.3)] {
            let config = RmsNormConfig::new(n).with_partial(partial);
            let y = run_kernel(gpu, &config, &options, &x, None, None);
            let what = format!("{reduction:?} {partial:?}");
            assert_matches_reference(&y, &x, &config, None, None, &what);
        }
    }
}

#[test]
fn explicit_workgroup_sizes() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    let n = 1000u32;
    let x = data(7 * n as usize, 51);
    let config = RmsNormConfig::new(n).with_partial(PartialRms::Fraction(0.3));
    for reduction in reductions(gpu) {
        if reduction == Reduction::SingleSubgroup {
            continue;
        }
        for size in [1u32, 2, 32, 64, 256] {
            let options = KernelOptions {
                reduction,
                workgroup_size: Some(size),
                ..KernelOptions::default()
            };
            let y = run_kernel(gpu, &config, &options, &x, None, None);
            assert_matches_reference(
                &y,
                &x,
                &config,
                None,
                None,
                &format!("{reduction:?} {size}"),
            );
        }
    }
}

#[test]
fn empty_batch_is_a_no_op() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    let y = gpu
        .rms_norm_blocking::<f32, f32>(&[], &RmsNormConfig::new(64), Weights::NONE)
        .unwrap();
    assert!(y.is_empty());
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

fn ulp_distance(a: &[f32], b: &[f32]) -> u32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let order = |f: f32| {
                let i = f.to_bits() as i32;
                if i < 0 {
                    i32::MIN - i
                } else {
                    i
                }
            };
            order(*x).abs_diff(order(*y))
        })
        .max()
        .unwrap_or(0)
}

/// The plan's rule (README, "Launch plan") on this device: the kernels run what
/// `Plan::new` decides for its capabilities, and the rule's main cases hold.
#[test]
fn variant_rule() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    let device = gpu.device();
    let caps = wgpu_rmsnorm::DeviceCaps::from_device(device);
    let kernel = |hidden: u32, cpu_adapter: Option<bool>| {
        let options = KernelOptions {
            cpu_adapter,
            ..KernelOptions::default()
        };
        wgpu_rmsnorm::RmsNorm::new(device, &RmsNormConfig::new(hidden), &options).unwrap()
    };
    let choose = |hidden, cpu| {
        let k = kernel(hidden, cpu);
        (k.reduction(), k.workgroup_size())
    };
    // CPU adapters: calls of at least 32 rows of at most 256 elements (4096 on the tree) one
    // row per invocation, a SIMD width's rows (at least 8) per workgroup; fewer rows, longer
    // rows and GPUs never.
    let probe = storage_buffer(gpu, &vec![0.0; 1 << 16]);
    let probe_buffers = wgpu_rmsnorm::RmsNormBuffers::new((&probe).into(), (&probe).into());
    let variant = |hidden, cpu, rows| kernel(hidden, cpu).variant_name(&probe_buffers, rows);
    let tree = choose(4096, Some(true)).0 == Reduction::WorkgroupTree;
    let longest = if tree { 4096 } else { 256 };
    assert!(variant(longest, Some(true), 32).starts_with("PerInvocation wg="));
    assert!(variant(100, Some(true), 64).starts_with("PerInvocation wg="));
    assert!(!variant(longest, Some(true), 31).contains("PerInvocation"));
    assert!(!variant(longest + 1, Some(true), 64).contains("PerInvocation"));
    assert!(!variant(128, Some(false), 64).contains("PerInvocation"));
    assert_ne!(choose(128, Some(true)).0, Reduction::PerInvocation);
    match caps.fixed_subgroup_width() {
        // lavapipe: one subgroup and no barrier on the CPU adapter rule.
        Some(width) => assert_eq!(choose(4096, Some(true)), (Reduction::SingleSubgroup, width)),
        None if caps.subgroups => assert_eq!(choose(4096, Some(true)).0, Reduction::Subgroups),
        None => assert_eq!(choose(4096, Some(true)).0, Reduction::WorkgroupTree),
    }
    // Treated as a GPU: never a single subgroup, about 16 elements per invocation from 64
    // to 256 invocations, and rows of up to 32 f32 per invocation read once.
    let gpu_reduction = if caps.subgroups {
        Reduction::Subgroups
    } else {
        Reduction::WorkgroupTree
    };
    let buffer = |len: usize| storage_buffer(gpu, &vec![0.0; len]);
    let (x, y) = (buffer(8 << 20), buffer(8 << 20));
    let buffers = wgpu_rmsnorm::RmsNormBuffers::new((&x).into(), (&y).into());
    assert_eq!(choose(100, Some(false)), (gpu_reduction, 64));
    assert_eq!(
        kernel(2048, Some(false)).variant_name(&buffers, 64),
        format!("{gpu_reduction:?} wg=128 vec4 read-once")
    );
    assert_eq!(
        kernel(16384, Some(false)).variant_name(&buffers, 64),
        format!("{gpu_reduction:?} wg=512 vec4 read-once")
    );
    assert!(!kernel(4096, Some(true))
        .variant_name(&buffers, 64)
        .contains("read-once"));
    // Few long rows split across workgroups by default; many rows or short ones do not.
    let splits = |hidden: u32, rows: u32| kernel(hidden, None).splits_rows(&buffers, rows);
    assert!(splits(1 << 20, 1));
    assert!(splits(262144, 8));
    assert!(!splits(262144, 33));
    assert!(!splits(4096, 1));
    // And the small-workgroup tree is correct.
    let tree = KernelOptions {
        reduction: Reduction::WorkgroupTree,
        cpu_adapter: Some(true),
        ..KernelOptions::default()
    };
    let x = data(9 * 1000, 77);
    let config = RmsNormConfig::new(1000).with_partial(PartialRms::Fraction(0.2));
    let y = run_kernel(gpu, &config, &tree, &x, None, None);
    assert_matches_reference(&y, &x, &config, None, None, "tree on a CPU adapter");
}

/// A forced variant against the reference: every reduction, the given shapes, RMSNorm and
/// pRMSNorm, extreme and zero rows on `extremes` (rows, n), and gain with bias. `label`
/// checks that the variant really ran (`RmsNorm::variant_name`).
fn check_variant(
    options: impl Fn(Reduction) -> KernelOptions,
    shapes: &[(usize, u32)],
    extremes: (usize, u32),
    label: &str,
) {
    let Some(turn) = gpu() else { return };
    check_variant_with(&turn, &reductions(&turn), options, shapes, extremes, label);
}

/// [`check_variant`] with the given reductions.
fn check_variant_with(
    gpu: &wgpu_rmsnorm::GpuContext,
    reductions: &[Reduction],
    options: impl Fn(Reduction) -> KernelOptions,
    shapes: &[(usize, u32)],
    extremes: (usize, u32),
    label: &str,
) {
    for &reduction in reductions {
        let options = options(reduction);
        let run = |config: &RmsNormConfig, x: &[f32], g: Option<&[f32]>, b: Option<&[f32]>| {
            let kernel = wgpu_rmsnorm::RmsNorm::new(gpu.device(), config, &options).unwrap();
            let probe = storage_buffer(gpu, x);
            let buffers = wgpu_rmsnorm::RmsNormBuffers::new((&probe).into(), (&probe).into());
            let rows = (x.len() / config.hidden as usize) as u32;
            let variant = kernel.variant_name(&buffers, rows);
            assert!(variant.contains(label), "{variant} is not {label}");
            let y = run_kernel(gpu, config, &options, x, g, b);
            let what = format!("{variant} {rows} x {} {config:?}", config.hidden);
            assert_matches_reference(&y, x, config, g, b, &what);
        };
        for &(rows, n) in shapes {
            let x = data(rows * n as usize, u64::from(n) + 7);
            let partials = [
                PartialRms::Full,
                PartialRms::Fraction(1.0 / 16.0),
                PartialRms::Count(1),
            ];
            for partial in partials {
                run(&RmsNormConfig::new(n).with_partial(partial), &x, None, None);
            }
        }
        // Extreme rows take the rescaled path; zero rows stay finite.
        let (rows, n) = extremes;
        let x = data(rows * n as usize, 8);
        for scale in [1e25f32, 1e-25, 0.0] {
            let xs: Vec<f32> = x.iter().map(|v| v * scale).collect();
            for eps in [0.0f32, 1e-6] {
                run(&RmsNormConfig::new(n).with_eps(eps), &xs, None, None);
            }
        }
        let x = data(rows * n as usize, 9);
        let g = data(n as usize, 10);
        let b = data(n as usize, 11);
        let config = RmsNormConfig::new(n)
            .with_gain(Gain::UnitOffset)
            .with_bias(true);
        run(&config, &x, Some(&g), Some(&b));
    }
}

/// Rows split across workgroups (forced on every shape here; by default for few long rows).
#[test]
fn split_rows_match_the_reference() {
    check_variant(
        |reduction| KernelOptions {
            reduction,
            split_rows: Some(true),
            ..KernelOptions::default()
        },
        &[(1, 5), (3, 33), (2, 1000), (4, 4096), (2, 4097), (1, 65536)],
        (2, 3000),
        "split",
    );
}

/// Reading x once (forced here; by default on GPUs for rows up to 32 f32 per invocation).
#[test]
fn read_once_matches_the_reference() {
    check_variant(
        |reduction| KernelOptions {
            reduction,
            read_once: Some(true),
            ..KernelOptions::default()
        },
        // At most 128 loads per invocation even with a single subgroup of 8 (scalar loads
        // are planned too, for unaligned offsets).
        &[(5, 3), (3, 1000), (3, 1024), (2, 1023)],
        (3, 1000),
        "read-once",
    );
}

/// One row per invocation (forced here; by default on CPU adapters for rows of at most 256
/// elements): rows of every length class, as many rows as a workgroup's invocations and not,
/// one workgroup looping over all of them, and offsets that rule out vec4.
#[test]
fn one_row_per_invocation_matches_the_reference() {
    let Some(turn) = gpu() else { return };
    for max_workgroups in [None, Some(1), Some(3)] {
        check_variant_with(
            &turn,
            &[Reduction::PerInvocation],
            |reduction| KernelOptions {
                reduction,
                max_workgroups,
                ..KernelOptions::default()
            },
            &[
                (1, 1),
                (9, 3),
                (17, 33),
                (100, 128),
                (13, 256),
                (7, 1000),
                (3, 4097),
            ],
            (17, 130),
            "PerInvocation",
        );
    }
}

/// Fewer workgroups than rows, each looping over several rows (the default on CPU adapters).
#[test]
fn capped_dispatches_loop_over_rows() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    for max_workgroups in [1u32, 7, 1024] {
        let options = KernelOptions {
            max_workgroups: Some(max_workgroups),
            ..KernelOptions::default()
        };
        for (rows, n) in [(3000usize, 5u32), (1000, 128), (300, 4096)] {
            let x = data(rows * n as usize, u64::from(n) + u64::from(max_workgroups));
            let config = RmsNormConfig::new(n).with_partial(PartialRms::Fraction(0.5));
            let y = run_kernel(gpu, &config, &options, &x, None, None);
            let what = format!("max_workgroups {max_workgroups}: {rows} x {n}");
            assert_matches_reference(&y, &x, &config, None, None, &what);
        }
    }
}

/// Forced small workgroups on rows near and past the iteration budget (llvmpipe silently
/// stops loops after 65535 iterations): each is either refused with a typed error or right.
#[test]
fn forced_small_workgroups_are_right_or_refused() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    let mut ran = 0;
    let mut refused = 0;
    for n in [65537u32, 262147] {
        let x = data(2 * n as usize, u64::from(n));
        let config = RmsNormConfig::new(n);
        for reduction in reductions(gpu) {
            for workgroup_size in [Some(1), Some(4), Some(8), None] {
                let options = KernelOptions {
                    reduction,
                    workgroup_size,
                    split_rows: Some(false),
                    ..KernelOptions::default()
                };
                match wgpu_rmsnorm::RmsNorm::new(gpu.device(), &config, &options) {
                    Ok(_) => {
                        let y = run_kernel(gpu, &config, &options, &x, None, None);
                        let what = format!("n={n} {options:?}");
                        assert_matches_reference(&y, &x, &config, None, None, &what);
                        ran += 1;
                    }
                    Err(e) => {
                        assert!(
                            matches!(
                                e,
                                wgpu_rmsnorm::Error::InvalidWorkgroupSize { .. }
                                    | wgpu_rmsnorm::Error::UnsupportedOption { .. }
                            ),
                            "{e:?}"
                        );
                        refused += 1;
                    }
                }
            }
        }
    }
    assert!(ran > 0 && refused > 0, "ran {ran}, refused {refused}");
}

/// Call timing is off unless asked for: an untimed context reports no GPU time, and the same
/// device timed does (where it has timestamp queries).
#[test]
fn call_timing_is_opt_in() {
    let Some(turn) = gpu() else { return };
    let untimed = wgpu_rmsnorm::GpuContext::from_device(
        turn.device().clone(),
        turn.queue().clone(),
        KernelOptions::default(),
    );
    let x = data(4 * 64, 80);
    let config = RmsNormConfig::new(64);
    let y = untimed
        .rms_norm_blocking(&x, &config, Weights::NONE)
        .unwrap();
    assert_matches_reference(&y, &x, &config, None, None, "untimed");
    assert!(!untimed.times_calls());
    assert_eq!(untimed.last_gpu_seconds(), None);
    let timed = untimed.with_call_timing(true);
    let y = timed.rms_norm_blocking(&x, &config, Weights::NONE).unwrap();
    assert_matches_reference(&y, &x, &config, None, None, "timed");
    let has_timestamps = timed
        .device()
        .features()
        .contains(wgpu::Features::TIMESTAMP_QUERY);
    assert_eq!(timed.times_calls(), has_timestamps);
    assert_eq!(timed.last_gpu_seconds().is_some(), has_timestamps);
}
