//! The JavaScript API (wasm32 only), made with wasm-bindgen:
//!
//! ```js
//! import init, { Normalizer } from "./pkg/wgpu_rmsnorm.js";
//! await init();
//! const gpu = await Normalizer.create();
//! const y = await gpu.rmsNorm(x, 4096, { gain, eps: 1e-6 });
//! const yp = await gpu.pRmsNorm(x, 4096, { p: 0.0625 });
//! // f16 activations as bits (or a Float16Array), f32 weights, fused residual add:
//! const { output, sum } = await gpu.rmsNormResidual(x16, r16, 4096, { dtype: "f16", weightDtype: "f32", gain });
//! console.log(gpu.adapterInfo());
//! // GPU-resident: weights uploaded once, no readback until read().
//! const norm = gpu.rmsNormLayer(4096, { gain });
//! const t = gpu.tensor(x);
//! const { output, sum } = await norm.forwardResidual(t, gpu.tensor(r));
//! const values = await output.read();
//! ```

mod backward;
#[cfg(feature = "benchmark")]
mod benchmark;
pub use backward::{compare_gradient, reference_layer_norm_backward, reference_rms_norm_backward};
mod options;
mod resident;
mod tensors;
pub use resident::{GpuTensor, NormLayer};

use crate::config::{Residual, RmsNormConfig};
use crate::context::{CallData, GpuContext};
use crate::dtype::DType;
use crate::kernel::Norm;
use crate::reference;
use js_sys::{Array, Float32Array, Float64Array, Object, Reflect};
use options::{count, has_key, parse_create_options, parse_layer_options, parse_options};
use std::rc::Rc;
use tensors::JsTensor;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** An element type: "f32" (Float32Array), "f16" (Float16Array, or Uint16Array of bits),
 *  "bf16" (Uint16Array of bits). */
export type DType = "f32" | "f16" | "bf16";

/** A tensor of any element type; results come back in the input's array type. */
export type Tensor = Float32Array | Uint16Array | Float16ArrayLike;

/** The browser's Float16Array, where it has one. */
export interface Float16ArrayLike extends ArrayBufferView {
  readonly length: number;
}

/** What rmsNormResidual and layerNormResidual resolve to. */
export interface ResidualResult<T extends Tensor> {
  /** The normalized output. */
  output: T;
  /** h = x + residual, rounded to the dtype: the next layer's residual. */
  sum: T;
}

/** Options of every normalization call (rmsNorm, pRmsNorm, layerNorm, their residual forms,
 *  and the reference functions). Unknown keys are an error. */
export interface RmsNormOptions {
  /** Element type of x, the residual and the results; default "f32". */
  dtype?: DType;
  /** Element type of gain and bias; default the dtype. */
  weightDtype?: DType;
  /** Per-element gain, hidden values of the weightDtype. */
  gain?: Tensor;
  /** With gain: y = x / rms * (1 + gain) (Gemma) instead of x / rms * gain. */
  gainOffset?: boolean;
  /** Per-element bias, hidden values of the weightDtype, added last. */
  bias?: Tensor;
  /** Finite, >= 0; default 1e-6 (the LayerNorm calls: 1e-5). */
  eps?: number;
  /** "inside": x / sqrt(mean + eps) (default); "add": x / (rms + eps). Not for LayerNorm. */
  epsMode?: "inside" | "add";
  /** pRMSNorm (pRmsNorm, rmsNormResidual, referenceRmsNorm): the RMS over the first
   *  ceil(hidden * p) elements, 0 < p <= 1. Not for LayerNorm. */
  p?: number;
  /** pRMSNorm: the RMS over the first k elements, 1 <= k <= hidden. Not for LayerNorm. */
  k?: number;
}

/** Options of Normalizer.create(). */
export interface NormalizerOptions {
  /** "high-performance" (default) or "low-power". */
  powerPreference?: "high-performance" | "low-power";
  /** Workgroup reduction: "auto" (default), "tree", "subgroups", "single-subgroup" or "per-invocation" (one row per invocation, no reduction: the forward of whole rows). */
  reduction?: "auto" | "tree" | "subgroups" | "single-subgroup" | "per-invocation";
  /** Invocations per workgroup, a power of two; default chosen from the device and row. */
  workgroupSize?: number;
  /** At most this many workgroups per dispatch, each looping over several rows. */
  maxWorkgroups?: number;
  /** Timestamp queries around each typed-array call's compute pass, for lastGpuTimeMs();
   *  default false: calls then write, resolve and read back no timestamps. */
  timestamps?: boolean;
}

/** One kernel on one shape from Normalizer.benchmark(). */
export interface BenchmarkRecord {
  rows: number;
  hidden: number;
  /** "copy", "RMSNorm", "pRMSNorm" or "LayerNorm". */
  kernel: string;
  /** "forward" or "backward" (x and dy read, dx written; dgain and dbias). */
  pass: "forward" | "backward";
  p: number | null;
  variant: string;
  medianMs: number;
  gbps: number;
  /** Against copyBufferToBuffer of the same bytes. */
  solCopy: number;
  /** Against the fastest vec4 copy compute shader. */
  solKernel: number;
  /** Element type of the activations. */
  dtype: DType;
  /** "none", "fused" or "unfused". */
  residual: string;
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
        let options::CreateOptions {
            choice,
            kernel: mut kernel_options,
            timestamps,
        } = parse_create_options(&options)?;
        let (vendor, architecture, fallback) = browser_adapter_info().await.unwrap_or_default();
        // Browsers report SwiftShader as a GPU; its compute runs on the CPU.
        if kernel_options.cpu_adapter.is_none() && (fallback || architecture == "swiftshader") {
            kernel_options.cpu_adapter = Some(true);
        }
        let gpu = GpuContext::with_adapter_choice(&choice, kernel_options)
            .await
            .map_err(to_js)?
            .with_call_timing(timestamps);
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

    /// The browser's `GPUDevice` the library runs on: build your own pipelines and buffers
    /// on it and pass GpuTensors between them and the library. (wgpu cannot adopt a device
    /// made elsewhere, so the library's is the one to share.)
    #[wasm_bindgen(getter, unchecked_return_type = "GPUDevice")]
    pub fn device(&self) -> Result<JsValue, JsError> {
        self.gpu
            .device()
            .as_webgpu()
            .map(|d| JsValue::from(d.clone()))
            .ok_or_else(|| JsError::new("the device is not a WebGPU device"))
    }

    /// A GpuTensor holding `data`: a Float32Array (f32), a Float16Array (f16) or a
    /// Uint16Array of bits (pass `dtype` "f16" or "bf16").
    pub fn tensor(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Tensor")] data: JsValue,
        #[wasm_bindgen(unchecked_optional_param_type = "DType")] dtype: JsValue,
    ) -> Result<GpuTensor, JsError> {
        let dtype = match options::dtype_option(&dtype, "dtype")? {
            Some(dtype) => dtype,
            None => match options::type_name(&data).as_str() {
                "Float16Array" => DType::F16,
                "Uint16Array" => {
                    return Err(JsError::new(
                        "a Uint16Array holds f16 or bf16 bits: pass dtype \"f16\" or \"bf16\"",
                    ))
                }
                _ => DType::F32,
            },
        };
        GpuTensor::upload(&self.gpu, &JsTensor::read("data", &data, dtype)?, dtype)
    }

    /// A GpuTensor of `length` zeros of `dtype` (default "f32"), to be filled on the GPU
    /// (`copyFrom`, your own passes) or with `write`.
    #[wasm_bindgen(js_name = emptyTensor)]
    pub fn empty_tensor(
        &self,
        length: f64,
        #[wasm_bindgen(unchecked_optional_param_type = "DType")] dtype: JsValue,
    ) -> Result<GpuTensor, JsError> {
        let dtype = options::dtype_option(&dtype, "dtype")?.unwrap_or(DType::F32);
        let len = count("length", length)?;
        let kind = match dtype {
            DType::F32 => tensors::ArrayKind::Float32,
            _ => tensors::ArrayKind::Uint16,
        };
        GpuTensor::new(&self.gpu, u64::from(len), dtype, kind, None)
    }

    /// RMSNorm (pRMSNorm with `p` or `k`) with its gain and bias uploaded once: the options
    /// of rmsNorm / pRmsNorm. Call `forward` / `forwardResidual` per step.
    #[wasm_bindgen(js_name = rmsNormLayer)]
    pub fn rms_norm_layer(
        &self,
        hidden: f64,
        #[wasm_bindgen(unchecked_optional_param_type = "RmsNormOptions")] options: JsValue,
    ) -> Result<NormLayer, JsError> {
        let partial = has_key(&options, "p") || has_key(&options, "k");
        let hidden = count("hidden", hidden)?;
        resident::LayerInner::from_options(&self.gpu, Norm::Rms, hidden, &options, partial)
            .map(NormLayer::new)
    }

    /// LayerNorm with its gain and bias uploaded once: the options of layerNorm.
    #[wasm_bindgen(js_name = layerNormLayer)]
    pub fn layer_norm_layer(
        &self,
        hidden: f64,
        #[wasm_bindgen(unchecked_optional_param_type = "RmsNormOptions")] options: JsValue,
    ) -> Result<NormLayer, JsError> {
        let hidden = count("hidden", hidden)?;
        resident::LayerInner::from_options(&self.gpu, Norm::Layer, hidden, &options, false)
            .map(NormLayer::new)
    }

    /// RMSNorm of `x` (rows * hidden values of `options.dtype`). Resolves to a new array of
    /// x's type.
    #[wasm_bindgen(js_name = rmsNorm, unchecked_return_type = "Promise<Tensor>")]
    pub fn rms_norm(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Tensor")] x: JsValue,
        hidden: f64,
        #[wasm_bindgen(unchecked_optional_param_type = "RmsNormOptions")] options: JsValue,
    ) -> js_sys::Promise {
        self.run(x, None, hidden, options, Kind::Rms { partial: false })
    }

    /// pRMSNorm of `x`: the RMS from the first k elements of each row (`options.p` or
    /// `options.k`, exactly one), every element scaled.
    #[wasm_bindgen(js_name = pRmsNorm, unchecked_return_type = "Promise<Tensor>")]
    pub fn p_rms_norm(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Tensor")] x: JsValue,
        hidden: f64,
        #[wasm_bindgen(unchecked_param_type = "RmsNormOptions")] options: JsValue,
    ) -> js_sys::Promise {
        self.run(x, None, hidden, options, Kind::Rms { partial: true })
    }

    /// LayerNorm of `x` (the baseline): options dtype, weightDtype, gain, gainOffset, bias,
    /// eps (default 1e-5).
    #[wasm_bindgen(js_name = layerNorm, unchecked_return_type = "Promise<Tensor>")]
    pub fn layer_norm(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Tensor")] x: JsValue,
        hidden: f64,
        #[wasm_bindgen(unchecked_optional_param_type = "RmsNormOptions")] options: JsValue,
    ) -> js_sys::Promise {
        self.run(x, None, hidden, options, Kind::Layer)
    }

    /// RMSNorm of `h = x + residual` in one kernel (pRMSNorm with `options.p` or
    /// `options.k`): resolves to `{ output, sum }`, sum being h rounded to the dtype.
    #[wasm_bindgen(js_name = rmsNormResidual, unchecked_return_type = "Promise<ResidualResult<Tensor>>")]
    pub fn rms_norm_residual(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Tensor")] x: JsValue,
        #[wasm_bindgen(unchecked_param_type = "Tensor")] residual: JsValue,
        hidden: f64,
        #[wasm_bindgen(unchecked_optional_param_type = "RmsNormOptions")] options: JsValue,
    ) -> js_sys::Promise {
        let partial = has_key(&options, "p") || has_key(&options, "k");
        self.run(x, Some(residual), hidden, options, Kind::Rms { partial })
    }

    /// LayerNorm of `h = x + residual` in one kernel: resolves to `{ output, sum }`.
    #[wasm_bindgen(js_name = layerNormResidual, unchecked_return_type = "Promise<ResidualResult<Tensor>>")]
    pub fn layer_norm_residual(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Tensor")] x: JsValue,
        #[wasm_bindgen(unchecked_param_type = "Tensor")] residual: JsValue,
        hidden: f64,
        #[wasm_bindgen(unchecked_optional_param_type = "RmsNormOptions")] options: JsValue,
    ) -> js_sys::Promise {
        self.run(x, Some(residual), hidden, options, Kind::Layer)
    }

    /// GPU time of the last typed-array call's compute pass in milliseconds, from timestamp
    /// queries: only with `create({ timestamps: true })` on an adapter that has them
    /// (otherwise undefined). Calls on GpuTensors are not timed (time a chain of them with
    /// one read at its end). Browsers coarsen timestamps.
    #[wasm_bindgen(js_name = lastGpuTimeMs)]
    pub fn last_gpu_time_ms(&self) -> Option<f64> {
        self.gpu.last_gpu_seconds().map(|s| s * 1e3)
    }

    /// The promise of one call: options parsed, the kernel run, the result as an array of
    /// x's type (with the residual, `{ output, sum }`). Every argument is checked, and
    /// refused with a message, rather than coerced: `x` must be the array type of its
    /// dtype (a Float64Array, a plain array or a string would be converted silently),
    /// `hidden` a whole number (-8 would wrap to 4294967288, 8.5 truncate to 8).
    fn run(
        &self,
        x: JsValue,
        residual: Option<JsValue>,
        hidden: f64,
        options: JsValue,
        kind: Kind,
    ) -> js_sys::Promise {
        if resident::resident("x", &x).is_some() {
            return resident::promise_of(self.resident_call(x, residual, hidden, options, kind));
        }
        // Arguments are read now: changing an array after the call does not change it.
        let read = || -> Result<_, JsError> {
            let hidden = count("hidden", hidden)?;
            let (norm, mut config, parsed) = parse_call(hidden, &options, kind)?;
            if residual.is_some() {
                config.residual = Residual::AddStoreSum;
            }
            let x = JsTensor::read("x", &x, config.dtype)?;
            let residual = residual
                .map(|r| JsTensor::read("residual", &r, config.dtype))
                .transpose()?;
            if residual
                .as_ref()
                .is_some_and(|r| r.bytes.len() != x.bytes.len())
            {
                return Err(JsError::new("residual must have as many elements as x"));
            }
            Ok((norm, config, parsed, x, residual))
        };
        let (norm, config, parsed, x, residual) = match read() {
            Ok(call) => call,
            Err(error) => return js_sys::Promise::reject(&error.into()),
        };
        let gpu = self.gpu.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let data = CallData {
                x: &x.bytes,
                residual: residual.as_ref().map(|r| r.bytes.as_slice()),
                gain: parsed.gain.as_ref().map(|g| g.bytes.as_slice()),
                bias: parsed.bias.as_ref().map(|b| b.bytes.as_slice()),
            };
            let (output, sum) = gpu
                .normalize_bytes(norm, data, &config)
                .await
                .map_err(to_js)?;
            let output = tensors::to_js(&output, x.kind)?;
            match sum {
                None => Ok(output),
                Some(sum) => {
                    let object = Object::new();
                    set(&object, "output", &output);
                    set(&object, "sum", &tensors::to_js(&sum, x.kind)?);
                    Ok(object.into())
                }
            }
        })
    }
}

impl Normalizer {
    /// A call on GpuTensors, submitted now: the weights uploaded for it (and destroyed with
    /// its layer once submitted), outputs left on the GPU.
    fn resident_call(
        &self,
        x: JsValue,
        residual: Option<JsValue>,
        hidden: f64,
        options: JsValue,
        kind: Kind,
    ) -> Result<impl std::future::Future<Output = Result<JsValue, JsValue>> + 'static, JsError>
    {
        let hidden = count("hidden", hidden)?;
        let (norm, partial) = match kind {
            Kind::Rms { partial } => (Norm::Rms, partial),
            Kind::Layer => (Norm::Layer, false),
        };
        let layer = Rc::new(resident::LayerInner::from_options(
            &self.gpu, norm, hidden, &options, partial,
        )?);
        layer.call(&x, residual.as_ref())
    }
}

/// The options of a call of `kind`, as the core config and the weights.
fn parse_call(
    hidden: u32,
    options: &JsValue,
    kind: Kind,
) -> Result<(Norm, RmsNormConfig, options::Parsed<()>), JsError> {
    let (norm, config, gain, bias) = match kind {
        Kind::Rms { partial } => {
            let parsed = parse_options(hidden, options, partial)?;
            (Norm::Rms, parsed.config, parsed.gain, parsed.bias)
        }
        Kind::Layer => {
            let parsed = parse_layer_options(hidden, options)?;
            let config = parsed.config.as_rms_config();
            (Norm::Layer, config, parsed.gain, parsed.bias)
        }
    };
    Ok((
        norm,
        config,
        options::Parsed {
            config: (),
            gain,
            bias,
        },
    ))
}

/// The f64 CPU reference of rmsNorm / pRmsNorm (same options, p or k making it pRMSNorm),
/// of rmsNormResidual where `residual` is given: the normalization of x + residual as the
/// kernels round it.
#[wasm_bindgen(js_name = referenceRmsNorm)]
pub fn reference_rms_norm(
    #[wasm_bindgen(unchecked_param_type = "Tensor")] x: JsValue,
    hidden: f64,
    #[wasm_bindgen(unchecked_optional_param_type = "RmsNormOptions")] options: JsValue,
    #[wasm_bindgen(unchecked_optional_param_type = "Tensor")] residual: JsValue,
) -> Result<Float64Array, JsError> {
    let partial = has_key(&options, "p") || has_key(&options, "k");
    reference_call(x, hidden, options, residual, Kind::Rms { partial })
}

/// The f64 CPU reference of layerNorm (same options), of layerNormResidual where
/// `residual` is given.
#[wasm_bindgen(js_name = referenceLayerNorm)]
pub fn reference_layer_norm(
    #[wasm_bindgen(unchecked_param_type = "Tensor")] x: JsValue,
    hidden: f64,
    #[wasm_bindgen(unchecked_optional_param_type = "RmsNormOptions")] options: JsValue,
    #[wasm_bindgen(unchecked_optional_param_type = "Tensor")] residual: JsValue,
) -> Result<Float64Array, JsError> {
    reference_call(x, hidden, options, residual, Kind::Layer)
}

fn reference_call(
    x: JsValue,
    hidden: f64,
    options: JsValue,
    residual: JsValue,
    kind: Kind,
) -> Result<Float64Array, JsError> {
    let hidden = count("hidden", hidden)?;
    let (norm, config, parsed) = parse_call(hidden, &options, kind)?;
    let mut input = JsTensor::read("x", &x, config.dtype)?.values(config.dtype);
    if !residual.is_undefined() && !residual.is_null() {
        let r = JsTensor::read("residual", &residual, config.dtype)?.values(config.dtype);
        if r.len() != input.len() {
            return Err(JsError::new("residual must have as many elements as x"));
        }
        input = reference::residual_sum(&input, &r, config.dtype);
    }
    let (gain, bias) = parsed.weight_values(config.weight_dtype);
    let y = match norm {
        Norm::Rms => reference::rms_norm(&input, &config, gain.as_deref(), bias.as_deref()),
        Norm::Layer => {
            let layer = crate::config::LayerNormConfig::from_rms_config(&config);
            reference::layer_norm(&input, &layer, gain.as_deref(), bias.as_deref())
        }
    }
    .map_err(to_js)?;
    Ok(Float64Array::from(y.as_slice()))
}

/// The largest absolute, relative and ulp errors of `actual` (a tensor of `dtype`, default
/// "f32") against `expected`, and whether every element passes: within the f32 tolerance
/// (relative 1e-5, absolute 1e-6) for f32, a rounding of a value within it for f16 and
/// bf16.
#[wasm_bindgen(js_name = compareToReference, unchecked_return_type = "{ maxAbs: number, maxRel: number, maxUlps: number, pass: boolean }")]
pub fn compare_to_reference(
    #[wasm_bindgen(unchecked_param_type = "Tensor")] actual: JsValue,
    expected: &[f64],
    #[wasm_bindgen(unchecked_optional_param_type = "DType")] dtype: JsValue,
) -> Result<JsValue, JsError> {
    let dtype = options::dtype_option(&dtype, "dtype")?.unwrap_or(DType::F32);
    let actual = JsTensor::read("actual", &actual, dtype)?.values(dtype);
    let stats = reference::compare_rounded(
        &actual,
        expected,
        dtype,
        reference::F32_ABS_TOL,
        reference::F32_REL_TOL,
    );
    let object = Object::new();
    set(&object, "maxAbs", &stats.max_abs.into());
    set(&object, "maxRel", &stats.max_rel.into());
    set(&object, "maxUlps", &stats.max_ulps.into());
    set(&object, "pass", &(stats.failures == 0).into());
    Ok(object.into())
}

/// `values` rounded to `dtype` (nearest, ties to even): a Float32Array for "f32", a
/// Uint16Array of the elements' bits for "f16" and "bf16".
#[wasm_bindgen(js_name = toDType, unchecked_return_type = "Tensor")]
pub fn to_dtype(values: &[f32], dtype: &str) -> Result<JsValue, JsError> {
    let dtype = options::dtype_option(&dtype.into(), "dtype")?.unwrap_or(DType::F32);
    let bytes: Vec<u8> = match dtype {
        DType::F32 => bytemuck::cast_slice(values).to_vec(),
        DType::F16 => values
            .iter()
            .flat_map(|&v| crate::f16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
        DType::Bf16 => values
            .iter()
            .flat_map(|&v| crate::bf16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
    };
    let kind = match dtype {
        DType::F32 => tensors::ArrayKind::Float32,
        _ => tensors::ArrayKind::Uint16,
    };
    tensors::to_js(&bytes, kind)
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
