//! The library in a browser: headless Chromium on SwiftShader's WebGPU, through
//! wasm-bindgen-test (`cargo xtask test` runs it; see webdriver.json for the flags).
#![cfg(target_arch = "wasm32")]

use js_sys::{Float32Array, Object, Reflect, Uint16Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;
use wgpu_rmsnorm::reference::{self, F32_ABS_TOL, F32_REL_TOL};
use wgpu_rmsnorm::web::Normalizer;
use wgpu_rmsnorm::{
    bf16, f16, DType, Element, EpsMode, Gain, GpuContext, KernelOptions, LayerNormConfig,
    PartialRms, Reduction, Residual, RmsNormConfig, Weights,
};

wasm_bindgen_test_configure!(run_in_browser);

/// The context, or `None` with a loud message; with REQUIRE_GPU=1 at build time a missing
/// WebGPU fails the test.
async fn gpu(options: KernelOptions) -> Option<GpuContext> {
    match GpuContext::with_adapter_choice(&Default::default(), options).await {
        Ok(gpu) => Some(gpu.with_call_timing(true)),
        Err(e) if option_env!("REQUIRE_GPU") == Some("1") => panic!("REQUIRE_GPU=1 but: {e}"),
        Err(e) => {
            web_sys::console::log_1(&format!("*** BROWSER GPU TESTS SKIPPED: {e} ***").into());
            None
        }
    }
}

/// A Float32Array holding `values`: what the JS API takes.
fn js(values: &[f32]) -> JsValue {
    Float32Array::from(values).into()
}

fn data(len: usize, seed: u64) -> Vec<f32> {
    reference::sample_data(len, seed, 3.0)
}

fn check(
    y: &[f32],
    x: &[f32],
    config: &RmsNormConfig,
    gain: Option<&[f32]>,
    bias: Option<&[f32]>,
    what: &str,
) {
    let expected = reference::rms_norm(x, config, gain, bias).unwrap();
    let stats = reference::compare(y, &expected, F32_ABS_TOL, F32_REL_TOL);
    assert_eq!(stats.failures, 0, "{what}: {stats:?}");
}

#[wasm_bindgen_test]
async fn the_backend_is_the_browsers_webgpu() {
    let Some(gpu) = gpu(KernelOptions::default()).await else {
        return;
    };
    assert_eq!(gpu.adapter_info().backend, wgpu::Backend::BrowserWebGpu);
}

#[wasm_bindgen_test]
async fn core_cases_match_the_reference() {
    for reduction in [
        Reduction::Auto,
        Reduction::WorkgroupTree,
        Reduction::PerInvocation,
    ] {
        // CPU-sized and GPU-sized workgroups (GPU-sized reads x once), split rows.
        for (cpu_adapter, split_rows, read_once) in [
            (Some(true), None, None),
            (Some(false), None, None),
            (None, Some(true), None),
            (Some(true), None, Some(true)),
        ] {
            // One row per invocation neither splits rows nor reads them once.
            if reduction == Reduction::PerInvocation && (split_rows, read_once) != (None, None) {
                continue;
            }
            let options = KernelOptions {
                reduction,
                cpu_adapter,
                split_rows,
                read_once,
                ..KernelOptions::default()
            };
            let Some(gpu) = gpu(options).await else {
                return;
            };
            for n in [1u32, 3, 4, 5, 33, 256, 257, 1024, 4097] {
                for rows in [1usize, 3, 17] {
                    let x = data(rows * n as usize, u64::from(n) + rows as u64);
                    for partial in [
                        PartialRms::Full,
                        PartialRms::Fraction(1.0 / 16.0),
                        PartialRms::Count(1),
                    ] {
                        let config = RmsNormConfig::new(n).with_partial(partial);
                        let y = gpu.rms_norm(&x, &config, Weights::NONE).await.unwrap();
                        check(
                            &y,
                            &x,
                            &config,
                            None,
                            None,
                            &format!("{options:?} {rows}x{n} {partial:?}"),
                        );
                    }
                }
            }
        }
    }
}

/// LayerNorm one row per invocation (the default for SwiftShader's short rows), split rows
/// and read-once (a GPU's default), with gain and bias, against the reference.
#[wasm_bindgen_test]
async fn layer_norm_per_invocation_and_split_rows() {
    for (reduction, split_rows, read_once) in [
        (Reduction::PerInvocation, None, None),
        (Reduction::Auto, Some(true), None),
        (Reduction::Auto, None, Some(true)),
    ] {
        let options = KernelOptions {
            reduction,
            split_rows,
            read_once,
            cpu_adapter: Some(true),
            ..KernelOptions::default()
        };
        let Some(gpu) = gpu(options).await else {
            return;
        };
        for (rows, n) in [(17usize, 9u32), (5, 256), (3, 4097), (1, 65536)] {
            if reduction == Reduction::PerInvocation && n > 4097 {
                continue;
            }
            let x = data(rows * n as usize, u64::from(n));
            let (g, b) = (data(n as usize, 1), data(n as usize, 2));
            let config = LayerNormConfig::new(n)
                .with_gain(Gain::Scale)
                .with_bias(true);
            let weights = Weights {
                gain: Some(&g),
                bias: Some(&b),
            };
            let y = gpu.layer_norm(&x, &config, weights).await.unwrap();
            let expected = reference::layer_norm(&x, &config, Some(&g), Some(&b)).unwrap();
            let stats = reference::compare(&y, &expected, F32_ABS_TOL, F32_REL_TOL);
            assert_eq!(
                stats.failures, 0,
                "{reduction:?} read-once {read_once:?} {rows} x {n}: {stats:?}"
            );
        }
    }
}

#[wasm_bindgen_test]
async fn eps_modes_gain_bias_and_properties() {
    let Some(gpu) = gpu(KernelOptions::default()).await else {
        return;
    };
    let n = 300u32;
    let g = data(n as usize, 1);
    let b = data(n as usize, 2);
    let mut x = data(4 * n as usize, 3);
    x[n as usize..2 * n as usize].fill(0.0);
    for eps_mode in [EpsMode::InsideRoot, EpsMode::AddedToRms] {
        for eps in [0.0, 1e-6] {
            for gain in [Gain::None, Gain::Scale, Gain::UnitOffset] {
                let config = RmsNormConfig::new(n)
                    .with_eps(eps)
                    .with_eps_mode(eps_mode)
                    .with_gain(gain)
                    .with_bias(true);
                let weights = Weights {
                    gain: (gain != Gain::None).then_some(&g[..]),
                    bias: Some(&b),
                };
                let y = gpu.rms_norm(&x, &config, weights).await.unwrap();
                check(
                    &y,
                    &x,
                    &config,
                    weights.gain,
                    weights.bias,
                    &format!("{eps_mode:?} {eps} {gain:?}"),
                );
                // The zero row is exactly the bias.
                assert_eq!(&y[n as usize..2 * n as usize], &b[..]);
            }
        }
    }
    // Re-scaling invariance (eps = 0), and rows of extreme magnitude.
    let config = RmsNormConfig::new(n).with_eps(0.0);
    let x = data(2 * n as usize, 4);
    let y = gpu.rms_norm(&x, &config, Weights::NONE).await.unwrap();
    for scale in [1024.0f32, 1e20, 1e-20] {
        let scaled: Vec<f32> = x.iter().map(|v| v * scale).collect();
        let ys = gpu.rms_norm(&scaled, &config, Weights::NONE).await.unwrap();
        check(
            &ys,
            &scaled,
            &config,
            None,
            None,
            &format!("scale {scale:e}"),
        );
        let worst = y
            .iter()
            .zip(&ys)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "scale {scale:e}: {worst}");
    }
    if gpu
        .device()
        .features()
        .contains(wgpu::Features::TIMESTAMP_QUERY)
    {
        assert!(gpu.last_gpu_seconds().is_some());
    }
}

fn options(pairs: &[(&str, JsValue)]) -> JsValue {
    let object = Object::new();
    for (key, value) in pairs {
        Reflect::set(&object, &(*key).into(), value).unwrap();
    }
    object.into()
}

/// Awaits a promise from the JS API and returns its rejection message.
async fn rejection(promise: js_sys::Promise) -> String {
    let error = JsFuture::from(promise)
        .await
        .expect_err("the promise must reject");
    let error: js_sys::Error = error.dyn_into().expect("an Error object");
    String::from(error.message())
}

#[wasm_bindgen_test]
async fn the_js_api_computes_and_rejects_bad_input() {
    let normalizer = match Normalizer::create(JsValue::UNDEFINED).await {
        Ok(n) => n,
        Err(e) if option_env!("REQUIRE_GPU") == Some("1") => {
            panic!(
                "REQUIRE_GPU=1 but Normalizer.create failed: {:?}",
                JsValue::from(e)
            )
        }
        Err(_) => return,
    };
    let info = normalizer.adapter_info();
    let backend = Reflect::get(&info, &"backend".into())
        .unwrap()
        .as_string()
        .unwrap();
    assert_eq!(backend, "BrowserWebGpu");

    let x = data(3 * 8, 9);
    let y = JsFuture::from(normalizer.p_rms_norm(js(&x), 8.0, options(&[("k", 3.into())])))
        .await
        .unwrap();
    let y = y.dyn_into::<Float32Array>().unwrap().to_vec();
    check(
        &y,
        &x,
        &RmsNormConfig::new(8).with_partial(PartialRms::Count(3)),
        None,
        None,
        "JS pRmsNorm",
    );

    // LayerNorm through the JS API, against its reference.
    let y = JsFuture::from(normalizer.layer_norm(js(&x), 8.0, JsValue::UNDEFINED))
        .await
        .unwrap();
    let y = y.dyn_into::<Float32Array>().unwrap().to_vec();
    let expected =
        reference::layer_norm(&x, &wgpu_rmsnorm::LayerNormConfig::new(8), None, None).unwrap();
    let stats = reference::compare(&y, &expected, F32_ABS_TOL, F32_REL_TOL);
    assert_eq!(stats.failures, 0, "JS layerNorm: {stats:?}");
    for (what, bad) in [
        ("p", options(&[("p", 0.5.into())])),
        ("epsMode", options(&[("epsMode", "add".into())])),
    ] {
        let message = rejection(normalizer.layer_norm(js(&x), 8.0, bad)).await;
        assert!(
            message.contains(&format!("layerNorm takes no {what}")),
            "{message}"
        );
    }

    let gain = Float32Array::from(&[1.0f32; 8][..]);
    let short = Float32Array::from(&[1.0f32; 7][..]);
    let cases: Vec<(&str, js_sys::Promise, &str)> = vec![
        (
            "hidden 0",
            normalizer.rms_norm(js(&x), 0.0, JsValue::UNDEFINED),
            "hidden size is 0",
        ),
        (
            "length",
            normalizer.rms_norm(js(&x), 5.0, JsValue::UNDEFINED),
            "not a multiple of the hidden size 5",
        ),
        (
            "p 0",
            normalizer.p_rms_norm(js(&x), 8.0, options(&[("p", 0.into())])),
            "outside (0, 1]",
        ),
        (
            "p NaN",
            normalizer.p_rms_norm(js(&x), 8.0, options(&[("p", f64::NAN.into())])),
            "outside (0, 1]",
        ),
        (
            "k 9",
            normalizer.p_rms_norm(js(&x), 8.0, options(&[("k", 9.into())])),
            "k = 9 is outside 1..=8",
        ),
        (
            "k 1.5",
            normalizer.p_rms_norm(js(&x), 8.0, options(&[("k", 1.5.into())])),
            "whole number",
        ),
        (
            "p and k",
            normalizer.p_rms_norm(js(&x), 8.0, options(&[("p", 0.5.into()), ("k", 2.into())])),
            "not both",
        ),
        (
            "neither",
            normalizer.p_rms_norm(js(&x), 8.0, JsValue::UNDEFINED),
            "needs",
        ),
        (
            "p in rmsNorm",
            normalizer.rms_norm(js(&x), 8.0, options(&[("p", 0.5.into())])),
            "call pRmsNorm",
        ),
        (
            "eps -1",
            normalizer.rms_norm(js(&x), 8.0, options(&[("eps", (-1).into())])),
            "eps = -1",
        ),
        (
            "eps text",
            normalizer.rms_norm(js(&x), 8.0, options(&[("eps", "big".into())])),
            "eps must be a number",
        ),
        (
            "eps mode",
            normalizer.rms_norm(js(&x), 8.0, options(&[("epsMode", "outside".into())])),
            "epsMode",
        ),
        (
            "gain length",
            normalizer.rms_norm(js(&x), 8.0, options(&[("gain", short.clone().into())])),
            "gain has 7 elements",
        ),
        (
            "gain type",
            normalizer.rms_norm(js(&x), 8.0, options(&[("gain", "g".into())])),
            "Float32Array",
        ),
        (
            "bias length",
            normalizer.rms_norm(js(&x), 8.0, options(&[("bias", short.into())])),
            "bias has 7 elements",
        ),
        (
            "offset without gain",
            normalizer.rms_norm(js(&x), 8.0, options(&[("gainOffset", true.into())])),
            "needs a gain",
        ),
        (
            "gainOffset type",
            normalizer.rms_norm(
                js(&x),
                8.0,
                options(&[("gain", gain.into()), ("gainOffset", 1.into())]),
            ),
            "boolean",
        ),
        (
            "typo",
            normalizer.rms_norm(js(&x), 8.0, options(&[("epsmode", "add".into())])),
            "unknown option \"epsmode\"",
        ),
        (
            "not an object",
            normalizer.rms_norm(js(&x), 8.0, 5.into()),
            "must be an object",
        ),
        // Class 10 of the reliability suite: nothing coerced silently.
        (
            "x a Float64Array",
            normalizer.rms_norm(
                js_sys::Float64Array::from(&[1.0f64; 8][..]).into(),
                8.0,
                JsValue::UNDEFINED,
            ),
            "x must be a Float32Array, not Float64Array",
        ),
        (
            "x an Int32Array",
            normalizer.rms_norm(
                js_sys::Int32Array::from(&[1i32; 8][..]).into(),
                8.0,
                JsValue::UNDEFINED,
            ),
            "not Int32Array",
        ),
        (
            "x a plain array",
            normalizer.rms_norm(
                js_sys::Array::of2(&"a".into(), &1.into()).into(),
                2.0,
                JsValue::UNDEFINED,
            ),
            "not Array",
        ),
        (
            "x a string",
            normalizer.layer_norm("12345678".into(), 8.0, JsValue::UNDEFINED),
            "not string",
        ),
        (
            "hidden negative",
            normalizer.rms_norm(js(&x), -8.0, JsValue::UNDEFINED),
            "hidden must be a whole number from 0 to 4294967295, not -8",
        ),
        (
            "hidden fractional",
            normalizer.p_rms_norm(js(&x), 8.5, options(&[("k", 3.into())])),
            "not 8.5",
        ),
        (
            "eps below f32",
            normalizer.rms_norm(js(&x), 8.0, options(&[("eps", 1e-50.into())])),
            "rounds to 0 in f32",
        ),
        (
            "eps subnormal in f32",
            normalizer.rms_norm(js(&x), 8.0, options(&[("eps", 1e-40.into())])),
            "subnormal",
        ),
        (
            "hidden NaN",
            normalizer.rms_norm(js(&x), f64::NAN, JsValue::UNDEFINED),
            "not NaN",
        ),
    ];
    for (what, promise, expected) in cases {
        let message = rejection(promise).await;
        assert!(
            message.contains(expected),
            "{what}: {message:?} lacks {expected:?}"
        );
        web_sys::console::log_1(&format!("{what}: {message}").into());
    }
    for (what, bad, expected) in [
        (
            "reduction",
            options(&[("reduction", "fast".into())]),
            "option reduction",
        ),
        (
            "workgroup 3",
            options(&[("workgroupSize", 3.into())]),
            "power of two",
        ),
        (
            "workgroup 0.5",
            options(&[("workgroupSize", 0.5.into())]),
            "power of two",
        ),
        (
            "typo",
            options(&[("powerPref", "low-power".into())]),
            "unknown option",
        ),
        (
            "maxWorkgroups 0",
            options(&[("maxWorkgroups", 0.into())]),
            "maxWorkgroups must be a whole number",
        ),
        (
            "workgroup 2048",
            options(&[("workgroupSize", 2048.into())]),
            "power of two from 1 to 1024",
        ),
    ] {
        let error = Normalizer::create(bad)
            .await
            .err()
            .expect("create must reject");
        let message = String::from(
            JsValue::from(error)
                .dyn_into::<js_sys::Error>()
                .unwrap()
                .message(),
        );
        assert!(message.contains(expected), "create {what}: {message:?}");
    }
    // wgpu 30 does not ask browsers for subgroups: forcing them must reject, not fail later.
    let features = Reflect::get(&info, &"features".into()).unwrap();
    if !js_sys::Array::from(&features).includes(&"subgroups".into(), 0) {
        let forced = options(&[("reduction", "subgroups".into())]);
        let error = Normalizer::create(forced).await.err().expect("must reject");
        let message = String::from(
            JsValue::from(error)
                .dyn_into::<js_sys::Error>()
                .unwrap()
                .message(),
        );
        assert!(message.contains("needs subgroups"), "{message}");
    }
    // The empty batch resolves to an empty array.
    let empty = JsFuture::from(normalizer.rms_norm(js(&[]), 8.0, JsValue::UNDEFINED))
        .await
        .unwrap();
    assert_eq!(empty.dyn_into::<Float32Array>().unwrap().length(), 0);
}

/// Values rounded to `T`.
fn rounded<T: Element>(values: &[f32]) -> Vec<T> {
    values.iter().map(|&v| T::from_f32(v)).collect()
}

fn widen<T: Element>(values: &[T]) -> Vec<f32> {
    values.iter().map(|v| v.to_f32()).collect()
}

/// Every activation type with f32 and same-type weights, each residual form, RMSNorm and
/// LayerNorm, odd rows (packed words shared between rows): SwiftShader has no shader-f16,
/// so this is the packed path.
async fn formats_case<T: Element, W: Element>(gpu: &GpuContext, residual: Residual) {
    let (n, rows) = (33usize, 7usize);
    let x: Vec<T> = rounded(&data(n * rows, 3));
    let r: Vec<T> = rounded(&data(n * rows, 4));
    let gain: Vec<W> = rounded(&data(n, 5));
    let weights = Weights {
        gain: Some(&gain[..]),
        bias: None,
    };
    let config = RmsNormConfig::new(n as u32)
        .with_dtype(T::DTYPE)
        .with_weight_dtype(W::DTYPE)
        .with_gain(Gain::Scale)
        .with_residual(residual);
    let what = format!("{} weights {} {residual:?}", T::DTYPE, W::DTYPE);
    let h = reference::residual_sum(&widen(&x), &widen(&r), T::DTYPE);
    let out = gpu
        .rms_norm_residual(&x, &r, &config, weights)
        .await
        .unwrap();
    let expected = reference::rms_norm(&h, &config, Some(&widen(&gain)), None).unwrap();
    assert_rounded(&out.output, &expected, &what);
    if residual.stores_sum() {
        assert_eq!(widen(out.sum.as_ref().unwrap()), h, "{what}: sum");
    }
    let layer = LayerNormConfig::new(n as u32)
        .with_dtype(T::DTYPE)
        .with_weight_dtype(W::DTYPE)
        .with_gain(Gain::Scale)
        .with_residual(residual);
    let out = gpu
        .layer_norm_residual(&x, &r, &layer, weights)
        .await
        .unwrap();
    let expected = reference::layer_norm(&h, &layer, Some(&widen(&gain)), None).unwrap();
    assert_rounded(&out.output, &expected, &format!("LayerNorm {what}"));
}

/// Outputs of `T` must be roundings of values within the f32 tolerance of `expected`.
fn assert_rounded<T: Element>(output: &[T], expected: &[f64], what: &str) {
    let stats =
        reference::compare_rounded(&widen(output), expected, T::DTYPE, F32_ABS_TOL, F32_REL_TOL);
    assert_eq!(stats.failures, 0, "{what}: {stats:?}");
}

#[wasm_bindgen_test]
async fn f16_bf16_and_the_residual_match_the_reference() {
    let Some(gpu) = gpu(KernelOptions::default()).await else {
        return;
    };
    for residual in [
        Residual::Add,
        Residual::AddStoreSum,
        Residual::AddStoreSumInPlace,
    ] {
        formats_case::<f16, f16>(&gpu, residual).await;
        formats_case::<f16, f32>(&gpu, residual).await;
        formats_case::<bf16, bf16>(&gpu, residual).await;
        formats_case::<bf16, f32>(&gpu, residual).await;
        formats_case::<f32, f16>(&gpu, residual).await;
    }
}

/// The JS API takes f16 and bf16 as Uint16Array bits and gives the same type back; the
/// residual call resolves to the output and the sum.
#[wasm_bindgen_test]
async fn the_js_api_takes_16_bit_tensors_and_the_residual() {
    let Ok(normalizer) = Normalizer::create(JsValue::UNDEFINED).await else {
        assert_ne!(option_env!("REQUIRE_GPU"), Some("1"), "no WebGPU");
        return;
    };
    let n = 9;
    let values = data(4 * n, 21);
    let residual = data(4 * n, 22);
    for dtype in [DType::F16, DType::Bf16] {
        let bits = |v: &[f32]| -> Vec<u16> {
            v.iter()
                .map(|&f| match dtype {
                    DType::F16 => f16::from_f32(f).to_bits(),
                    _ => bf16::from_f32(f).to_bits(),
                })
                .collect()
        };
        let widen_bits = |b: &[u16]| -> Vec<f32> {
            b.iter()
                .map(|&u| match dtype {
                    DType::F16 => f16::from_bits(u).to_f32(),
                    _ => bf16::from_bits(u).to_f32(),
                })
                .collect()
        };
        let (x_bits, r_bits) = (bits(&values), bits(&residual));
        let js_bits = |b: &[u16]| -> JsValue { Uint16Array::from(b).into() };
        let gain = Float32Array::from(&data(n, 23)[..]);
        let opts = options(&[
            ("dtype", dtype.name().into()),
            ("weightDtype", "f32".into()),
            ("gain", gain.clone().into()),
            ("k", 4.into()),
        ]);
        let result = JsFuture::from(normalizer.rms_norm_residual(
            js_bits(&x_bits),
            js_bits(&r_bits),
            n as f64,
            opts.clone(),
        ))
        .await
        .unwrap();
        let field = |key: &str| -> Vec<u16> {
            Reflect::get(&result, &key.into())
                .unwrap()
                .dyn_into::<Uint16Array>()
                .expect("a Uint16Array")
                .to_vec()
        };
        let h = reference::residual_sum(&widen_bits(&x_bits), &widen_bits(&r_bits), dtype);
        assert_eq!(widen_bits(&field("sum")), h, "{dtype}: sum");
        let config = RmsNormConfig::new(n as u32)
            .with_dtype(dtype)
            .with_weight_dtype(DType::F32)
            .with_gain(Gain::Scale)
            .with_partial(PartialRms::Count(4));
        let expected = reference::rms_norm(&h, &config, Some(&gain.to_vec()), None).unwrap();
        let stats = reference::compare_rounded(
            &widen_bits(&field("output")),
            &expected,
            dtype,
            F32_ABS_TOL,
            F32_REL_TOL,
        );
        assert_eq!(stats.failures, 0, "JS {dtype}: {stats:?}");
        // The JS reference and comparison say the same.
        let js_expected = wgpu_rmsnorm::web::reference_rms_norm(
            js_bits(&x_bits),
            n as f64,
            opts.clone(),
            js_bits(&r_bits),
        )
        .unwrap()
        .to_vec();
        assert_eq!(js_expected, expected, "{dtype}: referenceRmsNorm");
        let compared = wgpu_rmsnorm::web::compare_to_reference(
            js_bits(&field("output")),
            &expected,
            dtype.name().into(),
        )
        .unwrap();
        let pass = Reflect::get(&compared, &"pass".into()).unwrap();
        assert_eq!(pass.as_bool(), Some(true), "{dtype}: compareToReference");
    }
    // The browser's Float16Array, where it has one: taken, and given back as one.
    let constructor = Reflect::get(&js_sys::global(), &"Float16Array".into()).unwrap();
    if let Ok(constructor) = constructor.dyn_into::<js_sys::Function>() {
        let bits: Vec<u16> = values.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
        let array = Uint16Array::from(&bits[..]);
        let halves =
            Reflect::construct(&constructor, &js_sys::Array::of1(&array.buffer())).unwrap();
        let f16_options = options(&[("dtype", "f16".into())]);
        let from_halves =
            JsFuture::from(normalizer.rms_norm(halves, n as f64, f16_options.clone()))
                .await
                .unwrap();
        let name = Reflect::get(
            &Reflect::get(&from_halves, &"constructor".into()).unwrap(),
            &"name".into(),
        )
        .unwrap();
        assert_eq!(name.as_string().as_deref(), Some("Float16Array"));
        let buffer = Reflect::get(&from_halves, &"buffer".into()).unwrap();
        let out_bits = Uint16Array::new(&buffer).to_vec();
        let from_bits = JsFuture::from(normalizer.rms_norm(array.into(), n as f64, f16_options))
            .await
            .unwrap()
            .dyn_into::<Uint16Array>()
            .unwrap()
            .to_vec();
        assert_eq!(
            out_bits, from_bits,
            "Float16Array and Uint16Array give the same bits"
        );
    } else {
        web_sys::console::log_1(&"this browser has no Float16Array: not tested".into());
    }
    let cases: Vec<(&str, js_sys::Promise, &str)> = vec![
        (
            "f16 as a Float32Array",
            normalizer.rms_norm(js(&values), n as f64, options(&[("dtype", "f16".into())])),
            "x must be a Float16Array or a Uint16Array of f16 bits, not Float32Array",
        ),
        (
            "dtype f64",
            normalizer.rms_norm(js(&values), n as f64, options(&[("dtype", "f64".into())])),
            "option dtype must be",
        ),
        (
            "residual of another length",
            normalizer.rms_norm_residual(
                js(&values),
                js(&values[1..]),
                n as f64,
                JsValue::UNDEFINED,
            ),
            "residual must have as many elements as x",
        ),
        (
            "bf16 gain as a Float32Array",
            normalizer.rms_norm(
                Uint16Array::new_with_length(n as u32).into(),
                n as f64,
                options(&[("dtype", "bf16".into()), ("gain", js(&values[..n]))]),
            ),
            "option gain must be a Uint16Array of bf16 bits",
        ),
    ];
    for (what, promise, expected) in cases {
        let message = rejection(promise).await;
        assert!(message.contains(expected), "{what}: {message:?}");
    }
}

/// The formats benchmark runs in the browser: every contestant checked against the
/// reference, then timed (its table goes to the console), at an aligned hidden size and at
/// an odd one (rows at any element, tensors padded to whole vec4s for the copies and adds).
#[wasm_bindgen_test]
async fn the_formats_benchmark_runs() {
    let Some(gpu) = gpu(KernelOptions::default()).await else {
        return;
    };
    let timer = wgpu_rmsnorm::timing::GpuTimer::wall_clock();
    let options = wgpu_rmsnorm::bench::BenchOptions {
        samples: 3,
        min_sample_seconds: 0.02,
    };
    for (rows, hidden) in [(64, 1024), (31, 1023)] {
        let measured = wgpu_rmsnorm::bench::bench_formats(&gpu, &timer, rows, hidden, &options)
            .await
            .unwrap();
        assert_eq!(
            measured.len(),
            3 * 5,
            "per dtype: 2 copies, RMSNorm, fused, unfused"
        );
        for m in &measured {
            web_sys::console::log_1(
                &format!(
                    "{rows} x {hidden} {} {} {} {}: {:.3} ms, sol_kernel {:.2}",
                    m.kernel,
                    m.dtype,
                    m.residual,
                    m.variant,
                    m.seconds * 1e3,
                    m.sol_kernel
                )
                .into(),
            );
            assert!(m.seconds > 0.0 && m.gbps.is_finite(), "{m:?}");
            if m.kernel == "RMSNorm" {
                let masked = m.variant.contains("vec4 masked edges");
                assert_eq!(masked, hidden % 4 != 0, "{m:?}");
            }
        }
    }
}

/// The backward in the browser through the Rust API: RMSNorm, pRMSNorm and LayerNorm, f32
/// and f16, dx, dgain and dbias against the f64 reference, norm-wise; dgain the same bits
/// twice.
#[wasm_bindgen_test]
async fn the_backward_matches_the_reference() {
    use wgpu_rmsnorm::reference::{compare_normwise, BACKWARD_TOL};
    use wgpu_rmsnorm::BackwardInputs;
    let Some(gpu) = gpu(KernelOptions::default()).await else {
        return;
    };
    for (rows, hidden) in [(7u32, 257u32), (33, 1024)] {
        let n = hidden as usize;
        let len = rows as usize * n;
        for dtype in [DType::F32, DType::F16] {
            let round = |v: Vec<f32>| v.into_iter().map(|e| dtype.round(e)).collect::<Vec<f32>>();
            let x = round(data(len, 3));
            let dy = round(reference::sample_data(len, 4, 1.0));
            let gain: Vec<f32> = data(n, 5);
            for which in ["RMSNorm", "pRMSNorm", "LayerNorm"] {
                let config = RmsNormConfig::new(hidden)
                    .with_dtype(dtype)
                    .with_weight_dtype(DType::F32)
                    .with_gain(Gain::Scale)
                    .with_bias(true)
                    .with_partial(if which == "pRMSNorm" {
                        PartialRms::Fraction(0.0625)
                    } else {
                        PartialRms::Full
                    });
                let layer = LayerNormConfig::new(hidden)
                    .with_dtype(dtype)
                    .with_weight_dtype(DType::F32)
                    .with_gain(Gain::Scale)
                    .with_bias(true);
                let xs: Vec<f16> = rounded(&x);
                let dys: Vec<f16> = rounded(&dy);
                let run = || async {
                    let (dx, dgain, dbias) = match (which, dtype) {
                        ("LayerNorm", DType::F32) => {
                            let g = gpu
                                .layer_norm_backward(
                                    BackwardInputs::new(&x, &dy),
                                    &layer,
                                    Some(&gain[..]),
                                )
                                .await
                                .unwrap();
                            (g.grad_input, g.grad_gain, g.grad_bias)
                        }
                        ("LayerNorm", _) => {
                            let g = gpu
                                .layer_norm_backward(
                                    BackwardInputs::new(&xs, &dys),
                                    &layer,
                                    Some(&gain[..]),
                                )
                                .await
                                .unwrap();
                            (widen(&g.grad_input), g.grad_gain, g.grad_bias)
                        }
                        (_, DType::F32) => {
                            let g = gpu
                                .rms_norm_backward(
                                    BackwardInputs::new(&x, &dy),
                                    &config,
                                    Some(&gain[..]),
                                )
                                .await
                                .unwrap();
                            (g.grad_input, g.grad_gain, g.grad_bias)
                        }
                        _ => {
                            let g = gpu
                                .rms_norm_backward(
                                    BackwardInputs::new(&xs, &dys),
                                    &config,
                                    Some(&gain[..]),
                                )
                                .await
                                .unwrap();
                            (widen(&g.grad_input), g.grad_gain, g.grad_bias)
                        }
                    };
                    (dx, dgain.unwrap(), dbias.unwrap())
                };
                let (dx, dgain, dbias) = run().await;
                let expected = if which == "LayerNorm" {
                    reference::layer_norm_backward(&x, &dy, &layer, Some(&gain), None)
                } else {
                    reference::rms_norm_backward(&x, &dy, &config, Some(&gain), None)
                }
                .unwrap();
                let what = format!("{which} {rows} x {hidden} {dtype}");
                let stats = compare_normwise(
                    &dx,
                    &expected.dx,
                    &expected.dx_scale,
                    n,
                    dtype,
                    BACKWARD_TOL,
                );
                assert_eq!(stats.failures, 0, "{what} dx: {stats:?}");
                let f32_type = DType::F32;
                let g = expected.dgain.as_ref().unwrap();
                let stats =
                    compare_normwise(&dgain, g, &expected.dgain_scale, 1, f32_type, BACKWARD_TOL);
                assert_eq!(stats.failures, 0, "{what} dgain: {stats:?}");
                let b = expected.dbias.as_ref().unwrap();
                let stats =
                    compare_normwise(&dbias, b, &expected.dbias_scale, 1, f32_type, BACKWARD_TOL);
                assert_eq!(stats.failures, 0, "{what} dbias: {stats:?}");
                let (_, again, _) = run().await;
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
                assert_eq!(bits(&dgain), bits(&again), "{what}: dgain run to run");
            }
        }
    }
}

/// rmsNormBackward, pRMSNorm through it, layerNormBackward and the residual form through
/// the JS API, checked with its own referenceRmsNormBackward and compareGradient; bad
/// input rejected with a message.
#[wasm_bindgen_test]
async fn the_js_backward_computes_and_rejects_bad_input() {
    use wgpu_rmsnorm::web::{
        compare_gradient, reference_layer_norm_backward, reference_rms_norm_backward,
    };
    let Ok(normalizer) = Normalizer::create(JsValue::UNDEFINED).await else {
        assert!(
            option_env!("REQUIRE_GPU") != Some("1"),
            "Normalizer.create failed"
        );
        return;
    };
    let hidden = 48usize;
    let x = data(5 * hidden, 21);
    let dy = data(5 * hidden, 22);
    let dsum = data(5 * hidden, 23);
    let gain = data(hidden, 24);
    let bias = data(hidden, 25);
    let get = |object: &JsValue, key: &str| Reflect::get(object, &key.into()).unwrap();
    let floats = |v: JsValue| v.dyn_into::<js_sys::Float64Array>().unwrap().to_vec();
    let cases = [
        (
            "rmsNorm",
            vec![("gain", js(&gain)), ("bias", js(&bias))],
            false,
        ),
        (
            "pRmsNorm",
            vec![("gain", js(&gain)), ("k", 5.into())],
            false,
        ),
        (
            "layerNorm",
            vec![("gain", js(&gain)), ("bias", js(&bias))],
            false,
        ),
        (
            "rmsNormResidual",
            vec![("gain", js(&gain)), ("gainOffset", true.into())],
            true,
        ),
    ];
    for (what, pairs, residual) in cases {
        let opts = options(&pairs);
        let grad_sum = if residual {
            js(&dsum)
        } else {
            JsValue::UNDEFINED
        };
        let layer = what == "layerNorm";
        let promise = if layer {
            normalizer.layer_norm_backward(
                js(&x),
                js(&dy),
                hidden as f64,
                opts.clone(),
                grad_sum.clone(),
            )
        } else {
            normalizer.rms_norm_backward(
                js(&x),
                js(&dy),
                hidden as f64,
                opts.clone(),
                grad_sum.clone(),
            )
        };
        let got = JsFuture::from(promise).await.unwrap();
        let expected = if layer {
            reference_layer_norm_backward(js(&x), js(&dy), hidden as f64, opts, grad_sum)
        } else {
            reference_rms_norm_backward(js(&x), js(&dy), hidden as f64, opts, grad_sum)
        }
        .unwrap();
        for (key, scale, group) in [
            ("gradInput", "gradInputScale", hidden),
            ("gradGain", "gradGainScale", 1),
            ("gradBias", "gradBiasScale", 1),
        ] {
            let (actual, want) = (get(&got, key), get(&expected, key));
            assert_eq!(
                actual.is_undefined(),
                want.is_undefined(),
                "{what} {key} present"
            );
            if actual.is_undefined() {
                continue;
            }
            let result = compare_gradient(
                actual,
                &floats(want),
                &floats(get(&expected, scale)),
                group as f64,
                JsValue::UNDEFINED,
            )
            .unwrap();
            assert_eq!(get(&result, "pass").as_bool(), Some(true), "{what} {key}");
        }
    }
    // Bad input: dy of another length, an unknown option, a gradSum of another type.
    let short = js(&dy[..hidden]);
    let message = rejection(normalizer.rms_norm_backward(
        js(&x),
        short,
        hidden as f64,
        JsValue::UNDEFINED,
        JsValue::UNDEFINED,
    ))
    .await;
    assert!(message.contains("grad_output"), "{message}");
    let message = rejection(normalizer.rms_norm_backward(
        js(&x),
        js(&dy),
        hidden as f64,
        options(&[("gian", js(&gain))]),
        JsValue::UNDEFINED,
    ))
    .await;
    assert!(message.contains("unknown option"), "{message}");
    let message = rejection(normalizer.layer_norm_backward(
        js(&x),
        js(&dy),
        hidden as f64,
        JsValue::UNDEFINED,
        Uint16Array::new_with_length(x.len() as u32).into(),
    ))
    .await;
    assert!(message.contains("gradSum"), "{message}");
}

/// Awaits a promise from the JS API that must resolve.
async fn resolved(promise: js_sys::Promise) -> JsValue {
    match JsFuture::from(promise).await {
        Ok(value) => value,
        Err(e) => panic!("the promise rejected: {e:?}"),
    }
}

/// Reads a GpuTensor (a JS object) back as f32 values.
async fn read_tensor(tensor: &JsValue) -> Vec<f32> {
    let read: js_sys::Function = Reflect::get(tensor, &"read".into())
        .unwrap()
        .dyn_into()
        .unwrap();
    let promise: js_sys::Promise = read.call0(tensor).unwrap().dyn_into().unwrap();
    let values = resolved(promise).await;
    values.dyn_into::<Float32Array>().unwrap().to_vec()
}

/// Calls a method of a JS object and returns what it returned (or threw).
fn call_method(object: &JsValue, method: &str, args: &[JsValue]) -> Result<JsValue, JsValue> {
    let function: js_sys::Function = Reflect::get(object, &method.into())?.dyn_into()?;
    Reflect::apply(&function, object, &args.iter().collect())
}

async fn resident_normalizer() -> Option<Normalizer> {
    match Normalizer::create(JsValue::UNDEFINED).await {
        Ok(n) => Some(n),
        Err(e) if option_env!("REQUIRE_GPU") == Some("1") => {
            panic!("REQUIRE_GPU=1 but: {:?}", JsValue::from(e))
        }
        Err(_) => None,
    }
}

/// Eight layers (RMSNorm, pRMSNorm, LayerNorm in turn), each `h = x + r; y = norm(h) * g`
/// on the previous layer's output and sum, chained on GpuTensors with no readback; then
/// every step read and checked against the f64 reference of its own inputs.
#[wasm_bindgen_test]
async fn gpu_tensors_chain_eight_layers_without_readback() {
    let Some(gpu) = resident_normalizer().await else {
        return;
    };
    let (rows, hidden) = (16usize, 260u32);
    let n = hidden as usize;
    let x0 = data(rows * n, 40);
    let r0 = data(rows * n, 41);
    let gains: Vec<Vec<f32>> = (0..8).map(|i| data(n, 50 + i)).collect();
    let layers: Vec<_> = (0..8)
        .map(|i| {
            let gain = Float32Array::from(gains[i].as_slice());
            match i % 3 {
                0 => gpu.rms_norm_layer(260.0, options(&[("gain", gain.into())])),
                1 => {
                    gpu.rms_norm_layer(260.0, options(&[("gain", gain.into()), ("p", 0.25.into())]))
                }
                _ => gpu.layer_norm_layer(260.0, options(&[("gain", gain.into())])),
            }
            .map_err(JsValue::from)
            .unwrap()
        })
        .collect();
    let mut x: JsValue = gpu.tensor(js(&x0), JsValue::UNDEFINED).unwrap().into();
    let mut r: JsValue = gpu.tensor(js(&r0), JsValue::UNDEFINED).unwrap().into();
    let mut steps = vec![(x.clone(), r.clone())];
    for layer in &layers {
        let out = resolved(layer.forward_residual(x.clone(), r.clone())).await;
        x = Reflect::get(&out, &"output".into()).unwrap();
        r = Reflect::get(&out, &"sum".into()).unwrap();
        assert_eq!(options_type(&x), "GpuTensor");
        steps.push((x.clone(), r.clone()));
    }
    for (i, pair) in steps.windows(2).enumerate() {
        let (xi, ri) = (read_tensor(&pair[0].0).await, read_tensor(&pair[0].1).await);
        let (y, h) = (read_tensor(&pair[1].0).await, read_tensor(&pair[1].1).await);
        let sum = reference::residual_sum(&xi, &ri, DType::F32);
        assert_eq!(h, sum, "layer {i}: the stored sum is x + r rounded once");
        let expected = match i % 3 {
            0 => reference::rms_norm(
                &sum,
                &RmsNormConfig::new(hidden).with_gain(Gain::Scale),
                Some(&gains[i]),
                None,
            ),
            1 => reference::rms_norm(
                &sum,
                &RmsNormConfig::new(hidden)
                    .with_gain(Gain::Scale)
                    .with_partial(PartialRms::Fraction(0.25)),
                Some(&gains[i]),
                None,
            ),
            _ => reference::layer_norm(
                &sum,
                &LayerNormConfig::new(hidden).with_gain(Gain::Scale),
                Some(&gains[i]),
                None,
            ),
        }
        .unwrap();
        let stats = reference::compare(&y, &expected, F32_ABS_TOL, F32_REL_TOL);
        assert_eq!(stats.failures, 0, "layer {i}: {stats:?}");
    }
    for (x, r) in &steps {
        call_method(x, "destroy", &[]).unwrap();
        call_method(r, "destroy", &[]).unwrap();
    }
    for layer in &layers {
        layer.destroy();
    }
}

fn options_type(value: &JsValue) -> String {
    let constructor = Reflect::get(value, &"constructor".into()).unwrap();
    Reflect::get(&constructor, &"name".into())
        .unwrap()
        .as_string()
        .unwrap()
}

/// The calls that take typed arrays take GpuTensors too; tensors share the device with the
/// application (its GPUDevice, buffers copied in); bad input is refused with a message.
#[wasm_bindgen_test]
async fn gpu_tensors_share_the_device_and_refuse_bad_input() {
    let Some(gpu) = resident_normalizer().await else {
        return;
    };
    let x = data(4 * 8, 60);
    let gain = data(8, 61);
    let tensor: JsValue = gpu.tensor(js(&x), JsValue::UNDEFINED).unwrap().into();
    assert_eq!(
        Reflect::get(&tensor, &"length".into()).unwrap(),
        JsValue::from(32)
    );
    assert_eq!(
        Reflect::get(&tensor, &"byteLength".into()).unwrap(),
        JsValue::from(128)
    );
    assert_eq!(
        Reflect::get(&tensor, &"dtype".into()).unwrap(),
        JsValue::from("f32")
    );
    let config = RmsNormConfig::new(8).with_gain(Gain::Scale);
    let y = resolved(gpu.rms_norm(tensor.clone(), 8.0, options(&[("gain", js(&gain))]))).await;
    assert_eq!(options_type(&y), "GpuTensor");
    check(
        &read_tensor(&y).await,
        &x,
        &config,
        Some(&gain),
        None,
        "rmsNorm on a GpuTensor",
    );
    let y = resolved(gpu.layer_norm(tensor.clone(), 8.0, JsValue::UNDEFINED)).await;
    let expected = reference::layer_norm(&x, &LayerNormConfig::new(8), None, None).unwrap();
    let stats = reference::compare(&read_tensor(&y).await, &expected, F32_ABS_TOL, F32_REL_TOL);
    assert_eq!(stats.failures, 0, "layerNorm on a GpuTensor: {stats:?}");
    // A layer called with typed arrays gives typed arrays.
    let layer = gpu
        .rms_norm_layer(8.0, options(&[("gain", js(&gain)), ("k", 3.into())]))
        .map_err(JsValue::from)
        .unwrap();
    let y = resolved(layer.forward(js(&x))).await;
    let y = y.dyn_into::<Float32Array>().unwrap().to_vec();
    let partial = config.with_partial(PartialRms::Count(3));
    check(
        &y,
        &x,
        &partial,
        Some(&gain),
        None,
        "layer on a Float32Array",
    );

    // The application's own buffer on gpu.device, copied into a tensor on the GPU.
    let device = gpu.device().map_err(JsValue::from).unwrap();
    assert!(
        Reflect::has(&device, &"queue".into()).unwrap(),
        "a GPUDevice"
    );
    let descriptor = options(&[("size", 256.into()), ("usage", (4 | 8).into())]);
    let buffer = call_method(&device, "createBuffer", &[descriptor]).unwrap();
    let queue = Reflect::get(&device, &"queue".into()).unwrap();
    let mut words = vec![0.0f32; 64];
    words[16..48].copy_from_slice(&x);
    call_method(
        &queue,
        "writeBuffer",
        &[buffer.clone(), 0.into(), js(&words)],
    )
    .unwrap();
    let empty: JsValue = gpu.empty_tensor(32.0, JsValue::UNDEFINED).unwrap().into();
    assert_eq!(read_tensor(&empty).await, vec![0.0; 32]);
    let copied = call_method(&empty, "copyFrom", &[buffer.clone(), 64.into()]).unwrap();
    resolved(copied.dyn_into().unwrap()).await;
    assert_eq!(read_tensor(&empty).await, x);
    call_method(&empty, "write", &[js(&gain.repeat(4))]).unwrap();
    assert_eq!(read_tensor(&empty).await, gain.repeat(4));

    let copy_error = |args: &[JsValue]| {
        let promise = call_method(&empty, "copyFrom", args).unwrap();
        rejection(promise.dyn_into().unwrap())
    };
    assert!(copy_error(&[buffer.clone(), 2.into()])
        .await
        .contains("multiple of 4"));
    assert!(copy_error(&[buffer.clone(), 192.into()])
        .await
        .contains("holds 256 bytes"));
    assert!(copy_error(&["buffer".into()])
        .await
        .contains("must be a GPUBuffer"));
    let no_copy_src = options(&[("size", 256.into()), ("usage", 8.into())]);
    let write_only = call_method(&device, "createBuffer", &[no_copy_src]).unwrap();
    assert!(copy_error(&[write_only]).await.contains("copyFrom failed"));

    let f16_tensor: JsValue = gpu
        .tensor(Uint16Array::from(&[0x3c00u16; 32][..]).into(), "f16".into())
        .unwrap()
        .into();
    let cases = [
        (
            gpu.rms_norm(tensor.clone(), 5.0, JsValue::UNDEFINED),
            "multiple",
        ),
        (
            gpu.rms_norm(f16_tensor.clone(), 8.0, JsValue::UNDEFINED),
            "is a f16 tensor",
        ),
        (
            gpu.rms_norm_residual(tensor.clone(), js(&x), 8.0, JsValue::UNDEFINED),
            "both as GpuTensors",
        ),
        (
            gpu.rms_norm(tensor.clone(), 8.0, options(&[("gain", js(&x))])),
            "gain has 32 elements",
        ),
    ];
    for (promise, expected) in cases {
        let message = rejection(promise).await;
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
    let message = JsValue::from(
        gpu.tensor(Uint16Array::new_with_length(4).into(), JsValue::UNDEFINED)
            .err()
            .unwrap(),
    );
    assert!(format!("{message:?}").contains("pass dtype"), "{message:?}");
    assert!(gpu.empty_tensor(-1.0, JsValue::UNDEFINED).is_err());
    call_method(&tensor, "destroy", &[]).unwrap();
    let message = rejection(gpu.rms_norm(tensor.clone(), 8.0, JsValue::UNDEFINED)).await;
    assert!(message.contains("destroyed"), "{message}");
    let read = call_method(&tensor, "read", &[]).unwrap();
    assert!(rejection(read.dyn_into().unwrap())
        .await
        .contains("destroyed"));
    call_method(&f16_tensor, "free", &[]).unwrap();
    let message =
        rejection(gpu.rms_norm(f16_tensor, 8.0, options(&[("dtype", "f16".into())]))).await;
    assert!(message.contains("freed"), "{message}");
    layer.destroy();
    assert!(rejection(layer.forward(js(&x)))
        .await
        .contains("layer was destroyed"));
}

/// Timestamp queries only when create() asks for them.
#[wasm_bindgen_test]
async fn call_timing_is_opt_in() {
    let Some(gpu) = resident_normalizer().await else {
        return;
    };
    let x = data(64, 70);
    resolved(gpu.rms_norm(js(&x), 8.0, JsValue::UNDEFINED)).await;
    assert_eq!(
        gpu.last_gpu_time_ms(),
        None,
        "no timestamps unless asked for"
    );
    let timed = Normalizer::create(options(&[("timestamps", true.into())]))
        .await
        .map_err(JsValue::from)
        .unwrap();
    resolved(timed.rms_norm(js(&x), 8.0, JsValue::UNDEFINED)).await;
    let features = Reflect::get(&timed.adapter_info(), &"features".into()).unwrap();
    if js_sys::Array::from(&features).includes(&"timestamp-query".into(), 0) {
        assert!(timed.last_gpu_time_ms().is_some());
    }
    let message = Normalizer::create(options(&[("timestamps", 1.into())]))
        .await
        .err()
        .unwrap();
    assert!(format!("{:?}", JsValue::from(message)).contains("timestamps must be a boolean"));
}

/// Calls take their inputs as they are when called (the work is submitted by the call, not
/// later); 16-bit tensors of odd length; a layer with a bias; the residual form on typed
/// arrays; tensors of another Normalizer refused; empty tensors.
#[wasm_bindgen_test]
async fn gpu_tensor_calls_submit_at_the_call() {
    let Some(gpu) = resident_normalizer().await else {
        return;
    };
    let (a, b) = (data(2 * 8, 90), data(2 * 8, 91));
    let t: JsValue = gpu.tensor(js(&a), JsValue::UNDEFINED).unwrap().into();
    let first = gpu.rms_norm(t.clone(), 8.0, JsValue::UNDEFINED);
    call_method(&t, "write", &[js(&b)]).unwrap();
    let second = gpu.rms_norm(t.clone(), 8.0, JsValue::UNDEFINED);
    let read = call_method(&t, "read", &[]).unwrap();
    call_method(&t, "destroy", &[]).unwrap();
    let config = RmsNormConfig::new(8);
    check(
        &read_tensor(&resolved(first).await).await,
        &a,
        &config,
        None,
        None,
        "before write",
    );
    check(
        &read_tensor(&resolved(second).await).await,
        &b,
        &config,
        None,
        None,
        "after write",
    );
    let read = resolved(read.dyn_into().unwrap()).await;
    assert_eq!(
        read.dyn_into::<Float32Array>().unwrap().to_vec(),
        b,
        "read before destroy"
    );
    // A typed array changed after the call does not change it either.
    let x = Float32Array::from(a.as_slice());
    let pending = gpu.rms_norm(x.clone().into(), 8.0, JsValue::UNDEFINED);
    x.fill(0.0, 0, 16);
    let y = resolved(pending)
        .await
        .dyn_into::<Float32Array>()
        .unwrap()
        .to_vec();
    check(
        &y,
        &a,
        &config,
        None,
        None,
        "typed array changed after the call",
    );

    // f16 of odd length: 5 elements, 10 bytes in a 12-byte buffer.
    let bits: Vec<u16> = [1.0f32, -2.0, 0.5, 3.0, -0.25]
        .iter()
        .map(|&v| f16::from_f32(v).to_bits())
        .collect();
    let h: JsValue = gpu
        .tensor(Uint16Array::from(&bits[..]).into(), "f16".into())
        .unwrap()
        .into();
    assert_eq!(
        Reflect::get(&h, &"byteLength".into()).unwrap(),
        JsValue::from(10)
    );
    let back = resolved(call_method(&h, "read", &[]).unwrap().dyn_into().unwrap()).await;
    assert_eq!(back.dyn_into::<Uint16Array>().unwrap().to_vec(), bits);
    let copy: JsValue = gpu.empty_tensor(5.0, "f16".into()).unwrap().into();
    let source = call_method(&h, "destroy", &[]).map(|_| ());
    source.unwrap();
    let device = gpu.device().map_err(JsValue::from).unwrap();
    let descriptor = options(&[("size", 16.into()), ("usage", (4 | 8).into())]);
    let buffer = call_method(&device, "createBuffer", &[descriptor]).unwrap();
    let queue = Reflect::get(&device, &"queue".into()).unwrap();
    let mut words = bits.clone();
    words.extend([0x7777, 0x7777, 0x7777]);
    let upload: JsValue = Uint16Array::from(&words[..]).into();
    call_method(&queue, "writeBuffer", &[buffer.clone(), 0.into(), upload]).unwrap();
    let copied = call_method(&copy, "copyFrom", &[buffer]).unwrap();
    resolved(copied.dyn_into().unwrap()).await;
    let back = resolved(call_method(&copy, "read", &[]).unwrap().dyn_into().unwrap()).await;
    assert_eq!(
        back.dyn_into::<Uint16Array>().unwrap().to_vec(),
        bits,
        "5 of 8 halves copied"
    );
    let empty: JsValue = gpu.empty_tensor(0.0, JsValue::UNDEFINED).unwrap().into();
    assert_eq!(read_tensor(&empty).await, Vec::<f32>::new());

    // LayerNorm with gain and bias as a layer, on a GpuTensor; the residual form on typed
    // arrays.
    let (x, r) = (data(3 * 8, 92), data(3 * 8, 93));
    let (gain, bias) = (data(8, 94), data(8, 95));
    let layer = gpu
        .layer_norm_layer(8.0, options(&[("gain", js(&gain)), ("bias", js(&bias))]))
        .map_err(JsValue::from)
        .unwrap();
    let xt: JsValue = gpu.tensor(js(&x), JsValue::UNDEFINED).unwrap().into();
    let y = read_tensor(&resolved(layer.forward(xt.clone())).await).await;
    let config = LayerNormConfig::new(8)
        .with_gain(Gain::Scale)
        .with_bias(true);
    let expected = reference::layer_norm(&x, &config, Some(&gain), Some(&bias)).unwrap();
    let stats = reference::compare(&y, &expected, F32_ABS_TOL, F32_REL_TOL);
    assert_eq!(stats.failures, 0, "layer with a bias: {stats:?}");
    let out = resolved(layer.forward_residual(js(&x), js(&r))).await;
    let sum = reference::residual_sum(&x, &r, DType::F32);
    let output = Reflect::get(&out, &"output".into()).unwrap();
    let stored = Reflect::get(&out, &"sum".into()).unwrap();
    assert_eq!(stored.dyn_into::<Float32Array>().unwrap().to_vec(), sum);
    let expected = reference::layer_norm(&sum, &config, Some(&gain), Some(&bias)).unwrap();
    let y = output.dyn_into::<Float32Array>().unwrap().to_vec();
    let stats = reference::compare(&y, &expected, F32_ABS_TOL, F32_REL_TOL);
    assert_eq!(
        stats.failures, 0,
        "forwardResidual on typed arrays: {stats:?}"
    );

    // A tensor of another Normalizer (another device) is refused by name.
    let other = resident_normalizer().await.unwrap();
    let message = rejection(other.rms_norm(xt.clone(), 8.0, JsValue::UNDEFINED)).await;
    assert!(message.contains("another Normalizer"), "{message}");
    let other_layer = other
        .rms_norm_layer(8.0, JsValue::UNDEFINED)
        .map_err(JsValue::from)
        .unwrap();
    let message = rejection(other_layer.forward(xt)).await;
    assert!(message.contains("another Normalizer"), "{message}");
}
