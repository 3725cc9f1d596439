//! f16 and bf16 tensors and the fused residual add, on the low-level API with the caller's
//! buffers: every element type combination, both f16 implementations (WGSL's f16 type where
//! the device has it, packed words everywhere), odd hidden sizes and odd element offsets
//! (16-bit rows sharing words with their neighbours), the residual in and out of place,
//! against the f64 reference; bytes around every region must come back untouched.

#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::{f16_options, gpu, no_gpu_errors, Placed};
use wgpu_rmsnorm::kernel::NormKind;
use wgpu_rmsnorm::reference::{self, F32_ABS_TOL, F32_REL_TOL};
use wgpu_rmsnorm::shaders::ElemLayout;
use wgpu_rmsnorm::{
    bf16, f16, BufferRegion, DType, Error, Gain, GpuContext, KernelOptions, LayerNorm,
    LayerNormConfig, NormKernel, PartialRms, Reduction, Residual, RmsNorm, RmsNormBuffers,
    RmsNormConfig, Weights,
};

/// One call: the data (as values of their types), where each tensor starts, what comes back.
struct Call {
    rows: u32,
    x: Vec<f32>,
    r: Vec<f32>,
    gain: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
    /// Element offsets of x, r, y, sum, gain, bias.
    offsets: [u64; 6],
}

/// What a call wrote: y, and the sum (from its own buffer, or from r when in place); and the
/// loads it took.
struct Written {
    y: Vec<f32>,
    sum: Option<Vec<f32>>,
    elem: ElemLayout,
}

impl Call {
    fn new(config: &RmsNormConfig, rows: u32, seed: u64, offsets: [u64; 6]) -> Self {
        let len = rows as usize * config.hidden as usize;
        let n = config.hidden as usize;
        let act = |values: Vec<f32>| -> Vec<f32> {
            values.iter().map(|&v| config.dtype.round(v)).collect()
        };
        let weight = |values: Vec<f32>| -> Vec<f32> {
            values
                .iter()
                .map(|&v| config.weight_dtype.round(v))
                .collect()
        };
        Self {
            rows,
            x: act(reference::sample_data(len, seed, 3.0)),
            r: act(reference::sample_data(len, seed + 1, 2.0)),
            gain: (config.gain != Gain::None)
                .then(|| weight(reference::sample_data(n, seed + 2, 1.5))),
            bias: config
                .bias
                .then(|| weight(reference::sample_data(n, seed + 3, 0.5))),
            offsets,
        }
    }

    /// Runs `kernel` (built for `config`) on the call's data.
    fn run<N: NormKind>(
        &self,
        gpu: &GpuContext,
        kernel: &NormKernel<N>,
        config: &RmsNormConfig,
    ) -> Written {
        let (act, weight) = (config.dtype, config.weight_dtype);
        let o = self.offsets;
        let junk = vec![0.0; self.x.len()];
        let x = Placed::new(gpu, &self.x, act, o[0]);
        let r = config
            .residual
            .is_some()
            .then(|| Placed::new(gpu, &self.r, act, o[1]));
        // Outputs start as guard bytes in the region too: a missed element shows.
        let y = Placed::new(gpu, &junk, act, o[2]);
        let sum =
            (config.residual == Residual::AddStoreSum).then(|| Placed::new(gpu, &junk, act, o[3]));
        let gain = self
            .gain
            .as_ref()
            .map(|g| Placed::new(gpu, g, weight, o[4]));
        let bias = self
            .bias
            .as_ref()
            .map(|b| Placed::new(gpu, b, weight, o[5]));
        let elem = no_gpu_errors(gpu.device(), || {
            let buffers = RmsNormBuffers {
                input: x.region(),
                output: y.region(),
                gain: gain.as_ref().map(Placed::region),
                bias: bias.as_ref().map(Placed::region),
                residual: r.as_ref().map(Placed::region),
                sum: sum.as_ref().map(Placed::region),
                stats: None,
            };
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            kernel
                .encode(gpu.device(), &mut encoder, &buffers, self.rows)
                .expect("encode");
            gpu.queue().submit([encoder.finish()]);
            kernel.elem_layout(&buffers, self.rows).expect("layout")
        });
        let written_sum = match config.residual {
            Residual::AddStoreSum => sum.as_ref(),
            Residual::AddStoreSumInPlace => r.as_ref(),
            _ => None,
        };
        assert_eq!(x.read(gpu, act, "x"), self.x, "x changed");
        if config.residual == Residual::Add || config.residual == Residual::AddStoreSum {
            assert_eq!(r.as_ref().unwrap().read(gpu, act, "r"), self.r, "r changed");
        }
        Written {
            y: y.read(gpu, act, "y"),
            sum: written_sum.map(|s| s.read(gpu, act, "sum")),
            elem,
        }
    }

    /// The normalized input: x, or x + r rounded to the activations' type.
    fn input(&self, config: &RmsNormConfig) -> Vec<f32> {
        match config.residual {
            Residual::None => self.x.clone(),
            _ => reference::residual_sum(&self.x, &self.r, config.dtype),
        }
    }

    /// Checks what came back against the f64 reference of `expected` (computed on the
    /// call's normalized input) and the sum bit for bit.
    fn check(&self, written: &Written, config: &RmsNormConfig, expected: &[f64], what: &str) {
        let stats = reference::compare_rounded(
            &written.y,
            expected,
            config.dtype,
            F32_ABS_TOL,
            F32_REL_TOL,
        );
        assert_eq!(
            stats.failures,
            0,
            "{what}: {} of {} outputs are not a rounding of the reference within tolerance \
             (max {:.2} ulps)",
            stats.failures,
            written.y.len(),
            stats.max_ulps
        );
        if let Some(sum) = &written.sum {
            let expected = self.input(config);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(sum), bits(&expected), "{what}: the stored sum");
        }
    }
}

/// Which normalization a case runs.
#[derive(Debug, Clone, Copy)]
enum Which {
    Rms,
    Partial,
    Layer,
}

/// Runs one case of `which` with `config` (its partial and residual set here) on `rows`
/// rows, and checks it and that the call took the `expect` layout.
fn run_case(
    gpu: &GpuContext,
    which: Which,
    config: RmsNormConfig,
    options: &KernelOptions,
    rows: u32,
    offsets: [u64; 6],
    expect: ElemLayout,
) {
    let what = format!(
        "{which:?} {} (weights {}) n={} {:?} offsets {offsets:?} native_f16 {:?}",
        config.dtype, config.weight_dtype, config.hidden, config.residual, options.native_f16
    );
    let seed = u64::from(config.hidden) + rows as u64;
    let call = Call::new(&config, rows, seed, offsets);
    let input = call.input(&config);
    let (gain, bias) = (call.gain.as_deref(), call.bias.as_deref());
    match which {
        Which::Rms | Which::Partial => {
            let config = match which {
                Which::Partial => config.with_partial(PartialRms::Fraction(0.3)),
                _ => config,
            };
            let kernel = RmsNorm::new(gpu.device(), &config, options).expect(&what);
            let written = call.run(gpu, &kernel, &config);
            let expected = reference::rms_norm(&input, &config, gain, bias).unwrap();
            assert_eq!(written.elem, expect, "{what}");
            call.check(&written, &config, &expected, &what);
        }
        Which::Layer => {
            let layer = LayerNormConfig::new(config.hidden)
                .with_gain(config.gain)
                .with_bias(config.bias)
                .with_dtype(config.dtype)
                .with_weight_dtype(config.weight_dtype)
                .with_residual(config.residual);
            let kernel = LayerNorm::new(gpu.device(), &layer, options).expect(&what);
            let written = call.run(gpu, &kernel, &config);
            let expected = reference::layer_norm(&input, &layer, gain, bias).unwrap();
            assert_eq!(written.elem, expect, "{what}");
            call.check(&written, &config, &expected, &what);
        }
    }
}

/// Every activation and weight type, for RMSNorm, pRMSNorm and LayerNorm, with gain and
/// bias, on vec4 rows (n = 256, aligned), scalar rows (n = 37, x and y at different phases)
/// and rows at any element (n = 37, x and y at one phase, the weights at others).
#[test]
fn every_dtype_combination_matches_the_reference() {
    let Some(turn) = gpu() else { return };
    for options in f16_options(&turn) {
        for act in DType::ALL {
            for weights in DType::ALL {
                for which in [Which::Rms, Which::Partial, Which::Layer] {
                    let config = RmsNormConfig::new(256)
                        .with_dtype(act)
                        .with_weight_dtype(weights)
                        .with_gain(Gain::Scale)
                        .with_bias(true);
                    // Aligned; x and y at different phases; x and y at one phase.
                    for (hidden, rows, offsets, layout) in [
                        (256, 6, [4, 8, 12, 0, 4, 8], ElemLayout::Vec4),
                        (37, 5, [1, 3, 6, 7, 1, 3], ElemLayout::Scalar),
                        (37, 5, [1, 3, 5, 7, 2, 3], ElemLayout::Vec4Masked),
                    ] {
                        let config = RmsNormConfig { hidden, ..config };
                        run_case(&turn, which, config, &options, rows, offsets, layout);
                    }
                }
            }
        }
    }
}

/// The residual add in each form (not stored, stored apart, stored over r), fused with each
/// normalization, in each activation type, on vec4 and odd scalar rows.
#[test]
fn residual_add_in_every_form_matches_the_unfused_reference() {
    let Some(turn) = gpu() else { return };
    for options in f16_options(&turn) {
        for act in DType::ALL {
            for residual in [
                Residual::Add,
                Residual::AddStoreSum,
                Residual::AddStoreSumInPlace,
            ] {
                for which in [Which::Rms, Which::Partial, Which::Layer] {
                    let config = RmsNormConfig::new(128)
                        .with_dtype(act)
                        .with_weight_dtype(DType::F32)
                        .with_gain(Gain::UnitOffset)
                        .with_residual(residual);
                    for (hidden, rows, offsets, layout) in [
                        (128, 4, [0, 4, 8, 12, 0, 0], ElemLayout::Vec4),
                        (33, 7, [3, 1, 5, 2, 0, 0], ElemLayout::Scalar),
                    ] {
                        let config = RmsNormConfig { hidden, ..config };
                        run_case(&turn, which, config, &options, rows, offsets, layout);
                    }
                }
            }
        }
    }
}

/// The option sets rows at any element are tested with: whole rows, one row per
/// invocation, split rows, three workgroups looping over rows, and read-once.
fn rows_at_any_element_options() -> [KernelOptions; 5] {
    [
        KernelOptions::default(),
        KernelOptions::with_reduction(Reduction::PerInvocation),
        KernelOptions {
            split_rows: Some(true),
            ..KernelOptions::default()
        },
        KernelOptions {
            max_workgroups: Some(3),
            ..KernelOptions::default()
        },
        KernelOptions {
            read_once: Some(true),
            workgroup_size: Some(64),
            ..KernelOptions::default()
        },
    ]
}

/// Hidden sizes around multiples of 4: rows of one to three elements within one Elem, rows
/// straddling two, long rows.
const ANY_ELEMENT_HIDDEN: [u32; 12] = [1, 2, 3, 5, 7, 13, 63, 257, 1023, 4097, 4098, 4099];

/// One case of rows at any element: `config`'s hidden size at `case`'s phase (x, r, y and
/// the sum at one lane, in different Elems; gain and bias at two others), its rows and
/// residual form, RMSNorm, pRMSNorm and LayerNorm with `options`. Asserts that the call took
/// masked vec4 rows and checks every output.
fn run_any_element_case(
    gpu: &GpuContext,
    config: RmsNormConfig,
    case: usize,
    options: &KernelOptions,
) {
    let phase = case as u64 % 4;
    let offsets = [
        phase,
        phase + 4,
        phase + 8,
        phase + 12,
        phase + 1,
        phase + 6,
    ];
    let rows = [1, 3, 33][case % 3];
    let residual = [
        Residual::None,
        Residual::Add,
        Residual::AddStoreSum,
        Residual::AddStoreSumInPlace,
    ][case % 4];
    let config = config
        .with_gain(Gain::Scale)
        .with_bias(true)
        .with_residual(residual);
    let hidden = config.hidden;
    for which in [Which::Rms, Which::Partial, Which::Layer] {
        let config = match which {
            Which::Partial => config.with_partial(PartialRms::Fraction(0.3)),
            _ => config,
        };
        let what = format!(
            "{which:?} {} (weights {}) n={hidden} x {rows} {residual:?} offsets {offsets:?} \
             {options:?}",
            config.dtype, config.weight_dtype
        );
        let call = Call::new(&config, rows, u64::from(hidden), offsets);
        let input = call.input(&config);
        let (gain, bias) = (call.gain.as_deref(), call.bias.as_deref());
        let (written, expected) = match which {
            Which::Layer => {
                let layer = LayerNormConfig::new(hidden)
                    .with_gain(Gain::Scale)
                    .with_bias(true)
                    .with_dtype(config.dtype)
                    .with_weight_dtype(config.weight_dtype)
                    .with_residual(residual);
                let kernel = LayerNorm::new(gpu.device(), &layer, options).expect(&what);
                let expected = reference::layer_norm(&input, &layer, gain, bias);
                (call.run(gpu, &kernel, &config), expected.unwrap())
            }
            _ => {
                let kernel = RmsNorm::new(gpu.device(), &config, options).expect(&what);
                let expected = reference::rms_norm(&input, &config, gain, bias);
                (call.run(gpu, &kernel, &config), expected.unwrap())
            }
        };
        assert_eq!(written.elem, ElemLayout::Vec4Masked, "{what}");
        call.check(&written, &config, &expected, &what);
    }
}

/// Rows at any element (f32 tensors of any hidden size, x, r, y and the sum at one lane of a
/// vec4, the gain and bias at others): vec4 loads with each row's first and last Elem masked,
/// the lanes of the rows around it neither counted nor written. Every hidden size of
/// `ANY_ELEMENT_HIDDEN` with every option set, every phase, every residual form, RMSNorm,
/// pRMSNorm and LayerNorm: each output a rounding of the f64 reference, the sum bit for bit,
/// the guard bytes around every tensor intact.
#[test]
fn rows_at_any_element_match_the_reference() {
    let Some(turn) = gpu() else { return };
    for (case, hidden) in ANY_ELEMENT_HIDDEN.into_iter().enumerate() {
        for options in &rows_at_any_element_options() {
            run_any_element_case(&turn, RmsNormConfig::new(hidden), case, options);
        }
    }
}

/// 16-bit rows at any element: f16 (packed words, and WGSL's f16 where the device has it)
/// and bf16 activations, with 16-bit and f32 weights. A row's first and last Elems share
/// packed words with the rows around it, written half by half with atomics; an f16 lane is
/// a value of its own. Every hidden size of `ANY_ELEMENT_HIDDEN`, each with one of the option
/// sets in turn, every phase and residual form, RMSNorm, pRMSNorm and LayerNorm.
#[test]
fn sixteen_bit_rows_at_any_element_match_the_reference() {
    let Some(turn) = gpu() else { return };
    let option_sets = rows_at_any_element_options();
    for f16_options in f16_options(&turn) {
        let native = f16_options.native_f16 == Some(true);
        let dtypes: &[(DType, DType)] = if native {
            &[(DType::F16, DType::F16), (DType::Bf16, DType::F16)]
        } else {
            &[
                (DType::F16, DType::F16),
                (DType::F16, DType::F32),
                (DType::Bf16, DType::Bf16),
                (DType::Bf16, DType::F16),
            ]
        };
        for (turn_of, &(act, weights)) in dtypes.iter().enumerate() {
            for (case, hidden) in ANY_ELEMENT_HIDDEN.into_iter().enumerate() {
                let options = KernelOptions {
                    native_f16: f16_options.native_f16,
                    ..option_sets[(case + turn_of) % option_sets.len()]
                };
                let config = RmsNormConfig::new(hidden)
                    .with_dtype(act)
                    .with_weight_dtype(weights);
                run_any_element_case(&turn, config, case, &options);
            }
        }
    }
}

/// Many rows of an odd hidden size at an odd offset: neighbouring rows share a word at every
/// boundary, so a lost write shows. Scalar rows (x, r and y at different phases) and rows at
/// any element (one phase: each row's first and last Elems written half by half). The same
/// call 20 times must give the same bits, and every one must match the reference.
#[test]
fn packed_rows_sharing_words_are_bit_exact_run_to_run() {
    let Some(turn) = gpu() else { return };
    for dtype in [DType::F16, DType::Bf16] {
        let config = RmsNormConfig::new(33)
            .with_dtype(dtype)
            .with_residual(Residual::AddStoreSumInPlace);
        let options = KernelOptions {
            native_f16: Some(false),
            ..KernelOptions::default()
        };
        let kernel = RmsNorm::new(turn.device(), &config, &options).unwrap();
        for (offsets, elem) in [
            ([1, 1, 3, 0, 0, 0], ElemLayout::Scalar),
            ([1, 1, 1, 0, 0, 0], ElemLayout::Vec4Masked),
        ] {
            let what = format!("{dtype} offsets {offsets:?}");
            let call = Call::new(&config, 513, 7, offsets);
            let expected = reference::rms_norm(&call.input(&config), &config, None, None).unwrap();
            let first = call.run(&turn, &kernel, &config);
            assert_eq!(first.elem, elem, "{what}");
            call.check(&first, &config, &expected, &what);
            for run in 1..20 {
                let again = call.run(&turn, &kernel, &config);
                assert!(
                    again
                        .y
                        .iter()
                        .zip(&first.y)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{what} run {run}: outputs differ from the first run"
                );
            }
        }
    }
}

/// WGSL's f16 type and packed words round alike: the same bits, vec4 and scalar rows.
#[test]
fn native_and_packed_f16_give_the_same_bits() {
    let Some(turn) = gpu() else { return };
    let options = f16_options(&turn);
    if options.len() < 2 {
        return;
    }
    for (hidden, offsets) in [(512, [0, 0, 0, 0, 0, 0]), (97, [1, 2, 3, 4, 5, 6])] {
        let config = RmsNormConfig::new(hidden)
            .with_dtype(DType::F16)
            .with_gain(Gain::Scale)
            .with_bias(true)
            .with_residual(Residual::AddStoreSum);
        let call = Call::new(&config, 9, 11, offsets);
        let outputs: Vec<Vec<u32>> = options
            .iter()
            .map(|o| {
                let kernel = RmsNorm::new(turn.device(), &config, o).unwrap();
                let written = call.run(&turn, &kernel, &config);
                written.y.iter().map(|v| v.to_bits()).collect()
            })
            .collect();
        assert_eq!(outputs[0], outputs[1], "n = {hidden}");
    }
}

/// f16's range is small: a row of 6e4 normalizes correctly (its squares are f32), and an
/// output beyond 65504 rounds to inf, as IEEE rounding to nearest does.
#[test]
fn f16_extremes_normalize_and_overflow_to_inf() {
    let Some(turn) = gpu() else { return };
    for options in f16_options(&turn) {
        let config = RmsNormConfig::new(8)
            .with_dtype(DType::F16)
            .with_gain(Gain::Scale);
        let kernel = RmsNorm::new(turn.device(), &config, &options).unwrap();
        let mut call = Call::new(&config, 2, 3, [0; 6]);
        // Row 0: every element 6e4, so x / rms = 1 and y = g = 65504.
        // Row 1: x / rms = +-2 where x = +-4, so y = +-131008: beyond f16's range.
        let spike = [4.0, 0.0, 0.0, 0.0, -4.0, 0.0, 0.0, 0.0];
        call.x = [vec![60000.0; 8], spike.to_vec()].concat();
        call.gain = Some(vec![65504.0; 8]);
        let written = call.run(&turn, &kernel, &config);
        let expected = reference::rms_norm(&call.x, &config, call.gain.as_deref(), None).unwrap();
        call.check(&written, &config, &expected, "f16 extremes");
        assert_eq!(&written.y[..8], &[65504.0; 8], "row 0");
        let inf = f32::INFINITY;
        assert_eq!(
            &written.y[8..],
            &[inf, 0.0, 0.0, 0.0, -inf, 0.0, 0.0, 0.0],
            "row 1"
        );
    }
}

/// The high-level API takes and returns the `half` crate's types, and its residual call
/// returns the sum; a slice of another type than the config's is refused.
#[test]
fn high_level_api_takes_half_types() {
    let Some(turn) = gpu() else { return };
    let n = 24;
    let values = reference::sample_data(3 * n, 5, 2.0);
    let x: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
    let r: Vec<bf16> = values.iter().rev().map(|&v| bf16::from_f32(v)).collect();
    let gain: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 / 8.0).collect();
    let config = RmsNormConfig::new(n as u32)
        .with_dtype(DType::Bf16)
        .with_weight_dtype(DType::F32)
        .with_gain(Gain::Scale)
        .with_residual(Residual::AddStoreSum);
    let weights = Weights {
        gain: Some(&gain[..]),
        bias: None,
    };
    let out = turn
        .rms_norm_residual_blocking(&x, &r, &config, weights)
        .unwrap();
    let widen = |v: &[bf16]| v.iter().map(|b| b.to_f32()).collect::<Vec<f32>>();
    let h = reference::residual_sum(&widen(&x), &widen(&r), DType::Bf16);
    assert_eq!(widen(out.sum.as_ref().unwrap()), h);
    let expected = reference::rms_norm(&h, &config, Some(&gain), None).unwrap();
    let stats = reference::compare_rounded(
        &widen(&out.output),
        &expected,
        DType::Bf16,
        F32_ABS_TOL,
        F32_REL_TOL,
    );
    assert_eq!(stats.failures, 0, "{stats:?}");

    let wrong = turn.rms_norm_residual_blocking(&values, &values, &config, weights);
    assert!(
        matches!(wrong, Err(Error::DTypeMismatch { which: "input", .. })),
        "{wrong:?}"
    );
    let plain = turn.rms_norm_blocking(&x, &config, weights);
    assert!(
        matches!(plain, Err(Error::ResidualMismatch { .. })),
        "{plain:?}"
    );
    let f16_gain: Vec<f16> = gain.iter().map(|&g| f16::from_f32(g)).collect();
    let mismatched = Weights {
        gain: Some(&f16_gain[..]),
        bias: None,
    };
    let wrong = turn.rms_norm_residual_blocking(&x, &r, &config, mismatched);
    assert!(
        matches!(
            wrong,
            Err(Error::DTypeMismatch {
                which: "gain or bias",
                ..
            })
        ),
        "{wrong:?}"
    );
}

/// A bad call: what it is, its buffers, and the error it must get.
type BadCase<'a> = (&'a str, RmsNormBuffers<'a>, fn(&Error) -> bool);

/// Bad 16-bit and residual buffers get typed errors before wgpu sees them.
#[test]
fn bad_residual_and_16_bit_buffers_are_refused() {
    let Some(turn) = gpu() else { return };
    let device = turn.device();
    let config = RmsNormConfig::new(8)
        .with_dtype(DType::F16)
        .with_residual(Residual::AddStoreSum);
    let kernel = RmsNorm::new(device, &config, &KernelOptions::default()).unwrap();
    let buffer = |size| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    let (x, r, y, sum) = (buffer(64), buffer(64), buffer(64), buffer(64));
    let ok = RmsNormBuffers {
        residual: Some(BufferRegion::whole(&r)),
        sum: Some(BufferRegion::whole(&sum)),
        ..RmsNormBuffers::new(BufferRegion::whole(&x), BufferRegion::whole(&y))
    };
    let encode = |buffers: &RmsNormBuffers<'_>| {
        let mut encoder = device.create_command_encoder(&Default::default());
        no_gpu_errors(device, || kernel.encode(device, &mut encoder, buffers, 2))
    };
    assert!(encode(&ok).is_ok());
    let cases: Vec<BadCase<'_>> = vec![
        (
            "odd byte offset",
            RmsNormBuffers {
                input: BufferRegion {
                    buffer: &x,
                    offset: 3,
                },
                ..ok
            },
            |e| {
                matches!(
                    e,
                    Error::MisalignedOffset {
                        element_bytes: 2,
                        ..
                    }
                )
            },
        ),
        (
            "no residual",
            RmsNormBuffers {
                residual: None,
                ..ok
            },
            |e| matches!(e, Error::ResidualMismatch { .. }),
        ),
        ("no sum", RmsNormBuffers { sum: None, ..ok }, |e| {
            matches!(e, Error::ResidualMismatch { .. })
        }),
        (
            "sum is the residual",
            RmsNormBuffers {
                sum: Some(BufferRegion::whole(&r)),
                ..ok
            },
            |e| {
                matches!(
                    e,
                    Error::AliasedOutput {
                        written: "sum",
                        other: "residual"
                    }
                )
            },
        ),
        (
            "sum past the end",
            RmsNormBuffers {
                sum: Some(BufferRegion {
                    buffer: &sum,
                    offset: 34,
                }),
                ..ok
            },
            |e| matches!(e, Error::BufferTooSmall { which: "sum", .. }),
        ),
    ];
    for (what, buffers, expected) in cases {
        match encode(&buffers) {
            Err(e) => assert!(expected(&e), "{what}: {e}"),
            Ok(()) => panic!("{what}: accepted"),
        }
    }
}

/// The stored sum on every kernel path: the first pass stores h and later passes read it
/// back (over r, when in place), so each path is run with h stored apart and in place: two
/// passes, the rescaled sum of huge and tiny rows (a second look that must read h back, not
/// x + h), split rows (dispatch 2 reads what dispatch 1 stored), read-once rows, pRMSNorm's
/// tail (stored in the last pass), and LayerNorm.
#[test]
fn the_stored_sum_is_right_on_every_path() {
    let Some(turn) = gpu() else { return };
    let paths = [
        ("default", KernelOptions::default()),
        (
            "split",
            KernelOptions {
                split_rows: Some(true),
                ..KernelOptions::default()
            },
        ),
        (
            "read once",
            KernelOptions {
                read_once: Some(true),
                ..KernelOptions::default()
            },
        ),
        (
            "one row per invocation",
            KernelOptions::with_reduction(Reduction::PerInvocation),
        ),
    ];
    for (path, options) in &paths {
        for residual in [Residual::AddStoreSum, Residual::AddStoreSumInPlace] {
            for (scale, partial) in [
                (1.0, PartialRms::Full),
                (1e25, PartialRms::Full),
                (1e-25, PartialRms::Fraction(0.25)),
                (1.0, PartialRms::Count(3)),
            ] {
                let config = RmsNormConfig::new(1000)
                    .with_partial(partial)
                    .with_gain(Gain::Scale)
                    .with_residual(residual);
                let what = format!("{path} {residual:?} scale {scale:e} {partial:?}");
                let mut call = Call::new(&config, 3, 9, [0, 4, 8, 12, 0, 0]);
                call.x.iter_mut().for_each(|v| *v *= scale);
                call.r.iter_mut().for_each(|v| *v *= scale);
                let kernel = RmsNorm::new(turn.device(), &config, options).expect(&what);
                let written = call.run(&turn, &kernel, &config);
                let input = call.input(&config);
                let expected =
                    reference::rms_norm(&input, &config, call.gain.as_deref(), None).unwrap();
                call.check(&written, &config, &expected, &what);
            }
            // LayerNorm reads three elements for its shift before any invocation stores h.
            let config = RmsNormConfig::new(1000).with_residual(residual);
            let layer = LayerNormConfig::new(1000).with_residual(residual);
            let kernel = LayerNorm::new(turn.device(), &layer, options).expect(path);
            let call = Call::new(&config, 3, 10, [0; 6]);
            let written = call.run(&turn, &kernel, &config);
            let expected = reference::layer_norm(&call.input(&config), &layer, None, None).unwrap();
            call.check(
                &written,
                &config,
                &expected,
                &format!("LayerNorm {path} {residual:?}"),
            );
        }
    }
}

/// The high-level API's buffers for the smallest calls: one element, with and without the
/// residual, in turn (the staging buffer must hold the output and the sum).
#[test]
fn the_smallest_residual_calls_work() {
    let Some(turn) = gpu() else { return };
    let plain = RmsNormConfig::new(1).with_eps(0.0);
    let y = turn
        .rms_norm_blocking(&[2.0f32], &plain, Weights::NONE)
        .unwrap();
    assert_eq!(y, [1.0]);
    for residual in [Residual::AddStoreSum, Residual::AddStoreSumInPlace] {
        let config = plain.with_residual(residual);
        let out = turn
            .rms_norm_residual_blocking(&[2.0f32], &[1.0], &config, Weights::NONE)
            .unwrap();
        assert_eq!(
            (out.output, out.sum),
            (vec![1.0], Some(vec![3.0])),
            "{residual:?}"
        );
        let config = config.with_dtype(DType::F16);
        let x = [f16::from_f32(-2.0)];
        let out = turn
            .rms_norm_residual_blocking(&x, &[f16::from_f32(0.5)], &config, Weights::NONE)
            .unwrap();
        assert_eq!(out.output, [f16::from_f32(-1.0)], "{residual:?}");
        assert_eq!(out.sum, Some(vec![f16::from_f32(-1.5)]), "{residual:?}");
    }
}
