//! Tensors that stay on the GPU between calls, and normalization layers whose weights are
//! uploaded once: JavaScript chains calls with no readback, and shares the device and the
//! buffers with its own WebGPU work.

use super::options::{parse_layer_options, parse_options, type_name};
use super::tensors::{self, ArrayKind, JsTensor};
use super::{set, to_js};
use crate::config::{LayerNormConfig, Residual, RmsNormConfig};
use crate::context::GpuContext;
use crate::dtype::DType;
use crate::kernel::{BufferRegion, LayerNorm, Norm, RmsNorm, RmsNormBuffers};
use js_sys::{Object, Reflect};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use wasm_bindgen::prelude::*;

/// A popped error scope, awaited after the submission it guards.
type ScopeResult = Pin<Box<dyn Future<Output = Option<wgpu::Error>>>>;

/// Usages of every tensor's buffer: bound as storage by the kernels, copied from (reads) and
/// to (writes, copies in).
const TENSOR_USAGES: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// A tensor's buffer and what it holds.
#[derive(Debug)]
pub(super) struct TensorState {
    buffer: wgpu::Buffer,
    /// Elements.
    len: u64,
    dtype: DType,
    /// The array type `read()` returns.
    kind: ArrayKind,
    destroyed: Cell<bool>,
    /// The context (Normalizer) whose device holds the buffer.
    owner: *const GpuContext,
}

impl TensorState {
    fn byte_len(&self) -> u64 {
        self.len * self.dtype.bytes()
    }

    fn destroy(&self) {
        if !self.destroyed.replace(true) {
            self.buffer.destroy();
        }
    }
}

thread_local! {
    /// Live tensors by id, so that a `GpuTensor` passed where a `Tensor` may also be is found
    /// without taking it from JavaScript (and without trusting its class name, which a
    /// minifier renames).
    static TENSORS: RefCell<HashMap<u64, Weak<TensorState>>> = RefCell::new(HashMap::new());
    /// The next id: a random multiple of 2^21 below 2^53 per module instance, so that a
    /// tensor of another instance of this package (another bundle's copy) is not taken for
    /// one of ours, plus a counter.
    static NEXT_ID: Cell<u64> = Cell::new(
        (js_sys::Math::random() * f64::from(1u32 << 31)) as u64 * (1 << 21) + 1,
    );
}

/// The next tensor id (ids stay below 2^53, exact as JS numbers).
fn next_id() -> u64 {
    NEXT_ID.with(|n| {
        let id = n.get();
        let base = id & !((1 << 21) - 1);
        n.set(base + ((id + 1) & ((1 << 21) - 1)).max(1));
        id
    })
}

/// A tensor in a GPU buffer of the library's device (`buffer`, a `GPUBuffer` with usages
/// STORAGE | COPY_SRC | COPY_DST, `byteLength` rounded up to 16 bytes). Normalization calls
/// given one return one, with no readback; `read()` reads it back. `destroy()` (or `using`,
/// or `free()`) frees the GPU memory at once; otherwise it goes when the object is collected.
#[wasm_bindgen]
pub struct GpuTensor {
    id: u64,
    state: Rc<TensorState>,
    gpu: Rc<GpuContext>,
}

impl Drop for GpuTensor {
    fn drop(&mut self) {
        self.state.destroy();
        TENSORS.with(|t| t.borrow_mut().remove(&self.id));
    }
}

impl GpuTensor {
    /// A tensor of `len` elements, zeros or `contents` (little-endian bytes of `dtype`).
    pub(super) fn new(
        gpu: &Rc<GpuContext>,
        len: u64,
        dtype: DType,
        kind: ArrayKind,
        contents: Option<&[u8]>,
    ) -> Result<Self, JsError> {
        let bytes = len * dtype.bytes();
        let limit = gpu.device().limits().max_buffer_size;
        // Whole vec4s where the device allows: rows at any element bind vec4s up to the next
        // 16 bytes.
        let size = match bytes.next_multiple_of(16).max(16) {
            padded if padded <= limit => padded,
            _ => bytes.next_multiple_of(4),
        };
        if size > limit {
            return Err(JsError::new(&format!(
                "a tensor of {len} {dtype} elements needs {size} bytes; this device's buffers \
                 hold at most {limit}: pass fewer rows per call"
            )));
        }
        let buffer = gpu.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-rmsnorm tensor"),
            size,
            usage: TENSOR_USAGES,
            mapped_at_creation: false,
        });
        if let Some(contents) = contents {
            write_padded(gpu, &buffer, contents);
        }
        let state = Rc::new(TensorState {
            buffer,
            len,
            dtype,
            kind,
            destroyed: Cell::new(false),
            owner: Rc::as_ptr(gpu),
        });
        let id = next_id();
        TENSORS.with(|t| t.borrow_mut().insert(id, Rc::downgrade(&state)));
        Ok(Self {
            id,
            state,
            gpu: gpu.clone(),
        })
    }

    /// A tensor holding a typed array's elements.
    pub(super) fn upload(
        gpu: &Rc<GpuContext>,
        data: &JsTensor,
        dtype: DType,
    ) -> Result<Self, JsError> {
        let len = data.bytes.len() as u64 / dtype.bytes();
        Self::new(gpu, len, dtype, data.kind, Some(&data.bytes))
    }

    fn live(&self, what: &str) -> Result<&Rc<TensorState>, JsError> {
        if self.state.destroyed.get() {
            return Err(JsError::new(&format!("{what}: this tensor was destroyed")));
        }
        Ok(&self.state)
    }
}

/// `contents` written from the buffer's start, its last word padded with zeros (writes are
/// whole 4-byte words).
fn write_padded(gpu: &GpuContext, buffer: &wgpu::Buffer, contents: &[u8]) {
    if contents.len().is_multiple_of(4) {
        gpu.queue().write_buffer(buffer, 0, contents);
    } else {
        let mut padded = contents.to_vec();
        padded.resize(contents.len().next_multiple_of(4), 0);
        gpu.queue().write_buffer(buffer, 0, &padded);
    }
}

#[wasm_bindgen]
impl GpuTensor {
    /// The `GPUBuffer` on `gpu.device` holding the elements from byte 0 (little-endian;
    /// 16-bit elements two to a word). Bind it, copy to and from it, write it in your own
    /// passes; keep this tensor alive (and not destroyed) while you use it.
    #[wasm_bindgen(getter, unchecked_return_type = "GPUBuffer")]
    pub fn buffer(&self) -> Result<JsValue, JsError> {
        let state = self.live("buffer")?;
        state
            .buffer
            .as_webgpu()
            .map(|b| JsValue::from(b.clone()))
            .ok_or_else(|| JsError::new("this tensor's buffer is not a WebGPU buffer"))
    }

    /// Elements.
    #[wasm_bindgen(getter)]
    pub fn length(&self) -> f64 {
        self.state.len as f64
    }

    /// Bytes of the elements (the buffer itself is rounded up to 16).
    #[wasm_bindgen(getter, js_name = byteLength)]
    pub fn byte_length(&self) -> f64 {
        self.state.byte_len() as f64
    }

    /// The element type: "f32", "f16" or "bf16".
    #[wasm_bindgen(getter, unchecked_return_type = "DType")]
    pub fn dtype(&self) -> String {
        self.state.dtype.name().to_string()
    }

    /// Whether `destroy()` has run.
    #[wasm_bindgen(getter)]
    pub fn destroyed(&self) -> bool {
        self.state.destroyed.get()
    }

    /// Identifies the tensor when it is passed to the library (not for applications).
    #[wasm_bindgen(getter, js_name = tensorId, skip_typescript)]
    pub fn tensor_id(&self) -> f64 {
        self.id as f64
    }

    /// Reads the elements back: a Float32Array for f32, a Uint16Array of bits for f16 and
    /// bf16 (a Float16Array where the tensor was made from one).
    /// The copy is submitted by this call: writes, copies and calls made after it do not
    /// change what it reads.
    #[wasm_bindgen(unchecked_return_type = "Promise<Tensor>")]
    pub fn read(&self) -> js_sys::Promise {
        let submitted = self
            .live("read")
            .and_then(|state| submit_read(&self.gpu, state).map_err(to_js));
        let (gpu, kind) = (self.gpu.clone(), self.state.kind);
        wasm_bindgen_futures::future_to_promise(async move {
            let bytes = finish_read(&gpu, submitted?).await.map_err(to_js)?;
            Ok(tensors::to_js(&bytes, kind)?)
        })
    }

    /// Overwrites the elements with `data` (the tensor's dtype and length), in queue order.
    pub fn write(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Tensor")] data: JsValue,
    ) -> Result<(), JsError> {
        let state = self.live("write")?;
        let data = JsTensor::read("data", &data, state.dtype)?;
        if data.bytes.len() as u64 != state.byte_len() {
            return Err(JsError::new(&format!(
                "data has {} elements; this tensor has {}",
                data.bytes.len() as u64 / state.dtype.bytes(),
                state.len
            )));
        }
        write_padded(&self.gpu, &state.buffer, &data.bytes);
        Ok(())
    }

    /// Copies `byteLength` (rounded up to 4) bytes into this tensor from `source`, a
    /// `GPUBuffer` of `gpu.device` with COPY_SRC usage, starting at `sourceOffset` (a
    /// multiple of 4, default 0), in queue order. The library cannot adopt a buffer made
    /// elsewhere (wgpu wraps only its own), so data enters by this copy on the GPU.
    /// The copy is submitted by this call; the promise says whether the browser took it.
    #[wasm_bindgen(js_name = copyFrom, unchecked_return_type = "Promise<void>")]
    pub fn copy_from(
        &self,
        #[wasm_bindgen(unchecked_param_type = "GPUBuffer")] source: JsValue,
        source_offset: Option<f64>,
    ) -> js_sys::Promise {
        let submitted = self
            .live("copyFrom")
            .and_then(|state| submit_copy(&self.gpu, state, &source, source_offset.unwrap_or(0.0)));
        wasm_bindgen_futures::future_to_promise(async move {
            if let Some(popped) = submitted? {
                let error = wasm_bindgen_futures::JsFuture::from(popped).await?;
                if !error.is_null() && !error.is_undefined() {
                    let message = Reflect::get(&error, &"message".into())
                        .ok()
                        .and_then(|m| m.as_string())
                        .unwrap_or_default();
                    return Err(JsError::new(&format!(
                        "copyFrom failed: {message} (the source must be a GPUBuffer of \
                         gpu.device with COPY_SRC usage, not destroyed)"
                    ))
                    .into());
                }
            }
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Frees the GPU memory now; later uses are errors. Calling it again does nothing.
    pub fn destroy(&self) {
        self.state.destroy();
    }
}

/// The tensor behind `value` where it is a `GpuTensor`; `None` for anything else.
pub(super) fn resident(name: &str, value: &JsValue) -> Option<Result<Rc<TensorState>, JsError>> {
    if !value.is_object() || js_sys::ArrayBuffer::is_view(value) {
        return None;
    }
    // A freed GpuTensor's getter throws (its pointer is gone): still ours, and an error.
    let id = match Reflect::get(value, &"tensorId".into()) {
        Ok(id) => id.as_f64()?,
        Err(_) => {
            return Some(Err(JsError::new(&format!(
                "{name} is a GpuTensor that was freed"
            ))))
        }
    };
    let state = TENSORS.with(|t| t.borrow().get(&(id as u64)).and_then(Weak::upgrade));
    Some(match state {
        Some(state) if !state.destroyed.get() => Ok(state),
        Some(_) => Err(JsError::new(&format!("{name} is a destroyed GpuTensor"))),
        None => Err(JsError::new(&format!(
            "{name} is a GpuTensor that was freed, or one of another copy of this module"
        ))),
    })
}

/// Copies a tensor to a staging buffer made for the read, and submits: the tensor's
/// contents as of now.
fn submit_read(gpu: &GpuContext, state: &TensorState) -> crate::Result<(wgpu::Buffer, usize)> {
    gpu.check_not_lost()?;
    let size = state.buffer.size();
    let staging = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("wgpu-rmsnorm tensor read"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(&state.buffer, 0, &staging, 0, size);
    gpu.queue().submit([encoder.finish()]);
    Ok((staging, state.byte_len() as usize))
}

/// Maps a submitted read's staging buffer: the tensor's bytes. The buffer is destroyed.
async fn finish_read(
    gpu: &GpuContext,
    (staging, len): (wgpu::Buffer, usize),
) -> crate::Result<Vec<u8>> {
    let slice = staging.slice(..);
    let mapped = crate::platform::map_read(gpu.device(), slice).await;
    let bytes = mapped.and_then(|()| {
        slice
            .get_mapped_range()
            .map(|view| view[..len].to_vec())
            .map_err(|e| crate::Error::Readback(e.to_string()))
    });
    staging.destroy();
    bytes
}

/// A copy from an application's `GPUBuffer` into `state`, submitted now on the browser's
/// device and queue (which wgpu's own calls also go through, so queue order holds), inside a
/// validation error scope: returns the popped scope's promise (`None`: nothing to copy).
/// A buffer of another device or without COPY_SRC is then an error, not a console warning.
fn submit_copy(
    gpu: &GpuContext,
    state: &TensorState,
    source: &JsValue,
    offset: f64,
) -> Result<Option<js_sys::Promise>, JsError> {
    gpu.check_not_lost().map_err(to_js)?;
    // byteLength rounded up to whole words (copies move 4-byte words).
    let size = state.byte_len().next_multiple_of(4);
    let source_size = Reflect::get(source, &"size".into())
        .ok()
        .and_then(|v| v.as_f64());
    let Some(source_size) = source_size.filter(|_| type_name(source) == "GPUBuffer") else {
        return Err(JsError::new(&format!(
            "source must be a GPUBuffer, not {}",
            type_name(source)
        )));
    };
    if offset < 0.0 || offset.fract() != 0.0 || offset % 4.0 != 0.0 {
        return Err(JsError::new(&format!(
            "sourceOffset = {offset} must be a whole multiple of 4 bytes"
        )));
    }
    if offset + size as f64 > source_size {
        return Err(JsError::new(&format!(
            "the source holds {source_size} bytes; copying {size} bytes from offset {offset} \
             needs {}",
            offset + size as f64
        )));
    }
    if size == 0 {
        return Ok(None);
    }
    let device: JsValue = gpu
        .device()
        .as_webgpu()
        .map(|d| d.clone().into())
        .ok_or_else(|| JsError::new("the device is not a WebGPU device"))?;
    let target: JsValue = state
        .buffer
        .as_webgpu()
        .map(|b| b.clone().into())
        .unwrap_or_default();
    let call = |object: &JsValue, method: &str, args: &[JsValue]| -> Result<JsValue, JsValue> {
        let function: js_sys::Function = Reflect::get(object, &method.into())?.dyn_into()?;
        Reflect::apply(&function, object, &args.iter().collect())
    };
    call(&device, "pushErrorScope", &["validation".into()]).map_err(js_error)?;
    let copied = (|| {
        let encoder = call(&device, "createCommandEncoder", &[])?;
        let args = [
            source.clone(),
            offset.into(),
            target,
            0.into(),
            (size as f64).into(),
        ];
        call(&encoder, "copyBufferToBuffer", &args)?;
        let commands = call(&encoder, "finish", &[])?;
        let queue = Reflect::get(&device, &"queue".into())?;
        call(&queue, "submit", &[js_sys::Array::of1(&commands).into()])
    })();
    // Popped whatever happened, so no scope is left on the device.
    let popped = call(&device, "popErrorScope", &[]).map_err(js_error)?;
    copied.map_err(js_error)?;
    Ok(Some(popped.dyn_into().map_err(js_error)?))
}

/// A thrown JS value as an error with its message.
fn js_error(value: JsValue) -> JsError {
    let message = value
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .unwrap_or_else(|| format!("{value:?}"));
    JsError::new(&format!("copyFrom failed: {message}"))
}

/// A normalization whose gain and bias live on the GPU, uploaded once: made by
/// `gpu.rmsNormLayer(hidden, options)` or `gpu.layerNormLayer(hidden, options)`, then called
/// per step.
#[wasm_bindgen]
pub struct NormLayer {
    inner: Rc<LayerInner>,
}

/// A layer's weights, config and kernels, shared with the promises of its calls.
#[derive(Debug)]
pub(super) struct LayerInner {
    gpu: Rc<GpuContext>,
    norm: Norm,
    /// The call's config without a residual (LayerNorm's in the RMSNorm config's terms).
    config: RmsNormConfig,
    /// Gain at 0 and bias at `bias_offset`, where the config has them.
    weights: Option<wgpu::Buffer>,
    bias_offset: u64,
    /// The kernels without and with the residual add, planned on first use.
    kernels: RefCell<[Option<Rc<LayerKernel>>; 2]>,
    destroyed: Cell<bool>,
}

/// A planned kernel of either normalization.
#[derive(Debug)]
enum LayerKernel {
    Rms(RmsNorm),
    Layer(LayerNorm),
}

impl LayerKernel {
    fn prepare(
        &self,
        gpu: &GpuContext,
        buffers: &RmsNormBuffers<'_>,
        rows: u32,
    ) -> crate::Result<crate::kernel::PreparedDispatch> {
        match self {
            Self::Rms(k) => k.prepare(gpu.device(), buffers, rows),
            Self::Layer(k) => k.prepare(gpu.device(), buffers, rows),
        }
    }

    fn record(
        &self,
        prepared: &crate::kernel::PreparedDispatch,
        encoder: &mut wgpu::CommandEncoder,
    ) -> crate::Result<()> {
        match self {
            Self::Rms(k) => k.record(prepared, encoder, None),
            Self::Layer(k) => k.record(prepared, encoder, None),
        }
    }
}

impl Drop for LayerInner {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// The output tensor and, with a residual add, the sum.
type Outputs = (GpuTensor, Option<GpuTensor>);

impl LayerInner {
    fn destroy(&self) {
        if !self.destroyed.replace(true) {
            if let Some(weights) = &self.weights {
                weights.destroy();
            }
        }
    }

    /// A layer of `norm` from JS options (those of the matching call: gain, bias, eps, ...).
    pub(super) fn from_options(
        gpu: &Rc<GpuContext>,
        norm: Norm,
        hidden: u32,
        options: &JsValue,
        partial: bool,
    ) -> Result<Self, JsError> {
        let (config, gain, bias) = match norm {
            Norm::Rms => {
                let parsed = parse_options(hidden, options, partial)?;
                (parsed.config, parsed.gain, parsed.bias)
            }
            Norm::Layer => {
                let parsed = parse_layer_options(hidden, options)?;
                (parsed.config.as_rms_config(), parsed.gain, parsed.bias)
            }
        };
        config.validate().map_err(to_js)?;
        config
            .check_weights(
                gain.as_ref()
                    .map(|g| g.bytes.len() / config.weight_dtype.bytes() as usize),
                bias.as_ref()
                    .map(|b| b.bytes.len() / config.weight_dtype.bytes() as usize),
            )
            .map_err(to_js)?;
        let vector = (u64::from(hidden) * config.weight_dtype.bytes()).next_multiple_of(16);
        let alignment = u64::from(gpu.device().limits().min_storage_buffer_offset_alignment);
        let bias_offset = vector.next_multiple_of(alignment);
        let weights = (gain.is_some() || bias.is_some()).then(|| {
            let buffer = gpu.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-rmsnorm layer weights"),
                size: bias_offset + vector,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            for (at, vector) in [(0, &gain), (bias_offset, &bias)] {
                if let Some(v) = vector {
                    let mut bytes = v.bytes.clone();
                    bytes.resize(bytes.len().next_multiple_of(4), 0);
                    gpu.queue().write_buffer(&buffer, at, &bytes);
                }
            }
            buffer
        });
        Ok(Self {
            gpu: gpu.clone(),
            norm,
            config,
            weights,
            bias_offset,
            kernels: RefCell::new([None, None]),
            destroyed: Cell::new(false),
        })
    }

    /// The kernel without (`residual` false) or with the residual add.
    fn kernel(&self, residual: bool) -> crate::Result<Rc<LayerKernel>> {
        if let Some(kernel) = &self.kernels.borrow()[usize::from(residual)] {
            return Ok(kernel.clone());
        }
        let config = self.call_config(residual);
        let kernel = Rc::new(match self.norm {
            Norm::Rms => LayerKernel::Rms(self.gpu.kernel(&config)?),
            Norm::Layer => LayerKernel::Layer(
                self.gpu
                    .layer_norm_kernel(&LayerNormConfig::from_rms_config(&config))?,
            ),
        });
        self.kernels.borrow_mut()[usize::from(residual)] = Some(kernel.clone());
        Ok(kernel)
    }

    fn call_config(&self, residual: bool) -> RmsNormConfig {
        let mut config = self.config;
        if residual {
            config.residual = Residual::AddStoreSum;
        }
        config
    }

    /// Checks x (and the residual) against the layer: their rows.
    fn check_inputs(
        &self,
        x: &TensorState,
        residual: Option<&TensorState>,
    ) -> Result<u32, JsError> {
        let dtype = self.config.dtype;
        for (name, t) in [("x", Some(x)), ("residual", residual)] {
            match t {
                Some(t) if t.owner != Rc::as_ptr(&self.gpu) => {
                    return Err(JsError::new(&format!(
                        "{name} was made by another Normalizer (another device): make it with \
                         this one's tensor(), or copy it in with copyFrom"
                    )))
                }
                Some(t) if t.dtype != dtype => {
                    return Err(JsError::new(&format!(
                        "{name} is a {} tensor; this call takes {dtype} (option dtype)",
                        t.dtype
                    )))
                }
                Some(t) if t.len != x.len => {
                    return Err(JsError::new(&format!(
                        "residual has {} elements; x has {}",
                        t.len, x.len
                    )))
                }
                _ => {}
            }
        }
        let elements = usize::try_from(x.len).unwrap_or(usize::MAX);
        let rows = self.config.rows_in(elements).map_err(to_js)?;
        u32::try_from(rows).map_err(|_| JsError::new(&format!("{rows} rows: pass fewer per call")))
    }

    /// Checks, records and submits one call on GPU tensors now, inside error scopes (the
    /// kernel planned inside them too): the new output (and sum) tensors, and the scopes'
    /// results to await before handing them out.
    fn submit(
        &self,
        x: &TensorState,
        residual: Option<&TensorState>,
    ) -> Result<(Outputs, [ScopeResult; 2]), JsError> {
        self.gpu.check_not_lost().map_err(to_js)?;
        if self.destroyed.get() {
            return Err(JsError::new("this layer was destroyed"));
        }
        let rows = self.check_inputs(x, residual)?;
        let device = self.gpu.device();
        let out_of_memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let recorded = self
            .kernel(residual.is_some())
            .map_err(to_js)
            .and_then(|kernel| self.record(&kernel, x, residual, rows));
        let scopes: [ScopeResult; 2] = [Box::pin(validation.pop()), Box::pin(out_of_memory.pop())];
        recorded.map(|outputs| (outputs, scopes))
    }

    /// The outputs of a submitted call once its error scopes report nothing; a kernel the
    /// browser refused is not kept.
    async fn finish(&self, outputs: Outputs, scopes: [ScopeResult; 2]) -> Result<Outputs, JsError> {
        let [validation, out_of_memory] = scopes;
        match validation.await.or(out_of_memory.await) {
            None => Ok(outputs),
            Some(e) => {
                *self.kernels.borrow_mut() = [None, None];
                Err(JsError::new(&format!("the GPU refused the call: {e}")))
            }
        }
    }

    fn record(
        &self,
        kernel: &LayerKernel,
        x: &TensorState,
        residual: Option<&TensorState>,
        rows: u32,
    ) -> Result<Outputs, JsError> {
        let new = || GpuTensor::new(&self.gpu, x.len, x.dtype, x.kind, None);
        let output = new()?;
        let sum = residual.map(|_| new()).transpose()?;
        let weight = |at: u64| {
            self.weights
                .as_ref()
                .map(|buffer| BufferRegion { buffer, offset: at })
        };
        let buffers = RmsNormBuffers {
            input: BufferRegion::whole(&x.buffer),
            output: BufferRegion::whole(&output.state.buffer),
            gain: weight(0).filter(|_| self.config.gain != crate::Gain::None),
            bias: weight(self.bias_offset).filter(|_| self.config.bias),
            residual: residual.map(|r| BufferRegion::whole(&r.buffer)),
            sum: sum.as_ref().map(|s| BufferRegion::whole(&s.state.buffer)),
            stats: None,
        };
        let mut encoder = self
            .gpu
            .device()
            .create_command_encoder(&Default::default());
        let prepared = kernel.prepare(&self.gpu, &buffers, rows).map_err(to_js)?;
        kernel.record(&prepared, &mut encoder).map_err(to_js)?;
        self.gpu.queue().submit([encoder.finish()]);
        // Its parameters go with the submitted work, not when the browser collects them.
        prepared.destroy_buffers();
        Ok((output, sum))
    }

    /// One call on whatever JS passed, submitted now (inputs read as they are at the call):
    /// GPU tensors give GPU tensors; typed arrays are uploaded, normalized, read back and
    /// freed, giving typed arrays. The future waits for the error scopes and any readback.
    pub(super) fn call(
        self: &Rc<Self>,
        x: &JsValue,
        residual: Option<&JsValue>,
    ) -> Result<impl Future<Output = Result<JsValue, JsValue>>, JsError> {
        let dtype = self.config.dtype;
        let on_gpu = resident("x", x).is_some();
        let input = |name: &str,
                     value: &JsValue|
         -> Result<(Rc<TensorState>, Option<GpuTensor>), JsError> {
            match resident(name, value) {
                Some(state) if on_gpu => Ok((state?, None)),
                None if !on_gpu => {
                    let tensor =
                        GpuTensor::upload(&self.gpu, &JsTensor::read(name, value, dtype)?, dtype)?;
                    Ok((tensor.state.clone(), Some(tensor)))
                }
                _ => Err(JsError::new(
                    "pass x and residual both as GpuTensors or both as typed arrays",
                )),
            }
        };
        let (x_state, x_upload) = input("x", x)?;
        let residual = residual.map(|r| input("residual", r)).transpose()?;
        let (outputs, scopes) = self.submit(&x_state, residual.as_ref().map(|r| &*r.0))?;
        // Typed arrays: the reads are submitted now too, behind the call.
        let reads = if on_gpu {
            None
        } else {
            let read = |t: &GpuTensor| submit_read(&self.gpu, &t.state).map_err(to_js);
            Some((read(&outputs.0)?, outputs.1.as_ref().map(read).transpose()?))
        };
        let layer = self.clone();
        Ok(async move {
            // The uploads live until the call is submitted; freed now.
            drop((x_upload, residual));
            let (output, sum) = layer.finish(outputs, scopes).await?;
            let (output, sum): (JsValue, Option<JsValue>) = match reads {
                None => (output.into(), sum.map(JsValue::from)),
                Some((output_read, sum_read)) => {
                    let bytes = finish_read(&layer.gpu, output_read).await.map_err(to_js)?;
                    let output = tensors::to_js(&bytes, output.state.kind)?;
                    let sum = match (sum_read, sum) {
                        (Some(read), Some(sum)) => {
                            let bytes = finish_read(&layer.gpu, read).await.map_err(to_js)?;
                            Some(tensors::to_js(&bytes, sum.state.kind)?)
                        }
                        _ => None,
                    };
                    (output, sum)
                }
            };
            match sum {
                None => Ok(output),
                Some(sum) => {
                    let object = Object::new();
                    set(&object, "output", &output);
                    set(&object, "sum", &sum);
                    Ok(object.into())
                }
            }
        })
    }
}

#[wasm_bindgen]
impl NormLayer {
    /// The normalization of `x`: a GpuTensor resolves to a new GpuTensor (no readback), a
    /// typed array to a typed array.
    #[wasm_bindgen(unchecked_return_type = "Promise<any>")]
    pub fn forward(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Tensor | GpuTensor")] x: JsValue,
    ) -> js_sys::Promise {
        self.promise(x, None)
    }

    /// The normalization of `h = x + residual` in one kernel: `{ output, sum }`, sum being h
    /// rounded to the dtype (the next layer's residual); GpuTensors in, GpuTensors out.
    #[wasm_bindgen(js_name = forwardResidual, unchecked_return_type = "Promise<{ output: any, sum: any }>")]
    pub fn forward_residual(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Tensor | GpuTensor")] x: JsValue,
        #[wasm_bindgen(unchecked_param_type = "Tensor | GpuTensor")] residual: JsValue,
    ) -> js_sys::Promise {
        self.promise(x, Some(residual))
    }

    /// Elements per row.
    #[wasm_bindgen(getter)]
    pub fn hidden(&self) -> u32 {
        self.inner.config.hidden
    }

    /// The element type of x and the outputs.
    #[wasm_bindgen(getter, unchecked_return_type = "DType")]
    pub fn dtype(&self) -> String {
        self.inner.config.dtype.name().to_string()
    }

    /// Frees the weights' GPU memory now (also done when the object is freed or collected);
    /// later calls are errors.
    pub fn destroy(&self) {
        self.inner.destroy();
    }

    fn promise(&self, x: JsValue, residual: Option<JsValue>) -> js_sys::Promise {
        promise_of(self.inner.call(&x, residual.as_ref()))
    }
}

/// The promise of a call submitted now: rejected at once where submitting failed.
pub(super) fn promise_of(
    submitted: Result<impl Future<Output = Result<JsValue, JsValue>> + 'static, JsError>,
) -> js_sys::Promise {
    match submitted {
        Ok(future) => wasm_bindgen_futures::future_to_promise(future),
        Err(error) => js_sys::Promise::reject(&error.into()),
    }
}

impl NormLayer {
    pub(super) fn new(inner: LayerInner) -> Self {
        Self {
            inner: Rc::new(inner),
        }
    }
}
