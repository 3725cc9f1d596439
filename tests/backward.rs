//! The backward kernels (dx, dgain, dbias of RMSNorm, pRMSNorm and LayerNorm) against the f64
//! reference, norm-wise (`reference::compare_normwise`): every shape class, gain form, eps
//! convention, reduction, element type and residual form, with statistics saved by the
//! forward and recomputed; rows of zeros and of extreme magnitude; bit-identical dgain and
//! dbias run to run; a finite-difference check of the GPU forward and backward together;
//! every mismatched buffer refused with a typed error.

#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::{f16_options, gpu, no_gpu_errors, reductions, Placed};
use wgpu_rmsnorm::kernel::plan::WideOffsets;
use wgpu_rmsnorm::kernel::NormKind;
use wgpu_rmsnorm::reference::{self, compare_normwise, Gradients, BACKWARD_TOL};
use wgpu_rmsnorm::{
    BackwardBuffers, BackwardInputs, DType, EpsMode, Error, Gain, GpuContext, KernelOptions,
    LayerNormConfig, NormBackward, NormKernel, PartialRms, Residual, RmsNormBuffers, RmsNormConfig,
    Weights,
};

/// Which normalization a case runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Which {
    Rms,
    Partial,
    Layer,
}

const ALL: [Which; 3] = [Which::Rms, Which::Partial, Which::Layer];

/// The data of one backward call, as values of their types (widened to f32).
struct Case {
    config: RmsNormConfig,
    which: Which,
    options: KernelOptions,
    rows: u32,
    x: Vec<f32>,
    r: Option<Vec<f32>>,
    dy: Vec<f32>,
    dsum: Option<Vec<f32>>,
    gain: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
    /// Element offset of every tensor in its buffer (16-bit rows then share words).
    offset: u64,
}

/// What the backward wrote.
struct Written {
    dx: Vec<f32>,
    dgain: Option<Vec<f32>>,
    dbias: Option<Vec<f32>>,
}

impl Case {
    /// Data for `config` of `which` on `rows` rows: x (and r) of amplitude 3, dy, the
    /// weights the config has, every value exact in the config's types.
    fn new(config: RmsNormConfig, which: Which, rows: u32, seed: u64) -> Self {
        let n = config.hidden as usize;
        let len = rows as usize * n;
        let act = |seed, amplitude| -> Vec<f32> {
            let values = reference::sample_data(len, seed, amplitude);
            values.into_iter().map(|v| config.dtype.round(v)).collect()
        };
        let weight = |seed| -> Vec<f32> {
            let values = reference::sample_data(n, seed, 2.0);
            values
                .into_iter()
                .map(|v| config.weight_dtype.round(v))
                .collect()
        };
        let config = match which {
            Which::Partial => config.with_partial(PartialRms::Fraction(0.25)),
            _ => config,
        };
        Self {
            which,
            options: KernelOptions::default(),
            rows,
            x: act(seed, 3.0),
            r: config.residual.is_some().then(|| act(seed + 1, 2.0)),
            dy: act(seed + 2, 1.0),
            dsum: config.residual.stores_sum().then(|| act(seed + 3, 1.0)),
            gain: (config.gain != Gain::None).then(|| weight(seed + 4)),
            bias: config.bias.then(|| weight(seed + 5)),
            offset: 0,
            config,
        }
    }

    /// The normalized input h, as the forward computes it.
    fn input(&self) -> Vec<f32> {
        match &self.r {
            Some(r) => reference::residual_sum(&self.x, r, self.config.dtype),
            None => self.x.clone(),
        }
    }

    fn layer_config(&self) -> LayerNormConfig {
        LayerNormConfig::from_rms_config(&self.config)
    }

    fn reference(&self) -> Gradients {
        let h = self.input();
        let gain = self.gain.as_deref();
        let dsum = self.dsum.as_deref();
        match self.which {
            Which::Layer => {
                reference::layer_norm_backward(&h, &self.dy, &self.layer_config(), gain, dsum)
            }
            _ => reference::rms_norm_backward(&h, &self.dy, &self.config, gain, dsum),
        }
        .expect("reference")
    }

    /// Runs the forward (saving statistics where the config does) then the backward.
    fn run(&self, gpu: &GpuContext) -> Written {
        match self.which {
            Which::Layer => self.run_as::<wgpu_rmsnorm::kernel::Layer>(gpu, &self.layer_config()),
            _ => self.run_as::<wgpu_rmsnorm::kernel::Rms>(gpu, &self.config),
        }
    }

    fn run_as<N: NormKind>(&self, gpu: &GpuContext, config: &N::Config) -> Written {
        let device = gpu.device();
        let (act, weights) = (self.config.dtype, self.config.weight_dtype);
        let place = |v: &[f32], dtype| Placed::new(gpu, v, dtype, self.offset);
        let zeros = |len: usize, dtype| place(&vec![0.0; len], dtype);
        let len = self.x.len();
        let n = self.config.hidden as usize;
        let x = place(&self.x, act);
        let r = self.r.as_deref().map(|r| place(r, act));
        let gain = self.gain.as_deref().map(|g| place(g, weights));
        let bias = self.bias.as_deref().map(|b| place(b, weights));
        let stores_sum = self.config.residual.stores_sum();
        // The forward's outputs: y, the stored sum (own buffer, or r in place), statistics.
        let y = zeros(len, act);
        let sum = (self.config.residual == Residual::AddStoreSum).then(|| zeros(len, act));
        let stats = Placed::new(gpu, &vec![0.0; self.rows as usize * 3], DType::F32, 1);
        let save = self.config.save_stats;
        let dy = place(&self.dy, act);
        let dsum = self.dsum.as_deref().map(|d| place(d, act));
        let dx = zeros(len, act);
        let dgain = gain.as_ref().map(|_| zeros(n, DType::F32));
        let dbias = bias.as_ref().map(|_| zeros(n, DType::F32));
        no_gpu_errors(device, || {
            let mut encoder = device.create_command_encoder(&Default::default());
            if save || stores_sum {
                let forward = NormKernel::<N>::new(device, config, &self.options).expect("forward");
                let buffers = RmsNormBuffers {
                    gain: gain.as_ref().map(Placed::region),
                    bias: bias.as_ref().map(Placed::region),
                    residual: r.as_ref().map(Placed::region),
                    sum: sum.as_ref().map(Placed::region),
                    stats: save.then(|| stats.region()),
                    ..RmsNormBuffers::new(x.region(), y.region())
                };
                forward
                    .encode(device, &mut encoder, &buffers, self.rows)
                    .expect("forward encode");
            }
            // Where the forward stored h, the backward's input is h (over r in place).
            let input = match (&sum, stores_sum) {
                (Some(sum), _) => sum.region(),
                (None, true) => r.as_ref().expect("r").region(),
                (None, false) => x.region(),
            };
            let backward = NormBackward::<N>::new(device, config, &self.options).expect("backward");
            let buffers = BackwardBuffers {
                residual: r.as_ref().filter(|_| !stores_sum).map(Placed::region),
                grad_sum: dsum.as_ref().map(Placed::region),
                gain: gain.as_ref().map(Placed::region),
                stats: save.then(|| stats.region()),
                grad_gain: dgain.as_ref().map(Placed::region),
                grad_bias: dbias.as_ref().map(Placed::region),
                ..BackwardBuffers::new(input, dy.region(), dx.region())
            };
            backward
                .encode(device, &mut encoder, &buffers, self.rows)
                .expect("backward encode");
            gpu.queue().submit([encoder.finish()]);
        });
        Written {
            dx: dx.read(gpu, act, "dx"),
            dgain: dgain.map(|d| d.read(gpu, DType::F32, "dgain")),
            dbias: dbias.map(|d| d.read(gpu, DType::F32, "dbias")),
        }
    }

    /// Runs and checks against the reference, norm-wise.
    fn check(&self, gpu: &GpuContext, what: &str) -> Written {
        let written = self.run(gpu);
        let expected = self.reference();
        let n = self.config.hidden as usize;
        let what = format!(
            "{what} ({:?}, {} x {n}, {:?})",
            self.which, self.rows, self.config
        );
        let dx = compare_normwise(
            &written.dx,
            &expected.dx,
            &expected.dx_scale,
            n,
            self.config.dtype,
            BACKWARD_TOL,
        );
        if dx.failures > 0 {
            // The first element off, for the message.
            let off = (0..expected.dx.len()).find(|&i| {
                let one = compare_normwise(
                    &written.dx[i..=i],
                    &expected.dx[i..=i],
                    &expected.dx_scale[i / n..=i / n],
                    1,
                    self.config.dtype,
                    BACKWARD_TOL,
                );
                one.failures > 0
            });
            let detail = off.map(|i| {
                format!(
                    "first at row {} element {}: {} against {} (scale {:e})",
                    i / n,
                    i % n,
                    written.dx[i],
                    expected.dx[i],
                    expected.dx_scale[i / n]
                )
            });
            panic!(
                "{what}: dx: {} elements off, max err/scale {:e}; {}",
                dx.failures,
                dx.max_rel,
                detail.unwrap_or_default()
            );
        }
        for (name, got, want, scale) in [
            (
                "dgain",
                &written.dgain,
                &expected.dgain,
                &expected.dgain_scale,
            ),
            (
                "dbias",
                &written.dbias,
                &expected.dbias,
                &expected.dbias_scale,
            ),
        ] {
            assert_eq!(got.is_some(), want.is_some(), "{what}: {name} present");
            if let (Some(got), Some(want)) = (got, want) {
                let stats = compare_normwise(got, want, scale, 1, DType::F32, BACKWARD_TOL);
                assert_eq!(
                    stats.failures, 0,
                    "{what}: {name}: {} elements off, max err/scale {:e}",
                    stats.failures, stats.max_rel
                );
            }
        }
        written
    }
}

#[test]
fn every_shape_and_option_matches_the_reference() {
    let Some(gpu) = gpu() else { return };
    let configs = [
        RmsNormConfig::new(1),
        RmsNormConfig::new(3).with_gain(Gain::Scale),
        RmsNormConfig::new(64)
            .with_gain(Gain::UnitOffset)
            .with_bias(true),
        RmsNormConfig::new(257)
            .with_gain(Gain::Scale)
            .with_bias(true)
            .with_eps_mode(EpsMode::AddedToRms),
        RmsNormConfig::new(1024).with_bias(true).with_eps(0.0),
        RmsNormConfig::new(4097)
            .with_gain(Gain::Scale)
            .with_bias(true),
    ];
    for config in configs {
        for which in ALL {
            if which == Which::Layer && config.eps_mode == EpsMode::AddedToRms {
                continue;
            }
            for save in [false, true] {
                let rows = if config.hidden > 1000 { 5 } else { 21 };
                let case = Case::new(config.with_saved_stats(save), which, rows, 3);
                case.check(&gpu, "shapes");
            }
        }
    }
}

#[test]
fn every_reduction_and_workgroup_matches_the_reference() {
    let Some(gpu) = gpu() else { return };
    let config = RmsNormConfig::new(300)
        .with_gain(Gain::Scale)
        .with_bias(true);
    for which in ALL {
        for reduction in reductions(&gpu) {
            for workgroup_size in [None, Some(1), Some(8), Some(64)] {
                let mut case = Case::new(config, which, 19, 5);
                case.options = KernelOptions {
                    reduction,
                    workgroup_size,
                    ..KernelOptions::default()
                };
                // SingleSubgroup needs the workgroup to fit one subgroup.
                if NormBackward::<wgpu_rmsnorm::kernel::Rms>::new(
                    gpu.device(),
                    &config,
                    &case.options,
                )
                .is_err()
                {
                    continue;
                }
                case.check(&gpu, &format!("{reduction:?} {workgroup_size:?}"));
            }
        }
    }
}

#[test]
fn vec4_and_scalar_rows_and_few_workgroups_match_the_reference() {
    let Some(gpu) = gpu() else { return };
    // vec4 rows, rows at an odd element offset (scalar), and one to three workgroups
    // walking many blocks of rows (the last block short).
    let config = RmsNormConfig::new(512)
        .with_gain(Gain::Scale)
        .with_bias(true);
    for which in ALL {
        for (offset, max_workgroups) in [(0, None), (1, None), (0, Some(1)), (4, Some(3))] {
            let mut case = Case::new(config, which, 61, 9);
            case.offset = offset;
            case.options.max_workgroups = max_workgroups;
            case.check(
                &gpu,
                &format!("offset {offset} max_workgroups {max_workgroups:?}"),
            );
        }
    }
}

/// Calls the plan cuts into several dispatches (a workgroup of one invocation, one workgroup
/// per dispatch: a block of 8 rows of 2048 each): every dispatch adds into the first one's
/// partial rows, and the result matches the reference as the one-dispatch call does.
#[test]
fn dispatches_of_one_call_add_into_the_same_partial_rows() {
    let Some(gpu) = gpu() else { return };
    let config = RmsNormConfig::new(2048)
        .with_gain(Gain::Scale)
        .with_bias(true);
    for which in ALL {
        let mut case = Case::new(config, which, 29, 13);
        case.options = KernelOptions {
            workgroup_size: Some(1),
            reduction: wgpu_rmsnorm::Reduction::WorkgroupTree,
            max_workgroups: Some(1),
            ..KernelOptions::default()
        };
        let kernel = NormBackward::<wgpu_rmsnorm::kernel::Rms>::new(
            gpu.device(),
            &case.config,
            &case.options,
        )
        .unwrap();
        let launch = kernel.plan().launch(29, WideOffsets::ANY).unwrap();
        assert!(
            launch.chunks.len() >= 4,
            "{which:?}: {} chunks",
            launch.chunks.len()
        );
        let chunked = case.check(&gpu, "several dispatches");
        case.options.max_workgroups = None;
        case.options.workgroup_size = None;
        case.options.reduction = wgpu_rmsnorm::Reduction::Auto;
        case.check(&gpu, "one dispatch");
        assert!(chunked.dgain.is_some() && chunked.dbias.is_some());
    }
}

/// Few long rows split across workgroups (three dispatches, two with saved statistics): every
/// norm, with and without saved statistics, f32 and bf16, the residual, odd offsets, and the
/// default policy's split of long rows.
#[test]
fn split_rows_match_the_reference() {
    let Some(gpu) = gpu() else { return };
    let split = KernelOptions {
        split_rows: Some(true),
        ..KernelOptions::default()
    };
    for which in ALL {
        for dtype in [DType::F32, DType::Bf16] {
            for residual in [Residual::None, Residual::AddStoreSum] {
                for (save, offset) in [(false, 0), (true, 1)] {
                    let config = RmsNormConfig::new(1000)
                        .with_dtype(dtype)
                        .with_gain(Gain::UnitOffset)
                        .with_bias(true)
                        .with_residual(residual)
                        .with_saved_stats(save);
                    let mut case = Case::new(config, which, 5, 23);
                    case.options = split;
                    case.offset = offset;
                    let kernel = NormBackward::<wgpu_rmsnorm::kernel::Rms>::new(
                        gpu.device(),
                        &case.config,
                        &case.options,
                    )
                    .unwrap();
                    let launch = kernel
                        .plan()
                        .launch(
                            5,
                            WideOffsets {
                                aligned: offset == 0,
                                same_phase: offset == 0,
                            },
                        )
                        .unwrap();
                    assert!(launch.split_pieces.is_some(), "split");
                    case.check(&gpu, &format!("split {dtype} {residual:?} saved {save}"));
                }
            }
        }
        // Short rows forced into 8 pieces, the last ones empty (9 scalar Elems in pieces of
        // 2; 36 elements, 9 vec4, likewise).
        for n in [9u32, 36] {
            let config = RmsNormConfig::new(n).with_gain(Gain::Scale).with_bias(true);
            let mut case = Case::new(config, which, 5, 31);
            case.options = split;
            case.check(&gpu, &format!("split, empty pieces, n = {n}"));
        }
        // Long rows split by default: 3 rows of 40000.
        let config = RmsNormConfig::new(40000)
            .with_gain(Gain::Scale)
            .with_bias(true);
        Case::new(config, which, 3, 29).check(&gpu, "long rows");
    }
}

/// A million rows: dgain and dbias summed over all of them (64 partial rows on a CPU
/// adapter, 512 on a GPU, then one pass), within the norm-wise tolerance.
#[test]
fn a_million_rows_sum_into_dgain_and_dbias() {
    let Some(gpu) = gpu() else { return };
    let config = RmsNormConfig::new(8).with_gain(Gain::Scale).with_bias(true);
    for which in [Which::Rms, Which::Layer] {
        Case::new(config, which, 1_000_000, 17).check(&gpu, "a million rows");
    }
}

#[test]
fn every_element_type_matches_the_reference() {
    let Some(gpu) = gpu() else { return };
    let types = [DType::F32, DType::F16, DType::Bf16];
    for act in types {
        for weights in types {
            for options in f16_options(&gpu) {
                for (hidden, offset) in [(256, 0), (33, 1)] {
                    for which in ALL {
                        let config = RmsNormConfig::new(hidden)
                            .with_dtype(act)
                            .with_weight_dtype(weights)
                            .with_gain(Gain::UnitOffset)
                            .with_bias(true)
                            .with_saved_stats(hidden == 256);
                        let mut case = Case::new(config, which, 13, 21);
                        case.options = options;
                        case.offset = offset;
                        case.check(&gpu, &format!("{act} weights {weights} {options:?}"));
                    }
                }
            }
        }
    }
}

#[test]
fn every_residual_form_matches_the_reference() {
    let Some(gpu) = gpu() else { return };
    let forms = [
        Residual::Add,
        Residual::AddStoreSum,
        Residual::AddStoreSumInPlace,
    ];
    for residual in forms {
        for dtype in [DType::F32, DType::Bf16] {
            for which in ALL {
                let config = RmsNormConfig::new(130)
                    .with_dtype(dtype)
                    .with_gain(Gain::Scale)
                    .with_bias(true)
                    .with_residual(residual);
                for save in [false, true] {
                    let case = Case::new(config.with_saved_stats(save), which, 9, 31);
                    case.check(&gpu, &format!("{residual:?} {dtype}"));
                }
            }
        }
    }
}

/// Rows of zeros (eps > 0: dx = dy g / sqrt(eps); eps = 0: dx = 0), of huge and tiny
/// magnitude (normal f32: llvmpipe's GL flushes subnormal inputs to zero), with a zero first
/// k and a large tail: finite, and right norm-wise.
#[test]
fn zero_and_extreme_rows_are_defined_and_right() {
    let Some(gpu) = gpu() else { return };
    let n = 64usize;
    let rows: [(f32, f32); 7] = [
        (0.0, 0.0),
        (1e30, 1e30),
        (1e-30, 1e-30),
        (1.5e38, 1.5e38),
        (2e-38, 2e-38),
        (0.0, 300.0),
        (1e20, 1e-20),
    ];
    // eps = 1e-30 added to the RMS of a row with a zero first k: beta reaches its cap and c
    // beta overflows f32, yet dx = u / eps there, with no NaN.
    for eps in [1e-6, 1e-30, 0.0] {
        for eps_mode in [EpsMode::InsideRoot, EpsMode::AddedToRms] {
            for which in [Which::Rms, Which::Partial] {
                for (save, split_rows) in [(false, None), (true, None), (false, Some(true))] {
                    let config = RmsNormConfig::new(n as u32)
                        .with_eps(eps)
                        .with_eps_mode(eps_mode)
                        .with_gain(Gain::Scale)
                        .with_bias(true)
                        .with_saved_stats(save);
                    let mut case = Case::new(config, which, rows.len() as u32, 41);
                    case.options.split_rows = split_rows;
                    // Row i: its first quarter (pRMSNorm's k) at `head`, the rest at `tail`.
                    for (i, (head, tail)) in rows.iter().enumerate() {
                        for j in 0..n {
                            let sign = if (i + j) % 3 == 0 { -1.0 } else { 1.0 };
                            let magnitude = if j < n / 4 { *head } else { *tail };
                            let wobble = 1.0 + (j % 7) as f32 / 8.0;
                            case.x[i * n + j] = sign * magnitude * wobble;
                        }
                    }
                    let written = case.check(&gpu, &format!("extremes eps {eps} {eps_mode:?}"));
                    assert!(written.dx.iter().all(|v| v.is_finite()), "dx finite");
                }
            }
        }
    }
    // LayerNorm: a constant row (zero variance) and a row far from zero.
    for eps in [1e-5, 0.0] {
        let config = RmsNormConfig::new(n as u32)
            .with_eps(eps)
            .with_gain(Gain::Scale);
        let mut case = Case::new(config, Which::Layer, 3, 43);
        case.x[..n].fill(7.0);
        for (j, v) in case.x[n..2 * n].iter_mut().enumerate() {
            *v = 1e4 + (j % 5) as f32 * 0.125;
        }
        let written = case.check(&gpu, &format!("LayerNorm extremes eps {eps}"));
        if eps == 0.0 {
            assert!(
                written.dx[..n].iter().all(|&v| v == 0.0),
                "constant row, eps 0"
            );
        }
    }
}

#[test]
fn weight_gradients_are_bit_identical_run_to_run() {
    let Some(gpu) = gpu() else { return };
    let config = RmsNormConfig::new(257)
        .with_gain(Gain::Scale)
        .with_bias(true);
    for which in ALL {
        let case = Case::new(config, which, 333, 51);
        let first = case.run(&gpu);
        for _ in 0..3 {
            let again = case.run(&gpu);
            let bits = |v: &Option<Vec<f32>>| -> Vec<u32> {
                v.iter().flatten().map(|f| f.to_bits()).collect()
            };
            assert_eq!(bits(&first.dgain), bits(&again.dgain), "{which:?} dgain");
            assert_eq!(bits(&first.dbias), bits(&again.dbias), "{which:?} dbias");
            let dx = |w: &Written| w.dx.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
            assert_eq!(dx(&first), dx(&again), "{which:?} dx");
        }
    }
}

/// The forward's saved statistics are what the docs say: RMSNorm's two factors multiply to
/// 1 / rms, LayerNorm's shift + mean is the mean and its scale 1 / std; on every forward
/// path (one workgroup per row, read once, split rows).
#[test]
fn saved_statistics_are_the_rows_statistics() {
    let Some(gpu) = gpu() else { return };
    let device = gpu.device();
    let n = 2048u32;
    let rows = 3u32;
    let x: Vec<f32> = reference::sample_data((rows * n) as usize, 61, 3.0);
    let paths = [
        KernelOptions::default(),
        KernelOptions {
            read_once: Some(true),
            workgroup_size: Some(64),
            ..KernelOptions::default()
        },
        KernelOptions {
            split_rows: Some(true),
            ..KernelOptions::default()
        },
    ];
    for options in paths {
        for layer in [false, true] {
            let x_buffer = Placed::new(&gpu, &x, DType::F32, 0);
            let y = Placed::new(&gpu, &x, DType::F32, 0);
            let stats = Placed::new(&gpu, &vec![0.0; rows as usize * 3], DType::F32, 0);
            let buffers = RmsNormBuffers {
                stats: Some(stats.region()),
                ..RmsNormBuffers::new(x_buffer.region(), y.region())
            };
            no_gpu_errors(device, || {
                let mut encoder = device.create_command_encoder(&Default::default());
                if layer {
                    let config = LayerNormConfig::new(n).with_saved_stats(true);
                    let kernel = wgpu_rmsnorm::LayerNorm::new(device, &config, &options).unwrap();
                    assert_eq!(kernel.stats_len(rows), 3 * u64::from(rows));
                    kernel.encode(device, &mut encoder, &buffers, rows).unwrap();
                } else {
                    let config = RmsNormConfig::new(n).with_saved_stats(true);
                    let kernel = wgpu_rmsnorm::RmsNorm::new(device, &config, &options).unwrap();
                    assert_eq!(kernel.stats_len(rows), 2 * u64::from(rows));
                    kernel.encode(device, &mut encoder, &buffers, rows).unwrap();
                }
                gpu.queue().submit([encoder.finish()]);
            });
            let saved = stats.read(&gpu, DType::F32, "stats");
            for (row, values) in x.chunks_exact(n as usize).enumerate() {
                let wide: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
                let mean = wide.iter().sum::<f64>() / f64::from(n);
                let (expected, got) = if layer {
                    let var = wide.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / f64::from(n);
                    let s = &saved[row * 3..row * 3 + 3];
                    let got_mean = f64::from(s[0]) + f64::from(s[1]);
                    assert!(
                        (got_mean - mean).abs() <= 1e-5 * (var.sqrt()),
                        "{options:?} mean"
                    );
                    (1.0 / (var + 1e-5).sqrt(), f64::from(s[2]))
                } else {
                    let ms = wide.iter().map(|v| v * v).sum::<f64>() / f64::from(n);
                    let s = &saved[row * 2..row * 2 + 2];
                    (1.0 / (ms + 1e-6).sqrt(), f64::from(s[0]) * f64::from(s[1]))
                };
                assert!(
                    (got - expected).abs() <= 1e-5 * expected,
                    "{options:?} layer {layer} row {row}: {got} against {expected}"
                );
            }
        }
    }
}

/// The GPU's forward and backward agree: the backward's dx, dgain and dbias against central
/// differences of the loss sum(dy * y) computed by the GPU forward (in f32, so with steps
/// of 1e-2 and a tolerance of 1e-2 of the largest gradient).
#[test]
fn gpu_forward_and_backward_agree_with_finite_differences() {
    let Some(gpu) = gpu() else { return };
    let n = 24usize;
    let rows = 2usize;
    for which in ALL {
        let config = RmsNormConfig::new(n as u32)
            .with_gain(Gain::UnitOffset)
            .with_bias(true);
        let case = Case::new(config, which, rows as u32, 71);
        let layer = case.layer_config();
        let loss = |x: &[f32], g: &[f32], b: &[f32]| -> f64 {
            let weights = Weights {
                gain: Some(g),
                bias: Some(b),
            };
            let y = match which {
                Which::Layer => gpu.layer_norm_blocking(x, &layer, weights),
                _ => gpu.rms_norm_blocking(x, &case.config, weights),
            }
            .expect("forward");
            y.iter()
                .zip(&case.dy)
                .map(|(y, d)| f64::from(*y) * f64::from(*d))
                .sum()
        };
        let (g, b) = (case.gain.clone().unwrap(), case.bias.clone().unwrap());
        let inputs = BackwardInputs::new(&case.x, &case.dy);
        let got = match which {
            Which::Layer => gpu.layer_norm_backward_blocking(inputs, &layer, Some(&g[..])),
            _ => gpu.rms_norm_backward_blocking(inputs, &case.config, Some(&g[..])),
        }
        .expect("backward");
        let numeric = |v: &[f32], at: &dyn Fn(&[f32]) -> f64| -> Vec<f64> {
            (0..v.len())
                .map(|j| {
                    let step = 1e-2f32;
                    let (mut plus, mut minus) = (v.to_vec(), v.to_vec());
                    plus[j] += step;
                    minus[j] -= step;
                    (at(&plus) - at(&minus)) / f64::from(plus[j] - minus[j])
                })
                .collect()
        };
        let checks = [
            (
                "dx",
                got.grad_input.clone(),
                numeric(&case.x, &|x| loss(x, &g, &b)),
            ),
            (
                "dgain",
                got.grad_gain.clone().unwrap(),
                numeric(&g, &|g| loss(&case.x, g, &b)),
            ),
            (
                "dbias",
                got.grad_bias.clone().unwrap(),
                numeric(&b, &|b| loss(&case.x, &g, b)),
            ),
        ];
        for (name, analytic, numeric) in checks {
            let scale = numeric.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (j, (a, e)) in analytic.iter().zip(&numeric).enumerate() {
                assert!(
                    (f64::from(*a) - e).abs() <= 1e-2 * scale,
                    "{which:?} {name}[{j}]: GPU backward {a} against differences {e}"
                );
            }
        }
    }
}

#[test]
fn high_level_backward_takes_every_form() {
    let Some(gpu) = gpu() else { return };
    let config = RmsNormConfig::new(40)
        .with_gain(Gain::Scale)
        .with_residual(Residual::Add);
    let case = Case::new(config, Which::Partial, 3, 81);
    let gain = case.gain.as_deref();
    let inputs = BackwardInputs {
        residual: case.r.as_deref(),
        ..BackwardInputs::new(&case.x, &case.dy)
    };
    let got = gpu
        .rms_norm_backward_blocking(inputs, &case.config, gain)
        .unwrap();
    let expected = case.reference();
    let stats = compare_normwise(
        &got.grad_input,
        &expected.dx,
        &expected.dx_scale,
        40,
        DType::F32,
        BACKWARD_TOL,
    );
    assert_eq!(stats.failures, 0, "high-level Residual::Add");
    assert!(got.grad_bias.is_none());
    // 16-bit through the high-level API: half types in, half dx out.
    let config = RmsNormConfig::new(16)
        .with_dtype(DType::F16)
        .with_gain(Gain::Scale);
    let x: Vec<wgpu_rmsnorm::f16> = (0..32)
        .map(|i| wgpu_rmsnorm::f16::from_f32(i as f32 - 9.5))
        .collect();
    let dy: Vec<wgpu_rmsnorm::f16> = (0..32)
        .map(|i| wgpu_rmsnorm::f16::from_f32((i % 5) as f32 - 2.0))
        .collect();
    let g: Vec<wgpu_rmsnorm::f16> = (0..16)
        .map(|i| wgpu_rmsnorm::f16::from_f32(1.0 + i as f32 / 16.0))
        .collect();
    let got = gpu
        .rms_norm_backward_blocking(BackwardInputs::new(&x, &dy), &config, Some(&g[..]))
        .unwrap();
    let widen = |v: &[wgpu_rmsnorm::f16]| v.iter().map(|e| e.to_f32()).collect::<Vec<f32>>();
    let expected =
        reference::rms_norm_backward(&widen(&x), &widen(&dy), &config, Some(&widen(&g)), None)
            .unwrap();
    let stats = compare_normwise(
        &widen(&got.grad_input),
        &expected.dx,
        &expected.dx_scale,
        16,
        DType::F16,
        BACKWARD_TOL,
    );
    assert_eq!(stats.failures, 0, "high-level f16");
    // No rows: dgain and dbias are zero.
    let config = RmsNormConfig::new(8).with_gain(Gain::Scale).with_bias(true);
    let none: [f32; 0] = [];
    let ones = [1.0f32; 8];
    let got = gpu
        .rms_norm_backward_blocking(BackwardInputs::new(&none, &none), &config, Some(&ones[..]))
        .unwrap();
    assert!(got.grad_input.is_empty());
    assert_eq!(got.grad_gain, Some(vec![0.0; 8]));
    assert_eq!(got.grad_bias, Some(vec![0.0; 8]));
}

/// Every buffer that does not match the config is a typed error whose message says what to
/// change, before anything reaches wgpu.
#[test]
fn mismatched_backward_buffers_are_refused() {
    let Some(gpu) = gpu() else { return };
    let device = gpu.device();
    let n = 8u32;
    let buffer = |bytes: u64| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    let (x, dy, dx, g, dg, db, stats, r) = (
        buffer(64),
        buffer(64),
        buffer(64),
        buffer(32),
        buffer(32),
        buffer(32),
        buffer(12),
        buffer(64),
    );
    let gained = RmsNormConfig::new(n).with_gain(Gain::Scale).with_bias(true);
    let full = |config: &RmsNormConfig| BackwardBuffers {
        gain: Some((&g).into()),
        grad_gain: Some((&dg).into()),
        grad_bias: Some((&db).into()),
        stats: config.save_stats.then(|| (&stats).into()),
        residual: (config.residual == Residual::Add).then(|| (&r).into()),
        grad_sum: config.residual.stores_sum().then(|| (&r).into()),
        ..BackwardBuffers::new((&x).into(), (&dy).into(), (&dx).into())
    };
    let run = |config: &RmsNormConfig, buffers: &BackwardBuffers<'_>| {
        let kernel = wgpu_rmsnorm::RmsNormBackward::new(device, config, &KernelOptions::default())
            .expect("kernel");
        let mut encoder = device.create_command_encoder(&Default::default());
        no_gpu_errors(device, || kernel.encode(device, &mut encoder, buffers, 2))
    };
    assert!(run(&gained, &full(&gained)).is_ok());
    let cases: Vec<(RmsNormConfig, BackwardBuffers<'_>, &str)> = vec![
        (
            gained,
            BackwardBuffers {
                grad_gain: None,
                ..full(&gained)
            },
            "grad_gain",
        ),
        (
            gained,
            BackwardBuffers {
                grad_bias: None,
                ..full(&gained)
            },
            "grad_bias",
        ),
        (
            gained,
            BackwardBuffers {
                gain: None,
                ..full(&gained)
            },
            "gain",
        ),
        (
            gained,
            BackwardBuffers {
                stats: Some((&stats).into()),
                ..full(&gained)
            },
            "statistics",
        ),
        (
            gained.with_saved_stats(true),
            BackwardBuffers {
                stats: None,
                ..full(&gained)
            },
            "stats",
        ),
        (
            gained,
            BackwardBuffers {
                residual: Some((&r).into()),
                ..full(&gained)
            },
            "residual",
        ),
        (
            gained.with_residual(Residual::Add),
            BackwardBuffers {
                residual: None,
                ..full(&gained.with_residual(Residual::Add))
            },
            "residual",
        ),
        (
            gained.with_residual(Residual::AddStoreSum),
            BackwardBuffers {
                grad_sum: None,
                ..full(&gained)
            },
            "grad_sum",
        ),
        (
            gained,
            BackwardBuffers {
                grad_sum: Some((&r).into()),
                ..full(&gained)
            },
            "grad_sum",
        ),
        (
            gained,
            BackwardBuffers {
                grad_input: (&dy).into(),
                ..full(&gained)
            },
            "grad_input",
        ),
        (
            gained,
            BackwardBuffers {
                grad_gain: Some((&db).into()),
                ..full(&gained)
            },
            "grad_gain",
        ),
        (
            gained,
            BackwardBuffers {
                grad_output: (&g).into(),
                ..full(&gained)
            },
            "grad_output",
        ),
        (
            gained,
            BackwardBuffers {
                input: wgpu_rmsnorm::BufferRegion {
                    buffer: &x,
                    offset: 2,
                },
                ..full(&gained)
            },
            "input",
        ),
    ];
    for (config, buffers, names) in cases {
        let e = run(&config, &buffers).expect_err(names);
        let message = e.to_string();
        assert!(
            matches!(
                e,
                Error::BackwardMismatch { .. }
                    | Error::StatsMismatch { .. }
                    | Error::MissingWeight { .. }
                    | Error::AliasedOutput { .. }
                    | Error::BufferTooSmall { .. }
                    | Error::MisalignedOffset { .. }
            ),
            "{names}: {e:?}"
        );
        assert!(message.contains(names), "{names}: {message}");
    }
    // Stats of 2 rows wanted (16 bytes), 12 bytes given: too small, said so.
    let config = gained.with_saved_stats(true);
    let kernel =
        wgpu_rmsnorm::RmsNormBackward::new(device, &config, &KernelOptions::default()).unwrap();
    let mut encoder = device.create_command_encoder(&Default::default());
    let e = kernel
        .encode(device, &mut encoder, &full(&config), 2)
        .unwrap_err();
    assert!(
        matches!(e, Error::BufferTooSmall { which: "stats", .. }),
        "{e:?}"
    );
    // The high-level API: dy of another length, elements of another type.
    let x = [1.0f32; 16];
    let e = gpu
        .rms_norm_backward_blocking(
            BackwardInputs::new(&x, &x[..8]),
            &RmsNormConfig::new(n),
            None::<&[f32]>,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::LengthMismatch {
                which: "grad_output",
                ..
            }
        ),
        "{e:?}"
    );
    let e = gpu
        .rms_norm_backward_blocking(
            BackwardInputs::new(&x, &x),
            &RmsNormConfig::new(n).with_dtype(DType::Bf16),
            None::<&[f32]>,
        )
        .unwrap_err();
    assert!(matches!(e, Error::DTypeMismatch { .. }), "{e:?}");
    let e = gpu
        .rms_norm_backward_blocking(
            BackwardInputs::new(&x, &x),
            &RmsNormConfig::new(n).with_gain(Gain::Scale),
            Some(&[1.0f32; 9][..]),
        )
        .unwrap_err();
    assert!(
        matches!(e, Error::WeightLength { which: "gain", .. }),
        "{e:?}"
    );
}
