//! The backward in JavaScript: `rmsNormBackward` / `layerNormBackward` on a `Normalizer`,
//! their f64 references, and the norm-wise comparison the tests and the demo page use.

use super::options::{self, count, has_key, parse_layer_options, parse_options};
use super::tensors::{self, JsTensor};
use super::{set, to_js, Kind, Normalizer};
use crate::config::{LayerNormConfig, Residual, RmsNormConfig};
use crate::context::backward::BackwardData;
use crate::dtype::DType;
use crate::kernel::{Layer, Rms};
use crate::reference::{self, BACKWARD_TOL};
use js_sys::{Float32Array, Float64Array, Object};
use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TS_BACKWARD_TYPES: &'static str = r#"
/** What rmsNormBackward and layerNormBackward resolve to. */
export interface Gradients<T extends Tensor> {
  /** dx, of x's type: the gradient of x (and of the residual, where the forward added one). */
  gradInput: T;
  /** dgain, f32, summed over rows (the same bits on every run); where a gain was given. */
  gradGain?: Float32Array;
  /** dbias, f32; where a bias was given. */
  gradBias?: Float32Array;
}

/** The f64 gradients from referenceRmsNormBackward / referenceLayerNormBackward, and the
 *  scales a computation's error is measured against (see compareGradient). */
export interface ReferenceGradients {
  gradInput: Float64Array;
  gradGain?: Float64Array;
  gradBias?: Float64Array;
  /** Per row: the magnitude of the terms dx is made of. */
  gradInputScale: Float64Array;
  /** Per column: sum over rows of |dy x^|. */
  gradGainScale: Float64Array;
  /** Per column: sum over rows of |dy|. */
  gradBiasScale: Float64Array;
}
"#;

/// The forward's kind and its options' config, with the gradient of the sum where given.
struct Call {
    kind: Kind,
    config: RmsNormConfig,
    gain: Option<JsTensor>,
}

fn parse_call(hidden: u32, options: &JsValue, kind: Kind, grad_sum: bool) -> Result<Call, JsError> {
    let (mut config, gain) = match kind {
        Kind::Rms { partial } => {
            let parsed = parse_options(hidden, options, partial)?;
            (parsed.config, parsed.gain)
        }
        Kind::Layer => {
            let parsed = parse_layer_options(hidden, options)?;
            (parsed.config.as_rms_config(), parsed.gain)
        }
    };
    if grad_sum {
        // The forward stored h (rmsNormResidual's sum): x is h, its gradient adds to dx.
        config.residual = Residual::AddStoreSum;
    }
    Ok(Call { kind, config, gain })
}

fn given(value: &JsValue) -> bool {
    !value.is_undefined() && !value.is_null()
}

fn partial(options: &JsValue) -> bool {
    has_key(options, "p") || has_key(options, "k")
}

#[wasm_bindgen]
impl Normalizer {
    /// The gradients of rmsNorm or pRmsNorm (p or k in `options` make it pRMSNorm): `x` is
    /// the forward's input (rmsNormResidual's `sum` where the forward added a residual),
    /// `dy` the gradient of its output, `options` the forward's (dbias comes back where a
    /// bias is given; its values are not used), `gradSum` the gradient of rmsNormResidual's
    /// `sum` where the forward had one. Resolves to `{ gradInput, gradGain?, gradBias? }`.
    #[wasm_bindgen(js_name = rmsNormBackward, unchecked_return_type = "Promise<Gradients<Tensor>>")]
    pub fn rms_norm_backward(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Tensor")] x: JsValue,
        #[wasm_bindgen(unchecked_param_type = "Tensor")] dy: JsValue,
        hidden: f64,
        #[wasm_bindgen(unchecked_optional_param_type = "RmsNormOptions")] options: JsValue,
        #[wasm_bindgen(js_name = gradSum, unchecked_optional_param_type = "Tensor")]
        grad_sum: JsValue,
    ) -> js_sys::Promise {
        let kind = Kind::Rms {
            partial: partial(&options),
        };
        self.backward(x, dy, hidden, options, grad_sum, kind)
    }

    /// The gradients of layerNorm, like rmsNormBackward.
    #[wasm_bindgen(js_name = layerNormBackward, unchecked_return_type = "Promise<Gradients<Tensor>>")]
    pub fn layer_norm_backward(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Tensor")] x: JsValue,
        #[wasm_bindgen(unchecked_param_type = "Tensor")] dy: JsValue,
        hidden: f64,
        #[wasm_bindgen(unchecked_optional_param_type = "RmsNormOptions")] options: JsValue,
        #[wasm_bindgen(js_name = gradSum, unchecked_optional_param_type = "Tensor")]
        grad_sum: JsValue,
    ) -> js_sys::Promise {
        self.backward(x, dy, hidden, options, grad_sum, Kind::Layer)
    }

    fn backward(
        &self,
        x: JsValue,
        dy: JsValue,
        hidden: f64,
        options: JsValue,
        grad_sum: JsValue,
        kind: Kind,
    ) -> js_sys::Promise {
        let gpu = self.gpu.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let hidden = count("hidden", hidden)?;
            let call = parse_call(hidden, &options, kind, given(&grad_sum))?;
            let dtype = call.config.dtype;
            let x = JsTensor::read("x", &x, dtype)?;
            let dy = JsTensor::read("dy", &dy, dtype)?;
            let grad_sum = given(&grad_sum)
                .then(|| JsTensor::read("gradSum", &grad_sum, dtype))
                .transpose()?;
            let data = BackwardData {
                input: &x.bytes,
                residual: None,
                grad_output: &dy.bytes,
                grad_sum: grad_sum.as_ref().map(|g| g.bytes.as_slice()),
                gain: call.gain.as_ref().map(|g| g.bytes.as_slice()),
            };
            let (dx, grad_gain, grad_bias) = match call.kind {
                Kind::Rms { .. } => gpu.backward_bytes::<Rms>(&call.config, data).await,
                Kind::Layer => {
                    let layer = LayerNormConfig::from_rms_config(&call.config);
                    gpu.backward_bytes::<Layer>(&layer, data).await
                }
            }
            .map_err(to_js)?;
            let object = Object::new();
            set(&object, "gradInput", &tensors::to_js(&dx, x.kind)?);
            for (key, grad) in [("gradGain", grad_gain), ("gradBias", grad_bias)] {
                if let Some(grad) = grad {
                    set(&object, key, &Float32Array::from(grad.as_slice()).into());
                }
            }
            Ok(object.into())
        })
    }
}

/// The f64 reference of rmsNormBackward (same arguments, on the CPU).
#[wasm_bindgen(js_name = referenceRmsNormBackward, unchecked_return_type = "ReferenceGradients")]
pub fn reference_rms_norm_backward(
    #[wasm_bindgen(unchecked_param_type = "Tensor")] x: JsValue,
    #[wasm_bindgen(unchecked_param_type = "Tensor")] dy: JsValue,
    hidden: f64,
    #[wasm_bindgen(unchecked_optional_param_type = "RmsNormOptions")] options: JsValue,
    #[wasm_bindgen(unchecked_optional_param_type = "Tensor")] grad_sum: JsValue,
) -> Result<JsValue, JsError> {
    let kind = Kind::Rms {
        partial: partial(&options),
    };
    reference_backward(x, dy, hidden, options, grad_sum, kind)
}

/// The f64 reference of layerNormBackward.
#[wasm_bindgen(js_name = referenceLayerNormBackward, unchecked_return_type = "ReferenceGradients")]
pub fn reference_layer_norm_backward(
    #[wasm_bindgen(unchecked_param_type = "Tensor")] x: JsValue,
    #[wasm_bindgen(unchecked_param_type = "Tensor")] dy: JsValue,
    hidden: f64,
    #[wasm_bindgen(unchecked_optional_param_type = "RmsNormOptions")] options: JsValue,
    #[wasm_bindgen(unchecked_optional_param_type = "Tensor")] grad_sum: JsValue,
) -> Result<JsValue, JsError> {
    reference_backward(x, dy, hidden, options, grad_sum, Kind::Layer)
}

fn reference_backward(
    x: JsValue,
    dy: JsValue,
    hidden: f64,
    options: JsValue,
    grad_sum: JsValue,
    kind: Kind,
) -> Result<JsValue, JsError> {
    let hidden = count("hidden", hidden)?;
    let call = parse_call(hidden, &options, kind, given(&grad_sum))?;
    let (dtype, weight_dtype) = (call.config.dtype, call.config.weight_dtype);
    let x = JsTensor::read("x", &x, dtype)?.values(dtype);
    let dy = JsTensor::read("dy", &dy, dtype)?.values(dtype);
    let dsum = given(&grad_sum)
        .then(|| JsTensor::read("gradSum", &grad_sum, dtype).map(|t| t.values(dtype)))
        .transpose()?;
    let gain = call.gain.as_ref().map(|g| g.values(weight_dtype));
    let gradients = match call.kind {
        Kind::Rms { .. } => {
            reference::rms_norm_backward(&x, &dy, &call.config, gain.as_deref(), dsum.as_deref())
        }
        Kind::Layer => reference::layer_norm_backward(
            &x,
            &dy,
            &LayerNormConfig::from_rms_config(&call.config),
            gain.as_deref(),
            dsum.as_deref(),
        ),
    }
    .map_err(to_js)?;
    let object = Object::new();
    let array = |v: &[f64]| JsValue::from(Float64Array::from(v));
    set(&object, "gradInput", &array(&gradients.dx));
    if let Some(g) = &gradients.dgain {
        set(&object, "gradGain", &array(g));
    }
    if let Some(b) = &gradients.dbias {
        set(&object, "gradBias", &array(b));
    }
    set(&object, "gradInputScale", &array(&gradients.dx_scale));
    set(&object, "gradGainScale", &array(&gradients.dgain_scale));
    set(&object, "gradBiasScale", &array(&gradients.dbias_scale));
    Ok(object.into())
}

/// Compares a gradient with its f64 reference norm-wise: element i within 1e-5 of
/// `scale[floor(i / group)]` (dx: the reference's per-row `gradInputScale` with group =
/// hidden; dgain and dbias: per column, group = 1), for a 16-bit dx a rounding of a value
/// within it. `errOverScale`: the largest error over its scale.
#[wasm_bindgen(js_name = compareGradient, unchecked_return_type = "{ maxAbs: number, errOverScale: number, pass: boolean }")]
pub fn compare_gradient(
    #[wasm_bindgen(unchecked_param_type = "Tensor")] actual: JsValue,
    expected: &[f64],
    scale: &[f64],
    group: f64,
    #[wasm_bindgen(unchecked_optional_param_type = "DType")] dtype: JsValue,
) -> Result<JsValue, JsError> {
    let dtype = options::dtype_option(&dtype, "dtype")?.unwrap_or(DType::F32);
    let group = count("group", group)?.max(1) as usize;
    let actual = JsTensor::read("actual", &actual, dtype)?.values(dtype);
    let stats = reference::compare_normwise(&actual, expected, scale, group, dtype, BACKWARD_TOL);
    let object = Object::new();
    set(&object, "maxAbs", &stats.max_abs.into());
    set(&object, "errOverScale", &stats.max_rel.into());
    set(&object, "pass", &(stats.failures == 0).into());
    Ok(object.into())
}
