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

use crate::adapter::AdapterChoice;
use crate::config::{EpsMode, Gain, LayerNormConfig, PartialRms, RmsNormConfig};
use crate::context::{GpuContext, Weights};
use crate::kernel::{KernelOptions, Reduction};
use crate::reference;
use js_sys::{Array, Float32Array, Float64Array, Object, Reflect};
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
        x: Vec<f32>,
        hidden: u32,
        #[wasm_bindgen(unchecked_optional_param_type = "RmsNormOptions")] options: JsValue,
    ) -> js_sys::Promise {
        self.run(x, hidden, options, Kind::Rms { partial: false })
    }

    /// pRMSNorm of `x`: the RMS from the first k elements of each row (`options.p` or
    /// `options.k`, exactly one), every element scaled.
    #[wasm_bindgen(js_name = pRmsNorm, unchecked_return_type = "Promise<Float32Array>")]
    pub fn p_rms_norm(
        &self,
        x: Vec<f32>,
        hidden: u32,
        #[wasm_bindgen(unchecked_param_type = "RmsNormOptions")] options: JsValue,
    ) -> js_sys::Promise {
        self.run(x, hidden, options, Kind::Rms { partial: true })
    }

    /// LayerNorm of `x` (the baseline): options gain, gainOffset, bias, eps (default 1e-5).
    #[wasm_bindgen(js_name = layerNorm, unchecked_return_type = "Promise<Float32Array>")]
    pub fn layer_norm(
        &self,
        x: Vec<f32>,
        hidden: u32,
        #[wasm_bindgen(unchecked_optional_param_type = "RmsNormOptions")] options: JsValue,
    ) -> js_sys::Promise {
        self.run(x, hidden, options, Kind::Layer)
    }

    /// Times the copies, RMSNorm, pRMSNorm (p = 1/16, 1/2) and LayerNorm on `rows x hidden`
    /// (wall clock over many dispatches per sample: browsers coarsen timestamps), each
    /// checked against the reference first.
    #[wasm_bindgen(unchecked_return_type = "Promise<BenchmarkRecord[]>")]
    pub fn benchmark(&self, rows: u32, hidden: u32) -> js_sys::Promise {
        let gpu = self.gpu.clone();
        wasm_bindgen_futures::future_to_promise(async move {
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
    fn run(&self, x: Vec<f32>, hidden: u32, options: JsValue, kind: Kind) -> js_sys::Promise {
        let gpu = self.gpu.clone();
        wasm_bindgen_futures::future_to_promise(async move {
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
    x: &[f32],
    hidden: u32,
    #[wasm_bindgen(unchecked_optional_param_type = "RmsNormOptions")] options: JsValue,
) -> Result<Float64Array, JsError> {
    let parsed = parse_options(
        hidden,
        &options,
        has_key(&options, "p") || has_key(&options, "k"),
    )?;
    let y = reference::rms_norm(
        x,
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
    x: &[f32],
    hidden: u32,
    #[wasm_bindgen(unchecked_optional_param_type = "RmsNormOptions")] options: JsValue,
) -> Result<Float64Array, JsError> {
    let parsed = parse_layer_options(hidden, &options)?;
    let y = reference::layer_norm(
        x,
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

fn parse_create_options(options: &JsValue) -> Result<(AdapterChoice, KernelOptions), JsError> {
    let mut choice = AdapterChoice::default();
    let mut kernel = KernelOptions::default();
    if options.is_undefined() || options.is_null() {
        return Ok((choice, kernel));
    }
    check_keys(
        options,
        &[
            "powerPreference",
            "reduction",
            "workgroupSize",
            "maxWorkgroups",
        ],
    )?;
    let get = |key: &str| Reflect::get(options, &key.into()).unwrap_or(JsValue::UNDEFINED);
    choice.power_preference = match get("powerPreference").as_string().as_deref() {
        _ if get("powerPreference").is_undefined() => choice.power_preference,
        Some("high-performance") => wgpu::PowerPreference::HighPerformance,
        Some("low-power") => wgpu::PowerPreference::LowPower,
        _ => {
            return Err(JsError::new(
                "option powerPreference must be \"high-performance\" or \"low-power\"",
            ))
        }
    };
    kernel.reduction =
        match get("reduction").as_string().as_deref() {
            _ if get("reduction").is_undefined() => Reduction::Auto,
            Some("auto") => Reduction::Auto,
            Some("tree") => Reduction::WorkgroupTree,
            Some("subgroups") => Reduction::Subgroups,
            Some("single-subgroup") => Reduction::SingleSubgroup,
            _ => return Err(JsError::new(
                "option reduction must be \"auto\", \"tree\", \"subgroups\" or \"single-subgroup\"",
            )),
        };
    let size = get("workgroupSize");
    if !size.is_undefined() {
        kernel.workgroup_size = match size.as_f64() {
            Some(v)
                if (1.0..=1024.0).contains(&v)
                    && (v as u32).is_power_of_two()
                    && v.fract() == 0.0 =>
            {
                Some(v as u32)
            }
            _ => {
                return Err(JsError::new(
                    "option workgroupSize must be a power of two from 1 to 1024",
                ))
            }
        };
    }
    let cap = get("maxWorkgroups");
    if !cap.is_undefined() {
        kernel.max_workgroups = match cap.as_f64() {
            Some(v) if v >= 1.0 && v.fract() == 0.0 && v <= f64::from(u32::MAX) => Some(v as u32),
            _ => {
                return Err(JsError::new(
                    "option maxWorkgroups must be a whole number >= 1",
                ))
            }
        };
    }
    Ok((choice, kernel))
}

/// Refuses keys that are not options (a typo would otherwise be ignored).
fn check_keys(options: &JsValue, known: &[&str]) -> Result<(), JsError> {
    if !options.is_object() {
        return Err(JsError::new("options must be an object"));
    }
    for key in Object::keys(options.unchecked_ref::<Object>()).iter() {
        let key = key.as_string().unwrap_or_default();
        if !known.contains(&key.as_str()) {
            return Err(JsError::new(&format!(
                "unknown option {key:?}: the options are {}",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

/// Which JS call a promise serves.
#[derive(Clone, Copy)]
enum Kind {
    Rms { partial: bool },
    Layer,
}

struct Parsed<C> {
    config: C,
    gain: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
}

impl<C> Parsed<C> {
    fn weights(&self) -> Weights<'_> {
        Weights {
            gain: self.gain.as_deref(),
            bias: self.bias.as_deref(),
        }
    }
}

type ParsedOptions = Parsed<RmsNormConfig>;

const KNOWN_OPTIONS: [&str; 7] = ["gain", "gainOffset", "bias", "eps", "epsMode", "p", "k"];

/// `p` or `k` of pRmsNorm, neither for rmsNorm.
fn parse_partial(partial: bool, p: Option<f64>, k: Option<f64>) -> Result<PartialRms, JsError> {
    Ok(match (partial, p, k) {
        (false, None, None) => PartialRms::Full,
        (false, _, _) => return Err(JsError::new("rmsNorm takes no p or k: call pRmsNorm")),
        (true, Some(p), None) => PartialRms::Fraction(p),
        (true, None, Some(k)) if k.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&k) => {
            PartialRms::Count(k as u32)
        }
        (true, None, Some(k)) => {
            return Err(JsError::new(&format!(
                "option k = {k} must be a whole number >= 1"
            )))
        }
        (true, Some(_), Some(_)) => return Err(JsError::new("pass p or k, not both")),
        (true, None, None) => {
            return Err(JsError::new(
                "pRmsNorm needs p (0 < p <= 1) or k (1 <= k <= hidden)",
            ))
        }
    })
}

fn parse_options(hidden: u32, options: &JsValue, partial: bool) -> Result<ParsedOptions, JsError> {
    let mut config = RmsNormConfig::new(hidden);
    let mut gain = None;
    let mut bias = None;
    if options.is_undefined() || options.is_null() {
        if partial {
            return Err(JsError::new(
                "pRmsNorm needs options with p (0 < p <= 1) or k (1 <= k <= hidden)",
            ));
        }
        return Ok(ParsedOptions { config, gain, bias });
    }
    check_keys(options, &KNOWN_OPTIONS)?;
    let get = |key: &str| Reflect::get(options, &key.into()).unwrap_or(JsValue::UNDEFINED);
    let number = |key: &str| -> Result<Option<f64>, JsError> {
        let value = get(key);
        if value.is_undefined() {
            return Ok(None);
        }
        value
            .as_f64()
            .map(Some)
            .ok_or_else(|| JsError::new(&format!("option {key} must be a number")))
    };
    let vector = |key: &str| -> Result<Option<Vec<f32>>, JsError> {
        let value = get(key);
        if value.is_undefined() {
            return Ok(None);
        }
        value
            .dyn_into::<Float32Array>()
            .map(|a| Some(a.to_vec()))
            .map_err(|_| JsError::new(&format!("option {key} must be a Float32Array")))
    };
    if let Some(eps) = number("eps")? {
        config.eps = eps as f32;
    }
    config.eps_mode = match get("epsMode").as_string().as_deref() {
        None if get("epsMode").is_undefined() => EpsMode::InsideRoot,
        Some("inside") => EpsMode::InsideRoot,
        Some("add") => EpsMode::AddedToRms,
        _ => return Err(JsError::new("option epsMode must be \"inside\" or \"add\"")),
    };
    gain = vector("gain")?;
    bias = vector("bias")?;
    let gain_offset = get("gainOffset");
    let unit_offset = match gain_offset.as_bool() {
        Some(b) => b,
        None if gain_offset.is_undefined() => false,
        None => return Err(JsError::new("option gainOffset must be a boolean")),
    };
    if unit_offset && gain.is_none() {
        return Err(JsError::new("option gainOffset needs a gain"));
    }
    config.gain = match (&gain, unit_offset) {
        (None, _) => Gain::None,
        (Some(_), false) => Gain::Scale,
        (Some(_), true) => Gain::UnitOffset,
    };
    config.bias = bias.is_some();
    config.partial = parse_partial(partial, number("p")?, number("k")?)?;
    Ok(ParsedOptions { config, gain, bias })
}

type ParsedLayerOptions = Parsed<LayerNormConfig>;

/// layerNorm's options: those of rmsNorm without p, k and epsMode (eps is inside the root).
fn parse_layer_options(hidden: u32, options: &JsValue) -> Result<ParsedLayerOptions, JsError> {
    for key in ["p", "k", "epsMode"] {
        if has_key(options, key) {
            return Err(JsError::new(&format!(
                "layerNorm takes no {key}: its eps is always inside the root, over the whole row"
            )));
        }
    }
    let eps_given = has_key(options, "eps");
    let parsed = parse_options(hidden, options, false)?;
    let rms = parsed.config;
    let config = LayerNormConfig::new(hidden)
        .with_gain(rms.gain)
        .with_bias(rms.bias)
        .with_eps(if eps_given {
            rms.eps
        } else {
            crate::config::DEFAULT_LAYER_NORM_EPS
        });
    Ok(ParsedLayerOptions {
        config,
        gain: parsed.gain,
        bias: parsed.bias,
    })
}

fn has_key(options: &JsValue, key: &str) -> bool {
    options.is_object() && Reflect::has(options, &key.into()).unwrap_or(false)
}

fn set(object: &Object, key: &str, value: &JsValue) {
    // Setting a plain data property on a fresh Object cannot fail.
    let _ = Reflect::set(object, &key.into(), value);
}

fn to_js(error: crate::Error) -> JsError {
    JsError::new(&error.to_string())
}
