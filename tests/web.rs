//! The library in a browser: headless Chromium on SwiftShader's WebGPU, through
//! wasm-bindgen-test (`cargo xtask test` runs it; see webdriver.json for the flags).
#![cfg(target_arch = "wasm32")]

use js_sys::{Float32Array, Object, Reflect};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;
use wgpu_rmsnorm::reference::{self, F32_ABS_TOL, F32_REL_TOL};
use wgpu_rmsnorm::web::Normalizer;
use wgpu_rmsnorm::{
    EpsMode, Gain, GpuContext, KernelOptions, PartialRms, Reduction, RmsNormConfig, Weights,
};

wasm_bindgen_test_configure!(run_in_browser);

/// The context, or `None` with a loud message; with REQUIRE_GPU=1 at build time a missing
/// WebGPU fails the test.
async fn gpu(options: KernelOptions) -> Option<GpuContext> {
    match GpuContext::with_adapter_choice(&Default::default(), options).await {
        Ok(gpu) => Some(gpu),
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
    for reduction in [Reduction::Auto, Reduction::WorkgroupTree] {
        // CPU-sized and GPU-sized workgroups (GPU-sized reads x once), split rows.
        for (cpu_adapter, split_rows, read_once) in [
            (Some(true), None, None),
            (Some(false), None, None),
            (None, Some(true), None),
            (Some(true), None, Some(true)),
        ] {
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
