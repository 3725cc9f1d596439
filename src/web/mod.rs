//! The JavaScript API (wasm32 only), made with wasm-bindgen:
//!
//! ```js
//! import init, { Normalizer } from "./pkg/wgpu_rmsnorm.js";
//! await init();
//! const gpu = await Normalizer.create();
//! const y = await gpu.rmsNorm(x, 4096, { gain, eps: 1e-6 });
//! const yp = await gpu.pRmsNorm(x, 4096, { p: 0.0625 });
//! console.log(gpu.adapterInfo(), gpu.lastGpuTimeMs());
//! ```

mod options;

use crate::config::RmsNormConfig;
use crate::context::GpuContext;
use crate::reference;
use js_sys::{Array, Float32Array, Float64Array, Object, Reflect};
use options::{
    count, float32_array, has_key, parse_create_options, parse_layer_options, parse_options,
};
use std::rc::Rc;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** Options of rmsNorm and pRmsNorm. Unknown keys are an error. */
export interface RmsNormOptions {
  /** Per-element gain, hidden values. */
  gain?: Float32Array;
  /** With gain: y = x / rms * (1 + gain) (Gemma) instead of x / rms * gain. */
  gainOffset?: boolean;
  /** Per-element bias, hidden values, added last. */
  bias?: Float32Array;
  /** Finite, >= 0; default 1e-6. */
  eps?: number;
  /** "inside": x / sqrt(mean + eps) (default); "add": x / (rms + eps). */
  epsMode?: "inside" | "add";
  /** pRmsNorm only: the RMS over the first ceil(hidden * p) elements, 0 < p <= 1. */
  p?: number;
  /** pRmsNorm only: the RMS over the first k elements, 1 <= k <= hidden. */
  k?: number;
}

/** Options of Normalizer.create(). */
export interface NormalizerOptions {
  /** "high-performance" (default) or "low-power". */
  powerPreference?: "high-performance" | "low-power";
  /** Workgroup reduction: "auto" (default), "tree", "subgroups" or "single-subgroup". */
  reduction?: "auto" | "tree" | "subgroups" | "single-subgroup";
  /** Invocations per workgroup, a power of two; default chosen from the device and row. */
  workgroupSize?: number;
  /** At most this many workgroups per dispatch, each looping over several rows. */
  maxWorkgroups?: number;
}

/** One kernel on one shape from Normalizer.benchmark(). */
export interface BenchmarkRecord {
  rows: number;
  hidden: number;
  /** "copy", "RMSNorm", "pRMSNorm" or "LayerNorm". */
  kernel: string;
  p: number | null;
  variant: string;
  medianMs: number;
  gbps: number;
  /** Against copyBufferToBuffer of the same bytes. */
  solCopy: number;
  /** Against the fastest vec4 copy compute shader. */
  solKernel: number;
}

/** What Normalizer.adapterInfo() returns. */
export interface AdapterInfo {
  name: string;
  vendor: string;
  architecture: string;
  backend: string;
  deviceType: string;
  /** Optional features granted to the device, e.g. "timestamp-query", "shader-f16". */
  features: string[];
  /** Workgroup reduction the kernels use here: "WorkgroupTree", "Subgroups", ... */
  reduction: string;
}
"#;

#[wasm_bindgen(start)]
fn start() {
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&format!("wgpu-rmsnorm panicked: {info}").into());
    }));
}

/// RMSNorm and pRMSNorm on the browser's WebGPU. Create it with `await Normalizer.create()`.
#[wasm_bindgen]
pub struct Normalizer {
    gpu: Rc<GpuContext>,
    /// The browser's adapter description (vendor, architecture): wgpu leaves the name empty.
    vendor: String,
    architecture: String,
}

#[wasm_bindgen]
impl Normalizer {
    /// Opens a WebGPU device. Rejects with a message that says how to get WebGPU when the
    /// browser has none, or what is wrong with the options.
    pub async fn create(
        #[wasm_bindgen(unchecked_optional_param_type = "NormalizerOptions")] options: JsValue,
    ) -> Result<Normalizer, JsError> {
        let (choice, mut kernel_options) = parse_create_options(&options)?;
        let (vendor, architecture, fallback) = browser_adapter_info().await.unwrap_or_default();
        // Browsers report SwiftShader as a GPU; its compute runs on the CPU.
        if kernel_options.cpu_adapter.is_none() && (fallback || architecture == "swiftshader") {
            kernel_options.cpu_adapter = Some(true);
        }
        let gpu = GpuContext::with_adapter_choice(&choice, kernel_options)
            .await
            .map_err(to_js)?;
        // Options the device cannot honour (subgroups, workgroup sizes) fail here, not later.
        gpu.kernel(&RmsNormConfig::new(4)).map_err(to_js)?;
        Ok(Normalizer {
            vendor,
            architecture,
            gpu: Rc::new(gpu),
        })
    }

    /// The adapter and device: name, vendor, architecture, backend, features, reduction.
    #[wasm_bindgen(js_name = adapterInfo, unchecked_return_type = "AdapterInfo")]
    pub fn adapter_info(&self) -> JsValue {
        let info = self.gpu.adapter_info();
        let features = self.gpu.device().features();
        let feature_names = Array::new();
        for (flag, name) in [
            (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
            (wgpu::Features::SHADER_F16, "shader-f16"),
            (wgpu::Features::SUBGROUP, "subgroups"),
        ] {
            if features.contains(flag) {
                feature_names.push(&name.into());
            }
        }
        let reduction = self
            .gpu
            .kernel(&RmsNormConfig::new(4))
            .map(|k| format!("{:?}", k.reduction()))
            .unwrap_or_default();
        let object = Object::new();
        set(&object, "name", &info.name.as_str().into());
        set(&object, "vendor", &self.vendor.as_str().into());
        set(&object, "architecture", &self.architecture.as_str().into());
        set(&object, "backend", &format!("{:?}", info.backend).into());
        set(
            &object,
            "deviceType",
            &format!("{:?}", info.device_type).into(),
        );
        set(&object, "features", &feature_names);
        set(&object, "reduction", &reduction.into());
        object.into()
    }

    /// RMSNorm of `x` (rows * hidden values). Resolves to a new Float32Array.
    #[wasm_bindgen(js_name = rmsNorm, unchecked_return_type = "Promise<Float32Array>")]
    pub fn rms_norm(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Float32Array")] x: JsValue,
        hidden: f64,
        #[wasm_bindgen(unchecked_optional_param_type = "RmsNormOptions")] options: JsValue,
    ) -> js_sys::Promise {
        self.run(x, hidden, options, Kind::Rms { partial: false })
    }

    /// pRMSNorm of `x`: the RMS from the first k elements of each row (`options.p` or
    /// `options.k`, exactly one), every element scaled.
    #[wasm_bindgen(js_name = pRmsNorm, unchecked_return_type = "Promise<Float32Array>")]
    pub fn p_rms_norm(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Float32Array")] x: JsValue,
        hidden: f64,
        #[wasm_bindgen(unchecked_param_type = "RmsNormOptions")] options: JsValue,
    ) -> js_sys::Promise {
        self.run(x, hidden, options, Kind::Rms { partial: true })
    }

    /// LayerNorm of `x` (the baseline): options gain, gainOffset, bias, eps (default 1e-5).
    #[wasm_bindgen(js_name = layerNorm, unchecked_return_type = "Promise<Float32Array>")]
    pub fn layer_norm(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Float32Array")] x: JsValue,
        hidden: f64,
        #[wasm_bindgen(unchecked_optional_param_type = "RmsNormOptions")] options: JsValue,
    ) -> js_sys::Promise {
        self.run(x, hidden, options, Kind::Layer)
    }

    /// Times the copies, RMSNorm, pRMSNorm (p = 1/16, 1/2) and LayerNorm on `rows x hidden`
    /// (wall clock over many dispatches per sample: browsers coarsen timestamps), each
    /// checked against the reference first.
    #[wasm_bindgen(unchecked_return_type = "Promise<BenchmarkRecord[]>")]
    pub fn benchmark(&self, rows: f64, hidden: f64) -> js_sys::Promise {
        let gpu = self.gpu.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let rows = count("rows", rows)?;
            let hidden = count("hidden", hidden)?;
            let options = crate::bench::BenchOptions {
                samples: 5,
                min_sample_seconds: 0.05,
            };
            let timer = crate::timing::GpuTimer::wall_clock();
            let measured = crate::bench::bench_shape(&gpu, &timer, rows, hidden, &options)
                .await
                .map_err(|e| JsValue::from(to_js(e)))?;
            let records = Array::new();
            for m in measured {
                let object = Object::new();
                set(&object, "rows", &rows.into());
                set(&object, "hidden", &hidden.into());
                set(&object, "kernel", &m.kernel.into());
                set(&object, "p", &m.p.map_or(JsValue::NULL, JsValue::from));
                set(&object, "variant", &m.variant.into());
                set(&object, "medianMs", &(m.seconds * 1e3).into());
                set(&object, "gbps", &m.gbps.into());
                set(&object, "solCopy", &m.sol_copy.into());
                set(&object, "solKernel", &m.sol_kernel.into());
                records.push(&object);
            }
            Ok(records.into())
        })
    }

    /// Wall-clock medians (ms) of 20 whole 1 x 4096 rmsNorm calls and of 20 empty
    /// dispatches with a readback: `{ callMs, emptyMs }`.
    #[wasm_bindgen(js_name = roundTrips, unchecked_return_type = "Promise<{ callMs: number, emptyMs: number }>")]
    pub fn round_trips(&self) -> js_sys::Promise {
        let gpu = self.gpu.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let (call, empty) = crate::bench::round_trips(&gpu, 20)
                .await
                .map_err(|e| JsValue::from(to_js(e)))?;
            let object = Object::new();
            set(&object, "callMs", &(call * 1e3).into());
            set(&object, "emptyMs", &(empty * 1e3).into());
            Ok(object.into())
        })
    }

    /// GPU time of the last call's compute pass in milliseconds, from timestamp queries
    /// (undefined where the adapter has none). Browsers coarsen timestamps.
    #[wasm_bindgen(js_name = lastGpuTimeMs)]
    pub fn last_gpu_time_ms(&self) -> Option<f64> {
        self.gpu.last_gpu_seconds().map(|s| s * 1e3)
    }

    /// The promise of one call: options parsed, the kernel run, the result as a Float32Array.
    /// Every argument is checked, and refused with a message, rather than coerced: `x` must
    /// be a Float32Array (a Float64Array, a plain array or a string would be converted
    /// silently), `hidden` a whole number (-8 would wrap to 4294967288, 8.5 truncate to 8).
    fn run(&self, x: JsValue, hidden: f64, options: JsValue, kind: Kind) -> js_sys::Promise {
        let gpu = self.gpu.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let x = float32_array("x", &x)?;
            let hidden = count("hidden", hidden)?;
            let y = match kind {
                Kind::Rms { partial } => {
                    let parsed = parse_options(hidden, &options, partial)?;
                    gpu.rms_norm(&x, &parsed.config, parsed.weights()).await
                }
                Kind::Layer => {
                    let parsed = parse_layer_options(hidden, &options)?;
                    gpu.layer_norm(&x, &parsed.config, parsed.weights()).await
                }
            }
            .map_err(to_js)?;
            Ok(Float32Array::from(y.as_slice()).into())
        })
    }
}

/// The f64 CPU reference of rmsNorm / pRmsNorm (same options), for checking results.
#[wasm_bindgen(js_name = referenceRmsNorm)]
pub fn reference_rms_norm(
    #[wasm_bindgen(unchecked_param_type = "Float32Array")] x: JsValue,
    hidden: f64,
    #[wasm_bindgen(unchecked_optional_param_type = "RmsNormOptions")] options: JsValue,
) -> Result<Float64Array, JsError> {
    let (x, hidden) = (float32_array("x", &x)?, count("hidden", hidden)?);
    let parsed = parse_options(
        hidden,
        &options,
        has_key(&options, "p") || has_key(&options, "k"),
    )?;
    let y = reference::rms_norm(
        &x,
        &parsed.config,
        parsed.gain.as_deref(),
        parsed.bias.as_deref(),
    )
    .map_err(to_js)?;
    Ok(Float64Array::from(y.as_slice()))
}

/// The f64 CPU reference of layerNorm (same options).
#[wasm_bindgen(js_name = referenceLayerNorm)]
pub fn reference_layer_norm(
    #[wasm_bindgen(unchecked_param_type = "Float32Array")] x: JsValue,
    hidden: f64,
    #[wasm_bindgen(unchecked_optional_param_type = "RmsNormOptions")] options: JsValue,
) -> Result<Float64Array, JsError> {
    let (x, hidden) = (float32_array("x", &x)?, count("hidden", hidden)?);
    let parsed = parse_layer_options(hidden, &options)?;
    let y = reference::layer_norm(
        &x,
        &parsed.config,
        parsed.gain.as_deref(),
        parsed.bias.as_deref(),
    )
    .map_err(to_js)?;
    Ok(Float64Array::from(y.as_slice()))
}

/// The largest absolute and relative errors of `actual` against `expected`, and whether
/// every element is within the f32 tolerance (relative 1e-5, absolute 1e-6).
#[wasm_bindgen(js_name = compareToReference, unchecked_return_type = "{ maxAbs: number, maxRel: number, pass: boolean }")]
pub fn compare_to_reference(actual: &[f32], expected: &[f64]) -> JsValue {
    let stats = reference::compare(
        actual,
        expected,
        reference::F32_ABS_TOL,
        reference::F32_REL_TOL,
    );
    let object = Object::new();
    set(&object, "maxAbs", &stats.max_abs.into());
    set(&object, "maxRel", &stats.max_rel.into());
    set(&object, "pass", &(stats.failures == 0).into());
    object.into()
}

/// Deterministic test data in [-amplitude, amplitude), the same as the Rust side's.
#[wasm_bindgen(js_name = sampleData)]
pub fn sample_data(len: usize, seed: u32, amplitude: f32) -> Float32Array {
    Float32Array::from(reference::sample_data(len, u64::from(seed), amplitude).as_slice())
}

/// `GPUAdapterInfo.vendor`, `.architecture` and `.isFallbackAdapter` (wgpu leaves the first
/// two out of its AdapterInfo).
async fn browser_adapter_info() -> Result<(String, String, bool), JsValue> {
    let navigator = Reflect::get(&js_sys::global(), &"navigator".into())?;
    let gpu = Reflect::get(&navigator, &"gpu".into())?;
    let request: js_sys::Function = Reflect::get(&gpu, &"requestAdapter".into())?.dyn_into()?;
    let promise: js_sys::Promise = request.call0(&gpu)?.dyn_into()?;
    let adapter = wasm_bindgen_futures::JsFuture::from(promise).await?;
    let info = Reflect::get(&adapter, &"info".into())?;
    let field = |key: &str| {
        Reflect::get(&info, &key.into())
            .ok()
            .and_then(|v| v.as_string())
            .unwrap_or_default()
    };
    let fallback = Reflect::get(&info, &"isFallbackAdapter".into())
        .ok()
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    Ok((field("vendor"), field("architecture"), fallback))
}

/// Which JS call a promise serves.
#[derive(Clone, Copy)]
enum Kind {
    Rms { partial: bool },
    Layer,
}

fn set(object: &Object, key: &str, value: &JsValue) {
    // Setting a plain data property on a fresh Object cannot fail.
    let _ = Reflect::set(object, &key.into(), value);
}

fn to_js(error: crate::Error) -> JsError {
    JsError::new(&error.to_string())
}
