//! The JavaScript options objects, checked key by key into the crate's configs: a typo or a
//! wrong type is an error that names the option, never silently ignored.

use super::tensors::JsTensor;
use crate::adapter::AdapterChoice;
use crate::config::{EpsMode, Gain, LayerNormConfig, PartialRms, RmsNormConfig};
use crate::dtype::DType;
use crate::kernel::{KernelOptions, Reduction};
use js_sys::{Object, Reflect};
use wasm_bindgen::prelude::*;

/// What `Normalizer.create` was asked for.
pub(super) struct CreateOptions {
    pub(super) choice: AdapterChoice,
    pub(super) kernel: KernelOptions,
    /// Timestamp queries around every call (`timestamps: true`).
    pub(super) timestamps: bool,
}

pub(super) fn parse_create_options(options: &JsValue) -> Result<CreateOptions, JsError> {
    let (choice, kernel) = parse_device_options(options)?;
    let timestamps = match get_option(options, "timestamps") {
        v if v.is_undefined() => false,
        v => v
            .as_bool()
            .ok_or_else(|| JsError::new("option timestamps must be a boolean"))?,
    };
    Ok(CreateOptions {
        choice,
        kernel,
        timestamps,
    })
}

/// `options[key]`, undefined where options is not an object.
fn get_option(options: &JsValue, key: &str) -> JsValue {
    if !options.is_object() {
        return JsValue::UNDEFINED;
    }
    Reflect::get(options, &key.into()).unwrap_or(JsValue::UNDEFINED)
}

fn parse_device_options(options: &JsValue) -> Result<(AdapterChoice, KernelOptions), JsError> {
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
            "timestamps",
        ],
    )?;
    let get = |key: &str| get_option(options, key);
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
            Some("per-invocation") => Reduction::PerInvocation,
            _ => return Err(JsError::new(
                "option reduction must be \"auto\", \"tree\", \"subgroups\", \"single-subgroup\" or \"per-invocation\"",
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

/// A config with the weights it was given.
pub(super) struct Parsed<C> {
    pub(super) config: C,
    pub(super) gain: Option<JsTensor>,
    pub(super) bias: Option<JsTensor>,
}

impl<C> Parsed<C> {
    /// The gain and bias widened to f32, for the reference.
    pub(super) fn weight_values(&self, dtype: DType) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
        let values = |t: &Option<JsTensor>| t.as_ref().map(|t| t.values(dtype));
        (values(&self.gain), values(&self.bias))
    }
}

pub(super) type ParsedOptions = Parsed<RmsNormConfig>;

const KNOWN_OPTIONS: [&str; 9] = [
    "gain",
    "gainOffset",
    "bias",
    "eps",
    "epsMode",
    "p",
    "k",
    "dtype",
    "weightDtype",
];

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

pub(super) fn parse_options(
    hidden: u32,
    options: &JsValue,
    partial: bool,
) -> Result<ParsedOptions, JsError> {
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
    config.dtype = dtype_option(&get("dtype"), "dtype")?.unwrap_or(DType::F32);
    config.weight_dtype = dtype_option(&get("weightDtype"), "weightDtype")?.unwrap_or(config.dtype);
    let vector = |key: &str| -> Result<Option<JsTensor>, JsError> {
        let value = get(key);
        if value.is_undefined() {
            return Ok(None);
        }
        JsTensor::read(&format!("option {key}"), &value, config.weight_dtype).map(Some)
    };
    if let Some(eps) = number("eps")? {
        config.eps = eps as f32;
        // A JS number below f32's range would become 0 (a different convention) silently.
        if eps != 0.0 && config.eps == 0.0 {
            return Err(JsError::new(&format!(
                "option eps = {eps} rounds to 0 in f32: pass 0, or at least 1.1754944e-38"
            )));
        }
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

/// An element type option: "f32", "f16" or "bf16", or `None` where it is not given.
pub(super) fn dtype_option(value: &JsValue, key: &str) -> Result<Option<DType>, JsError> {
    if value.is_undefined() {
        return Ok(None);
    }
    value
        .as_string()
        .and_then(|name| DType::from_name(&name))
        .map(Some)
        .ok_or_else(|| {
            JsError::new(&format!(
                "option {key} must be \"f32\", \"f16\" or \"bf16\""
            ))
        })
}

pub(super) type ParsedLayerOptions = Parsed<LayerNormConfig>;

/// layerNorm's options: those of rmsNorm without p, k and epsMode (eps is inside the root).
pub(super) fn parse_layer_options(
    hidden: u32,
    options: &JsValue,
) -> Result<ParsedLayerOptions, JsError> {
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
        .with_dtype(rms.dtype)
        .with_weight_dtype(rms.weight_dtype)
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

pub(super) fn has_key(options: &JsValue, key: &str) -> bool {
    options.is_object() && Reflect::has(options, &key.into()).unwrap_or(false)
}

/// A JS number that must be a whole number from 0 to 2^32 - 1 (the configs then check
/// their own ranges).
pub(crate) fn count(name: &str, value: f64) -> Result<u32, JsError> {
    if value.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&value) {
        Ok(value as u32)
    } else {
        Err(JsError::new(&format!(
            "{name} must be a whole number from 0 to 4294967295, not {value}"
        )))
    }
}

/// What a JS value is, for messages: its constructor's name, or its typeof.
pub(super) fn type_name(value: &JsValue) -> String {
    let constructor = value
        .is_object()
        .then(|| Reflect::get(value, &"constructor".into()).ok())
        .flatten()
        .and_then(|c| Reflect::get(&c, &"name".into()).ok())
        .and_then(|n| n.as_string());
    constructor.unwrap_or_else(|| value.js_typeof().as_string().unwrap_or_default())
}
