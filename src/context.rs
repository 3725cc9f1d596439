//! The high-level API: slices in, `Vec` out, on a device it picks or one you bring.

use crate::adapter::{self, AdapterChoice};
use crate::config::{LayerNormConfig, Residual, RmsNormConfig};
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::kernel::pipelines::PipelineCache;
use crate::kernel::plan::Pass;
use crate::kernel::{
    BufferRegion, KernelCore, KernelOptions, Norm, PreparedDispatch, RmsNorm, RmsNormBuffers,
};
use crate::platform;
use std::sync::{Arc, Mutex, PoisonError};

pub(crate) mod backward;
pub use backward::{BackwardInputs, NormGradients};

/// Optional gain and bias vectors for a high-level call; each present exactly when the
/// config asks for it, of the config's `weight_dtype` (`f32`, [`f16`](crate::f16) or
/// [`bf16`](crate::bf16)).
#[derive(Debug, Clone, Copy)]
pub struct Weights<'a, W: Element = f32> {
    /// `hidden` gains.
    pub gain: Option<&'a [W]>,
    /// `hidden` biases.
    pub bias: Option<&'a [W]>,
}

impl<W: Element> Default for Weights<'_, W> {
    fn default() -> Self {
        Self {
            gain: None,
            bias: None,
        }
    }
}

impl Weights<'static, f32> {
    /// No gain, no bias.
    pub const NONE: Weights<'static, f32> = Weights {
        gain: None,
        bias: None,
    };
}

/// What a high-level call with a residual add returns.
#[derive(Debug, Clone, PartialEq)]
pub struct ResidualOutput<T> {
    /// The normalized output y.
    pub output: Vec<T>,
    /// The sum h = x + r (rounded to the activations' type), where the config stores it
    /// ([`Residual::AddStoreSum`] or [`Residual::AddStoreSumInPlace`]).
    pub sum: Option<Vec<T>>,
}

/// A high-level call's data as little-endian bytes of the config's element types.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallData<'a> {
    pub x: &'a [u8],
    pub residual: Option<&'a [u8]>,
    pub gain: Option<&'a [u8]>,
    pub bias: Option<&'a [u8]>,
}

impl<'a> CallData<'a> {
    /// Checks the element types against `config`; lengths are checked later.
    fn new<T: Element, W: Element>(
        config: &RmsNormConfig,
        x: &'a [T],
        residual: Option<&'a [T]>,
        weights: Weights<'a, W>,
    ) -> Result<Self> {
        if T::DTYPE != config.dtype {
            return Err(Error::DTypeMismatch {
                which: "input",
                expected: config.dtype,
                given: T::DTYPE,
                fix: "pass elements of the config's dtype, or set it with with_dtype",
            });
        }
        if (weights.gain.is_some() || weights.bias.is_some()) && W::DTYPE != config.weight_dtype {
            return Err(Error::DTypeMismatch {
                which: "gain or bias",
                expected: config.weight_dtype,
                given: W::DTYPE,
                fix: "pass weights of the config's weight_dtype, or set it with \
                      with_weight_dtype",
            });
        }
        let bytes = |v: &'a [W]| bytemuck::cast_slice::<W, u8>(v);
        Ok(Self {
            x: bytemuck::cast_slice(x),
            residual: residual.map(bytemuck::cast_slice),
            gain: weights.gain.map(bytes),
            bias: weights.bias.map(bytes),
        })
    }
}

/// The features the kernels use when the device has them.
const WANTED_FEATURES: wgpu::Features = wgpu::Features::SUBGROUP
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
    .union(wgpu::Features::SHADER_F16);

/// The optional features of `adapter` to request when you open your own device for this
/// crate: subgroups (the fastest reduction: a device made with `DeviceDescriptor::default()`
/// has none, and its kernels reduce through workgroup memory, measured 2x slower in a
/// training-style loop), `shader-f16` (native f16 arithmetic for f16 tensors) and timestamp
/// queries (call timing, the benchmark). Everything works without them.
pub fn recommended_features(adapter: &wgpu::Adapter) -> wgpu::Features {
    adapter.features() & WANTED_FEATURES
}

/// A device descriptor for `adapter` with [`recommended_features`] and all of the adapter's
/// limits (the default limits cap a storage binding at 128 MiB, and so the rows per call):
///
/// ```no_run
/// # async fn open(adapter: wgpu::Adapter) -> Result<(), wgpu::RequestDeviceError> {
/// let (device, queue) = adapter
///     .request_device(&wgpu_rmsnorm::device_descriptor(&adapter))
///     .await?;
/// # Ok(()) }
/// ```
pub fn device_descriptor(adapter: &wgpu::Adapter) -> wgpu::DeviceDescriptor<'static> {
    wgpu::DeviceDescriptor {
        label: Some("wgpu-rmsnorm"),
        required_features: recommended_features(adapter),
        required_limits: adapter.limits(),
        ..Default::default()
    }
}

/// A device with kernels and buffers kept between calls.
///
/// ```no_run
/// # fn main() -> wgpu_rmsnorm::Result<()> {
/// use wgpu_rmsnorm::{GpuContext, RmsNormConfig, Weights};
/// let gpu = GpuContext::new_blocking()?;
/// let y = gpu.rms_norm_blocking(&[1.0, 2.0, 3.0, 4.0], &RmsNormConfig::new(4), Weights::NONE)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter_info: wgpu::AdapterInfo,
    kernel_options: KernelOptions,
    /// Pipelines by what is compiled into them, shared by every kernel below.
    pipelines: PipelineCache,
    /// Kernels by config, at most [`KERNEL_CACHE_CAPACITY`] (the least recently used go
    /// first).
    kernels: Mutex<Vec<(KernelKey, Arc<KernelCore>)>>,
    scratch: Mutex<Option<Scratch>>,
    /// Timestamp queries for every call, where the device has them.
    call_timer: Option<CallTimer>,
    last_gpu_seconds: Mutex<Option<f64>>,
    /// Why the device was lost, once it is (only for devices this crate opened).
    lost: Arc<Mutex<Option<String>>>,
}

/// Two timestamps around each call's compute pass, resolved and copied behind the output in
/// the staging buffer, so that one mapping reads both.
#[derive(Debug)]
struct CallTimer {
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    period_ns: f64,
}

/// Bytes of the two timestamps.
const TIMESTAMP_BYTES: u64 = 16;

/// Kernels a context keeps: a loop over many configs (eps values, hidden sizes) keeps at most
/// this many plans; their pipelines are shared through the pipeline cache.
const KERNEL_CACHE_CAPACITY: usize = 16;

/// Everything that makes two configs need different plans or parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct KernelKey {
    norm: Norm,
    hidden: u32,
    k: u32,
    eps_bits: u32,
    eps_mode: crate::EpsMode,
    gain: crate::Gain,
    bias: bool,
    dtype: DType,
    weight_dtype: DType,
    residual: Residual,
}

/// Where the high-level API keeps a call's gain and bias in its weights buffer: gain at 0,
/// bias after it on a 256-byte boundary (every device's storage offset alignment).
#[derive(Debug, Clone, Copy)]
struct WeightsLayout {
    bias_offset: u64,
    /// Bytes the buffer needs.
    bytes: u64,
}

impl WeightsLayout {
    fn new(config: &RmsNormConfig) -> Self {
        // Whole vec4s: rows at any element bind the weights up to the next 16 bytes.
        let vector_bytes =
            (u64::from(config.hidden) * config.weight_dtype.bytes()).next_multiple_of(16);
        let bias_offset = vector_bytes.next_multiple_of(256);
        Self {
            bias_offset,
            bytes: bias_offset + vector_bytes,
        }
    }
}

/// What a call needs of the reusable buffers, in bytes (tensors rounded up to whole words).
#[derive(Debug, Clone, Copy)]
struct ScratchSizes {
    tensor: u64,
    weights: u64,
    residual: bool,
}

/// Buffers reused by every call, grown when a larger call comes.
#[derive(Debug)]
struct Scratch {
    input: wgpu::Buffer,
    output: wgpu::Buffer,
    /// The residual and the stored sum (4 bytes each when no call had a residual yet).
    residual: wgpu::Buffer,
    sum: wgpu::Buffer,
    /// The output, and behind it the sum where the call stores one.
    staging: wgpu::Buffer,
    /// The call's two timestamps are copied here and mapped with the output: a buffer of
    /// its own, so that the staging buffer is exactly the tensor (which may be as large as
    /// `max_buffer_size`), and one per call, as the staging buffer is.
    timestamps: wgpu::Buffer,
    weights: wgpu::Buffer,
    /// The last call's bind groups on these buffers, by kernel (its unique id) and rows: a
    /// repeated call creates nothing on the GPU.
    prepared: Option<(u64, u32, PreparedDispatch)>,
}

impl GpuContext {
    /// Picks an adapter by [`AdapterChoice::from_env`] and opens a device on it.
    pub async fn new() -> Result<Self> {
        Self::with_adapter_choice(&AdapterChoice::from_env(), KernelOptions::default()).await
    }

    /// Picks an adapter by `choice` and opens a device with the features it has of
    /// subgroups, timestamp queries and f16, and all of its limits.
    pub async fn with_adapter_choice(
        choice: &AdapterChoice,
        kernel_options: KernelOptions,
    ) -> Result<Self> {
        let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        descriptor.backends = choice.backends;
        let instance = wgpu::Instance::new(descriptor);
        let adapter = adapter::find_adapter(&instance, choice).await?;
        let (device, queue) = adapter
            .request_device(&device_descriptor(&adapter))
            .await
            .map_err(|e| Error::RequestDevice(e.to_string()))?;
        // Errors are caught by scopes around each call; anything else is logged, not a panic.
        device.on_uncaptured_error(Arc::new(|e| {
            platform::log_error(&format!("wgpu-rmsnorm: uncaptured GPU error: {e}"))
        }));
        let context = Self::from_device(device, queue, kernel_options);
        let lost = context.lost.clone();
        context
            .device
            .set_device_lost_callback(move |reason, message| {
                *lost.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(format!("{reason:?}: {message}"));
            });
        Ok(context)
    }

    /// Wraps a device and queue you already have.
    pub fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        kernel_options: KernelOptions,
    ) -> Self {
        Self {
            adapter_info: device.adapter_info(),
            pipelines: PipelineCache::new(&device),
            device,
            queue,
            kernel_options,
            kernels: Mutex::new(Vec::new()),
            scratch: Mutex::new(None),
            call_timer: None,
            last_gpu_seconds: Mutex::new(None),
            lost: Arc::new(Mutex::new(None)),
        }
    }

    /// Times each high-level call's compute pass with timestamp queries
    /// ([`GpuContext::last_gpu_seconds`]) where `on` and the device has
    /// `Features::TIMESTAMP_QUERY`. Off by default: a call then writes, resolves and reads
    /// back no timestamps.
    pub fn with_call_timing(mut self, on: bool) -> Self {
        let timed = on
            && self
                .device
                .features()
                .contains(wgpu::Features::TIMESTAMP_QUERY);
        self.call_timer = timed.then(|| CallTimer {
            query_set: self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("rmsnorm call timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolve: self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("rmsnorm call timestamps"),
                size: TIMESTAMP_BYTES,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            period_ns: f64::from(self.queue.get_timestamp_period()),
        });
        // The reusable buffers were sized for the previous setting.
        *self
            .scratch
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = None;
        *self
            .last_gpu_seconds
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = None;
        self
    }

    /// Whether calls are timed ([`GpuContext::with_call_timing`] on a device with timestamp
    /// queries).
    pub fn times_calls(&self) -> bool {
        self.call_timer.is_some()
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The adapter's name, backend, type and subgroup sizes.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.adapter_info
    }

    /// A kernel for `config`, planned now; its pipelines come from the context's cache, so
    /// kernels that differ only in eps or k share them and compile nothing.
    pub fn kernel(&self, config: &RmsNormConfig) -> Result<RmsNorm> {
        RmsNorm::with_cache(&self.pipelines, config, &self.kernel_options)
    }

    /// A LayerNorm kernel for `config`, planned now, its pipelines from the context's cache.
    pub fn layer_norm_kernel(&self, config: &LayerNormConfig) -> Result<crate::LayerNorm> {
        crate::LayerNorm::with_cache(&self.pipelines, config, &self.kernel_options)
    }

    /// Whether the kernels are planned for a CPU adapter (lavapipe; SwiftShader, which
    /// browsers report as a GPU, by the option the JS API sets).
    pub(crate) fn is_cpu_adapter(&self) -> bool {
        self.kernel_options
            .cpu_adapter
            .unwrap_or(self.adapter_info.device_type == wgpu::DeviceType::Cpu)
    }

    /// [`Error::DeviceLost`] once the device this context opened is lost.
    pub(crate) fn check_not_lost(&self) -> Result<()> {
        match self
            .lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            Some(reason) => Err(Error::DeviceLost(reason)),
            None => Ok(()),
        }
    }

    /// Compiled pipelines held by this context (bounded; eps and k compile none).
    pub fn pipeline_count(&self) -> usize {
        self.pipelines.len()
    }

    // wgpu's device is not Send in the browser, where everything runs on one thread; natively
    // kernels are Send and Sync (tested).
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    fn cached_kernel(&self, norm: Norm, config: &RmsNormConfig) -> Result<Arc<KernelCore>> {
        config.validate()?;
        let key = KernelKey {
            norm,
            hidden: config.hidden,
            k: config.rms_count()?,
            eps_bits: config.eps.to_bits(),
            eps_mode: config.eps_mode,
            gain: config.gain,
            bias: config.bias,
            dtype: config.dtype,
            weight_dtype: config.weight_dtype,
            residual: config.residual,
        };
        let mut kernels = self.kernels.lock().unwrap_or_else(PoisonError::into_inner);
        // Least recently used last out: a hit moves to the back.
        if let Some(at) = kernels.iter().position(|(k, _)| *k == key) {
            let entry = kernels.remove(at);
            let kernel = entry.1.clone();
            kernels.push(entry);
            return Ok(kernel);
        }
        let kernel = Arc::new(KernelCore::new(
            &self.pipelines,
            norm,
            Pass::Forward,
            config,
            &self.kernel_options,
        )?);
        if kernels.len() == KERNEL_CACHE_CAPACITY {
            kernels.remove(0);
        }
        kernels.push((key, kernel.clone()));
        Ok(kernel)
    }

    /// RMSNorm or pRMSNorm (by `config.partial`) of `x`, `rows * config.hidden` elements
    /// of `config.dtype` (`f32`, [`f16`](crate::f16) or [`bf16`](crate::bf16)).
    pub async fn rms_norm<T: Element, W: Element>(
        &self,
        x: &[T],
        config: &RmsNormConfig,
        weights: Weights<'_, W>,
    ) -> Result<Vec<T>> {
        without_residual(config)?;
        let data = CallData::new(config, x, None, weights)?;
        let (output, _) = self.normalize(Norm::Rms, data, config).await?;
        Ok(output)
    }

    /// LayerNorm of `x`, `rows * config.hidden` elements: the baseline, on the same path.
    pub async fn layer_norm<T: Element, W: Element>(
        &self,
        x: &[T],
        config: &LayerNormConfig,
        weights: Weights<'_, W>,
    ) -> Result<Vec<T>> {
        let config = config.as_rms_config();
        without_residual(&config)?;
        let data = CallData::new(&config, x, None, weights)?;
        let (output, _) = self.normalize(Norm::Layer, data, &config).await?;
        Ok(output)
    }

    /// RMSNorm or pRMSNorm of `h = x + r` in one kernel (`config.residual` says whether h is
    /// returned too): `x` and `residual` are `rows * config.hidden` elements each.
    pub async fn rms_norm_residual<T: Element, W: Element>(
        &self,
        x: &[T],
        residual: &[T],
        config: &RmsNormConfig,
        weights: Weights<'_, W>,
    ) -> Result<ResidualOutput<T>> {
        with_residual(config, x, residual)?;
        let data = CallData::new(config, x, Some(residual), weights)?;
        let (output, sum) = self.normalize(Norm::Rms, data, config).await?;
        Ok(ResidualOutput { output, sum })
    }

    /// LayerNorm of `h = x + r` in one kernel, like [`GpuContext::rms_norm_residual`].
    pub async fn layer_norm_residual<T: Element, W: Element>(
        &self,
        x: &[T],
        residual: &[T],
        config: &LayerNormConfig,
        weights: Weights<'_, W>,
    ) -> Result<ResidualOutput<T>> {
        let config = config.as_rms_config();
        with_residual(&config, x, residual)?;
        let data = CallData::new(&config, x, Some(residual), weights)?;
        let (output, sum) = self.normalize(Norm::Layer, data, &config).await?;
        Ok(ResidualOutput { output, sum })
    }

    /// The output (and the stored sum) of one call, as elements of `T`.
    async fn normalize<T: Element>(
        &self,
        norm: Norm,
        data: CallData<'_>,
        config: &RmsNormConfig,
    ) -> Result<(Vec<T>, Option<Vec<T>>)> {
        let (output, sum) = self.normalize_bytes(norm, data, config).await?;
        let elements = |b: Vec<u8>| bytemuck::pod_collect_to_vec::<u8, T>(&b);
        Ok((elements(output), sum.map(elements)))
    }

    /// The output (and the stored sum) of one call, as bytes of the config's `dtype`.
    pub(crate) async fn normalize_bytes(
        &self,
        norm: Norm,
        data: CallData<'_>,
        config: &RmsNormConfig,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
        // Statistics are saved for the low-level API's backward; this API recomputes them.
        let config = &config.with_saved_stats(false);
        let rows = self.check_call(&data, config)?;
        if rows == 0 {
            let sum = config.residual.stores_sum().then(Vec::new);
            return Ok((Vec::new(), sum));
        }
        let bytes = data.x.len() as u64;
        // Any error wgpu raises for this call (its pipelines included) comes back as
        // Error::Gpu (an out-of-memory device, or a bug here), not through the device's
        // uncaptured-error handler.
        let out_of_memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        // The weights buffer only as large as the call's weights need (4 bytes without).
        let weight_bytes = match (data.gain, data.bias) {
            (None, None) => 4,
            _ => WeightsLayout::new(config).bytes,
        };
        let outputs = if config.residual.stores_sum() { 2 } else { 1 };
        let sizes = ScratchSizes {
            tensor: self.tensor_bytes(bytes, outputs),
            weights: weight_bytes,
            residual: config.residual.is_some(),
        };
        let submitted = self.cached_kernel(norm, config).map(|kernel| {
            let mut scratch = self.take_scratch(sizes);
            let submitted = self.submit_call(&kernel, &mut scratch, data, config, rows);
            (scratch, submitted)
        });
        // Both popped (innermost first) before any await: the guards are not Send.
        let validation = validation.pop();
        let out_of_memory = out_of_memory.pop();
        let gpu_error = validation.await.or(out_of_memory.await);
        let (scratch, submitted) = match (submitted, gpu_error) {
            (Err(e), _) => return Err(self.classify_failure(e)),
            (Ok(_), Some(e)) => return Err(self.classify_failure(Error::Gpu(e.to_string()))),
            (Ok(pair), None) => pair,
        };
        let result = match submitted {
            Ok(()) => self.read_output(&scratch, sizes.tensor, outputs).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(read) => {
                self.return_scratch(scratch);
                let (tensor, bytes) = (sizes.tensor as usize, bytes as usize);
                let output = read[..bytes].to_vec();
                let sum = (outputs == 2).then(|| read[tensor..tensor + bytes].to_vec());
                Ok((output, sum))
            }
            // Buffers of a failed call are not kept for the next one; a failure on a device
            // that is gone is reported as such, and every later call says so at once.
            Err(e) => Err(self.classify_failure(e)),
        }
    }

    /// `error`, or [`Error::DeviceLost`] where the device turns out to be lost (which also
    /// marks this context lost).
    fn classify_failure(&self, error: Error) -> Error {
        let lost = match &error {
            Error::DeviceLost(reason) => Some(reason.clone()),
            _ if platform::device_is_lost(&self.device) => {
                Some(format!("the device is gone; the call failed with: {error}"))
            }
            _ => None,
        };
        match lost {
            Some(reason) => {
                *self.lost.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.clone());
                Error::DeviceLost(reason)
            }
            None => error,
        }
    }

    /// Checks a high-level call; returns its row count.
    fn check_call(&self, data: &CallData<'_>, config: &RmsNormConfig) -> Result<u32> {
        config.validate()?;
        self.check_not_lost()?;
        let elements = |bytes: &[u8], dtype: DType| bytes.len() / dtype.bytes() as usize;
        let rows = config.rows_in(elements(data.x, config.dtype))?;
        config.check_weights(
            data.gain.map(|g| elements(g, config.weight_dtype)),
            data.bias.map(|b| elements(b, config.weight_dtype)),
        )?;
        let too_large = Error::TooManyRows {
            rows: rows as u64,
            hidden: config.hidden,
        };
        let rows = u32::try_from(rows).map_err(|_| too_large.clone())?;
        // The staging buffer holds the output, and the sum behind it where there is one.
        let outputs = if config.residual.stores_sum() { 2 } else { 1 };
        let staging = (data.x.len() as u64).next_multiple_of(4) * outputs;
        if staging > self.device.limits().max_buffer_size {
            return Err(too_large);
        }
        Ok(rows)
    }

    /// The bytes each tensor buffer of a call of `bytes` bytes takes (`outputs` of them in
    /// the staging buffer): whole vec4s where the device allows (rows at any element bind
    /// the tensors up to the next 16 bytes), else whole words.
    fn tensor_bytes(&self, bytes: u64, outputs: u64) -> u64 {
        match bytes.next_multiple_of(16) {
            padded if padded * outputs <= self.device.limits().max_buffer_size => padded,
            _ => bytes.next_multiple_of(4),
        }
    }

    /// Uploads the call's data, records the kernel and the copies to the staging buffer,
    /// and submits.
    fn submit_call(
        &self,
        kernel: &Arc<KernelCore>,
        scratch: &mut Scratch,
        data: CallData<'_>,
        config: &RmsNormConfig,
        rows: u32,
    ) -> Result<()> {
        let outputs = if config.residual.stores_sum() { 2 } else { 1 };
        let tensor = self.tensor_bytes(data.x.len() as u64, outputs);
        let bias_offset = WeightsLayout::new(config).bias_offset;
        self.upload(&scratch.input, 0, data.x);
        if let Some(residual) = data.residual {
            self.upload(&scratch.residual, 0, residual);
        }
        if let Some(gain) = data.gain {
            self.upload(&scratch.weights, 0, gain);
        }
        if let Some(bias) = data.bias {
            self.upload(&scratch.weights, bias_offset, bias);
        }
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("rmsnorm call"),
            });
        let buffers = RmsNormBuffers {
            input: BufferRegion::whole(&scratch.input),
            output: BufferRegion::whole(&scratch.output),
            gain: data.gain.map(|_| BufferRegion::whole(&scratch.weights)),
            bias: data.bias.map(|_| BufferRegion {
                buffer: &scratch.weights,
                offset: bias_offset,
            }),
            residual: data
                .residual
                .map(|_| BufferRegion::whole(&scratch.residual)),
            sum: (config.residual == Residual::AddStoreSum)
                .then(|| BufferRegion::whole(&scratch.sum)),
            stats: None,
        };
        let timestamp_writes = self.call_timestamp_writes();
        let kernel_id = kernel.id();
        let prepared = match scratch.prepared.take() {
            Some((id, r, prepared)) if id == kernel_id && r == rows => prepared,
            previous => {
                // The previous call's parameters go now, not when a browser collects them.
                if let Some((_, _, old)) = previous {
                    old.destroy_buffers();
                }
                kernel.prepare(&self.device, &kernel.forward_tensors(&buffers)?, rows)?
            }
        };
        kernel.record(&prepared, &mut encoder, timestamp_writes)?;
        scratch.prepared = Some((kernel_id, rows, prepared));
        encoder.copy_buffer_to_buffer(&scratch.output, 0, &scratch.staging, 0, tensor);
        let sum = match config.residual {
            Residual::AddStoreSum => Some(&scratch.sum),
            Residual::AddStoreSumInPlace => Some(&scratch.residual),
            _ => None,
        };
        if let Some(sum) = sum {
            encoder.copy_buffer_to_buffer(sum, 0, &scratch.staging, tensor, tensor);
        }
        if let Some(t) = &self.call_timer {
            encoder.resolve_query_set(&t.query_set, 0..2, &t.resolve, 0);
            encoder.copy_buffer_to_buffer(&t.resolve, 0, &scratch.timestamps, 0, TIMESTAMP_BYTES);
        }
        self.queue.submit([encoder.finish()]);
        Ok(())
    }

    /// Writes `bytes` at `offset` (a multiple of 4): whole words directly, a trailing
    /// partial word (an odd count of 16-bit elements) padded with zeros.
    fn upload(&self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        let whole = bytes.len() & !3;
        if whole > 0 {
            self.queue.write_buffer(buffer, offset, &bytes[..whole]);
        }
        if whole < bytes.len() {
            let mut tail = [0u8; 4];
            tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
            self.queue
                .write_buffer(buffer, offset + whole as u64, &tail);
        }
    }

    /// Maps the staging buffer and reads `outputs` tensors of `tensor` bytes each (and the
    /// call's timestamps).
    async fn read_output(&self, scratch: &Scratch, tensor: u64, outputs: u64) -> Result<Vec<u8>> {
        let slice = scratch.staging.slice(..tensor * outputs);
        platform::map_read(&self.device, slice).await?;
        let output = slice
            .get_mapped_range()
            .map_err(|e| Error::Readback(e.to_string()))
            .map(|view| view.to_vec());
        scratch.staging.unmap();
        // The timestamps are best effort: a failure there loses the time, not the output.
        if let (Some(t), Ok(_)) = (&self.call_timer, &output) {
            let slice = scratch.timestamps.slice(..);
            if platform::map_read(&self.device, slice).await.is_err() {
                return output;
            }
            if let Ok(view) = slice.get_mapped_range() {
                let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&view);
                let seconds = ticks[1].saturating_sub(ticks[0]) as f64 * t.period_ns * 1e-9;
                *self
                    .last_gpu_seconds
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(seconds);
            }
            scratch.timestamps.unmap();
        }
        output
    }

    /// Takes the reusable buffers out (so no lock is held across an await), grown to fit.
    fn take_scratch(&self, sizes: ScratchSizes) -> Scratch {
        let taken = self
            .scratch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let residual_bytes = if sizes.residual { sizes.tensor } else { 4 };
        // The staging buffer holds the output, and behind it the sum where there is one.
        let staging_bytes = if sizes.residual { 2 } else { 1 } * sizes.tensor;
        let fits = |s: &Scratch| {
            s.input.size() >= sizes.tensor
                && s.weights.size() >= sizes.weights
                && s.residual.size() >= residual_bytes
                && s.staging.size() >= staging_bytes
        };
        match taken {
            Some(s) if fits(&s) => s,
            previous => {
                let old = previous.map_or([0; 4], |s| {
                    [
                        s.input.size(),
                        s.weights.size(),
                        s.residual.size(),
                        s.staging.size(),
                    ]
                });
                // Exactly what is asked (at most max_buffer_size), never rounded past it.
                let tensor = sizes.tensor.max(old[0]);
                let weights = sizes.weights.max(old[1]);
                let residual = residual_bytes.max(old[2]);
                let staging = staging_bytes.max(old[3]);
                let buffer = |label, size, usage| {
                    self.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some(label),
                        size,
                        usage,
                        mapped_at_creation: false,
                    })
                };
                use wgpu::BufferUsages as U;
                let readable = U::STORAGE | U::COPY_DST | U::COPY_SRC;
                Scratch {
                    input: buffer("rmsnorm input", tensor, U::STORAGE | U::COPY_DST),
                    output: buffer("rmsnorm output", tensor, U::STORAGE | U::COPY_SRC),
                    residual: buffer("rmsnorm residual", residual, readable),
                    sum: buffer("rmsnorm sum", residual, U::STORAGE | U::COPY_SRC),
                    staging: buffer("rmsnorm staging", staging, U::MAP_READ | U::COPY_DST),
                    timestamps: buffer(
                        "rmsnorm call timestamps",
                        TIMESTAMP_BYTES,
                        U::MAP_READ | U::COPY_DST,
                    ),
                    weights: buffer("rmsnorm weights", weights, U::STORAGE | U::COPY_DST),
                    prepared: None,
                }
            }
        }
    }

    fn return_scratch(&self, scratch: Scratch) {
        let mut slot = self.scratch.lock().unwrap_or_else(PoisonError::into_inner);
        let keep = slot
            .as_ref()
            .is_none_or(|s| s.input.size() <= scratch.input.size());
        if keep {
            *slot = Some(scratch);
        }
    }

    /// The timestamps a call's compute pass writes, where the device has them.
    fn call_timestamp_writes(&self) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        self.call_timer
            .as_ref()
            .map(|t| wgpu::ComputePassTimestampWrites {
                query_set: &t.query_set,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            })
    }

    fn set_last_gpu_seconds(&self, seconds: f64) {
        *self
            .last_gpu_seconds
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(seconds);
    }

    /// GPU time of the compute pass of the last call to finish, from timestamp queries
    /// (`None` unless [`GpuContext::with_call_timing`] turned timing on on a device with
    /// `Features::TIMESTAMP_QUERY`, or before the first call).
    pub fn last_gpu_seconds(&self) -> Option<f64> {
        *self
            .last_gpu_seconds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// GPU bytes held between calls (input, output, residual, sum, staging and weight
    /// buffers).
    pub fn scratch_bytes(&self) -> u64 {
        self.scratch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, |s| {
                s.input.size()
                    + s.output.size()
                    + s.residual.size()
                    + s.sum.size()
                    + s.staging.size()
                    + s.weights.size()
            })
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl GpuContext {
    /// [`GpuContext::new`], blocking.
    pub fn new_blocking() -> Result<Self> {
        platform::block_on(Self::new())
    }

    /// [`GpuContext::layer_norm`], blocking.
    pub fn layer_norm_blocking<T: Element, W: Element>(
        &self,
        x: &[T],
        config: &LayerNormConfig,
        weights: Weights<'_, W>,
    ) -> Result<Vec<T>> {
        platform::block_on(self.layer_norm(x, config, weights))
    }

    /// [`GpuContext::rms_norm`], blocking.
    pub fn rms_norm_blocking<T: Element, W: Element>(
        &self,
        x: &[T],
        config: &RmsNormConfig,
        weights: Weights<'_, W>,
    ) -> Result<Vec<T>> {
        platform::block_on(self.rms_norm(x, config, weights))
    }

    /// [`GpuContext::rms_norm_residual`], blocking.
    pub fn rms_norm_residual_blocking<T: Element, W: Element>(
        &self,
        x: &[T],
        residual: &[T],
        config: &RmsNormConfig,
        weights: Weights<'_, W>,
    ) -> Result<ResidualOutput<T>> {
        platform::block_on(self.rms_norm_residual(x, residual, config, weights))
    }

    /// [`GpuContext::layer_norm_residual`], blocking.
    pub fn layer_norm_residual_blocking<T: Element, W: Element>(
        &self,
        x: &[T],
        residual: &[T],
        config: &LayerNormConfig,
        weights: Weights<'_, W>,
    ) -> Result<ResidualOutput<T>> {
        platform::block_on(self.layer_norm_residual(x, residual, config, weights))
    }
}

/// The calls without a residual refuse a config that has one.
fn without_residual(config: &RmsNormConfig) -> Result<()> {
    if config.residual.is_some() {
        return Err(Error::ResidualMismatch {
            which: "the config has a residual add but the call passes no residual",
            fix: "call rms_norm_residual or layer_norm_residual, or set residual to \
                  Residual::None",
        });
    }
    Ok(())
}

/// The calls with a residual need a config that has one, and r as long as x.
fn with_residual<T>(config: &RmsNormConfig, x: &[T], residual: &[T]) -> Result<()> {
    if !config.residual.is_some() {
        return Err(Error::ResidualMismatch {
            which: "a residual was passed but the config has no residual add",
            fix: "set residual to Residual::Add, AddStoreSum or AddStoreSumInPlace",
        });
    }
    if residual.len() != x.len() {
        return Err(Error::ResidualMismatch {
            which: "the residual is not as long as the input",
            fix: "pass a residual of exactly rows * hidden elements, like x",
        });
    }
    Ok(())
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// Compiles only if the futures can move between threads (tokio's multi-thread runtime).
    #[allow(dead_code)]
    fn futures_are_send(gpu: &GpuContext, x: &[f32], config: &RmsNormConfig) {
        assert_send(&gpu.rms_norm(x, config, Weights::NONE));
        assert_send(&GpuContext::new());
    }

    #[test]
    fn context_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<GpuContext>();
        check::<RmsNorm>();
    }
}
