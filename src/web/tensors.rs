//! Tensors between JavaScript and the GPU: a Float32Array for f32, and for f16 and bf16 a
//! Uint16Array of the elements' bits (or, for f16, the browser's Float16Array where it has
//! one). Results come back in the kind of array the input came in.

use crate::dtype::{bf16, f16, DType};
use js_sys::{Float32Array, Reflect, Uint16Array};
use wasm_bindgen::prelude::*;

/// The JavaScript array type a tensor came in, and results go back in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ArrayKind {
    Float32,
    Uint16,
    Float16,
}

/// A tensor's elements as little-endian bytes of its element type.
#[derive(Debug, Clone)]
pub(super) struct JsTensor {
    pub(super) bytes: Vec<u8>,
    pub(super) kind: ArrayKind,
}

impl JsTensor {
    /// `value` as a tensor of `dtype`; anything else is refused by name and type.
    pub(super) fn read(name: &str, value: &JsValue, dtype: DType) -> Result<Self, JsError> {
        let kind = match (dtype, super::options::type_name(value).as_str()) {
            (DType::F32, "Float32Array") => ArrayKind::Float32,
            (DType::F16 | DType::Bf16, "Uint16Array") => ArrayKind::Uint16,
            (DType::F16, "Float16Array") => ArrayKind::Float16,
            (_, given) => {
                let expected = match dtype {
                    DType::F32 => "a Float32Array",
                    DType::F16 => "a Float16Array or a Uint16Array of f16 bits",
                    DType::Bf16 => "a Uint16Array of bf16 bits",
                };
                return Err(JsError::new(&format!(
                    "{name} must be {expected}, not {given} (dtype {dtype})"
                )));
            }
        };
        let bytes = match kind {
            ArrayKind::Float32 => {
                let values = value.unchecked_ref::<Float32Array>().to_vec();
                bytemuck::cast_slice(&values).to_vec()
            }
            ArrayKind::Uint16 => {
                let bits = value.unchecked_ref::<Uint16Array>().to_vec();
                bytemuck::cast_slice(&bits).to_vec()
            }
            ArrayKind::Float16 => {
                let bits = float16_bits(value)?;
                bytemuck::cast_slice(&bits).to_vec()
            }
        };
        Ok(Self { bytes, kind })
    }

    /// The elements widened to f32 (exact).
    pub(super) fn values(&self, dtype: DType) -> Vec<f32> {
        widen(&self.bytes, dtype)
    }
}

/// Little-endian elements of `dtype` widened to f32.
pub(super) fn widen(bytes: &[u8], dtype: DType) -> Vec<f32> {
    let bits = || {
        bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    match dtype {
        DType::F32 => bytemuck::pod_collect_to_vec(bytes),
        DType::F16 => bits().map(|b| f16::from_bits(b).to_f32()).collect(),
        DType::Bf16 => bits().map(|b| bf16::from_bits(b).to_f32()).collect(),
    }
}

/// The bits of a Float16Array, read through a Uint16Array view of its memory.
fn float16_bits(value: &JsValue) -> Result<Vec<u16>, JsError> {
    let field = |key: &str| Reflect::get(value, &key.into()).ok();
    let number = |key: &str| field(key).and_then(|v| v.as_f64()).unwrap_or(0.0) as u32;
    let buffer = field("buffer").ok_or_else(|| JsError::new("a Float16Array without a buffer"))?;
    let view = Uint16Array::new_with_byte_offset_and_length(
        &buffer,
        number("byteOffset"),
        number("length"),
    );
    Ok(view.to_vec())
}

/// Little-endian bytes as a new JavaScript array of `kind`.
pub(super) fn to_js(bytes: &[u8], kind: ArrayKind) -> Result<JsValue, JsError> {
    match kind {
        ArrayKind::Float32 => {
            let values: Vec<f32> = bytemuck::pod_collect_to_vec(bytes);
            Ok(Float32Array::from(values.as_slice()).into())
        }
        ArrayKind::Uint16 | ArrayKind::Float16 => {
            let bits: Vec<u16> = bytemuck::pod_collect_to_vec(bytes);
            let array = Uint16Array::from(bits.as_slice());
            if kind == ArrayKind::Uint16 {
                return Ok(array.into());
            }
            // new Float16Array(bits.buffer): the browser's own type, where the input was one.
            let constructor: js_sys::Function =
                Reflect::get(&js_sys::global(), &"Float16Array".into())
                    .ok()
                    .and_then(|c| c.dyn_into().ok())
                    .ok_or_else(|| JsError::new("this browser has no Float16Array"))?;
            Reflect::construct(&constructor, &js_sys::Array::of1(&array.buffer()))
                .map_err(|_| JsError::new("a Float16Array could not be made"))
        }
    }
}
