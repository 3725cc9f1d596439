//! The high-level backward: slices in, gradients out, on the context's device.

use super::{CallData, GpuContext};
use crate::config::{Gain, LayerNormConfig, RmsNormConfig};
use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::kernel::{BackwardBuffers, BufferRegion, Layer, NormBackward, NormKind, Rms};
use crate::platform;

/// The tensors of a high-level backward call, `rows * hidden` elements each, of the config's
/// dtype.
#[derive(Debug, Clone, Copy)]
pub struct BackwardInputs<'a, T: Element> {
    /// The forward's x; where it stored the sum (`Residual::AddStoreSum` or
    /// `AddStoreSumInPlace`), that sum h.
    pub input: &'a [T],
    /// The forward's residual r, exactly where its residual is `Residual::Add`.
    pub residual: Option<&'a [T]>,
    /// dy, the gradient of the forward's output.
    pub grad_output: &'a [T],
    /// The gradient of the stored sum h, exactly where the forward stored it.
    pub grad_sum: Option<&'a [T]>,
}

impl<'a, T: Element> BackwardInputs<'a, T> {
    /// x and dy, for a forward without a residual add.
    pub fn new(input: &'a [T], grad_output: &'a [T]) -> Self {
        Self {
            input,
            residual: None,
            grad_output,
            grad_sum: None,
        }
    }
}

/// The gradients of a normalization.
#[derive(Debug, Clone, PartialEq)]
pub struct NormGradients<T> {
    /// dx, of the input's dtype: the gradient of x, and of r where the forward added one.
    pub grad_input: Vec<T>,
    /// dgain, f32, summed over rows in a fixed order; where the config has a gain.
    pub grad_gain: Option<Vec<f32>>,
    /// dbias, f32; where the config has a bias.
    pub grad_bias: Option<Vec<f32>>,
}

/// A backward call's data as bytes: what the web API passes too.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BackwardData<'a> {
    pub input: &'a [u8],
    pub residual: Option<&'a [u8]>,
    pub grad_output: &'a [u8],
    pub grad_sum: Option<&'a [u8]>,
    pub gain: Option<&'a [u8]>,
}

/// dx as bytes of the activations' dtype, dgain and dbias.
pub(crate) type GradientBytes = (Vec<u8>, Option<Vec<f32>>, Option<Vec<f32>>);

impl<'a> BackwardData<'a> {
    fn new<T: Element, W: Element>(
        config: &RmsNormConfig,
        inputs: &BackwardInputs<'a, T>,
        gain: Option<&'a [W]>,
    ) -> Result<Self> {
        let weights = crate::Weights { gain, bias: None };
        let data = CallData::new(config, inputs.input, inputs.residual, weights)?;
        let bytes = |v: &'a [T]| bytemuck::cast_slice::<T, u8>(v);
        Ok(Self {
            input: data.x,
            residual: data.residual,
            grad_output: bytes(inputs.grad_output),
            grad_sum: inputs.grad_sum.map(bytes),
            gain: data.gain,
        })
    }
}

impl GpuContext {
    /// The gradients of RMSNorm or pRMSNorm (`config` is the forward's) given dy: dx, and
    /// dgain and dbias where the config has them. The statistics are recomputed (the
    /// low-level [`RmsNormBackward`](crate::RmsNormBackward) reads saved ones).
    pub async fn rms_norm_backward<T: Element, W: Element>(
        &self,
        inputs: BackwardInputs<'_, T>,
        config: &RmsNormConfig,
        gain: Option<&[W]>,
    ) -> Result<NormGradients<T>> {
        let data = BackwardData::new(config, &inputs, gain)?;
        let bytes = self.backward_bytes::<Rms>(config, data).await?;
        Ok(gradients(bytes))
    }

    /// The gradients of LayerNorm given dy, like [`GpuContext::rms_norm_backward`].
    pub async fn layer_norm_backward<T: Element, W: Element>(
        &self,
        inputs: BackwardInputs<'_, T>,
        config: &LayerNormConfig,
        gain: Option<&[W]>,
    ) -> Result<NormGradients<T>> {
        let data = BackwardData::new(&config.as_rms_config(), &inputs, gain)?;
        let bytes = self.backward_bytes::<Layer>(config, data).await?;
        Ok(gradients(bytes))
    }

    /// One backward call on buffers made for it: dx as bytes, dgain, dbias.
    pub(crate) async fn backward_bytes<N: NormKind>(
        &self,
        config: &N::Config,
        data: BackwardData<'_>,
    ) -> Result<GradientBytes> {
        let core = N::core_config(config).with_saved_stats(false);
        // What the forward's calls check (the device, the rows, the gain's length, one
        // buffer's size), on x and the gain; then dy, r and the gradient of h against x.
        let forward_data = CallData {
            x: data.input,
            residual: None,
            gain: data.gain,
            bias: None,
        };
        let forward_config = core
            .with_bias(false)
            .with_residual(crate::config::Residual::None);
        self.check_call(&forward_data, &forward_config)?;
        let rows = check_backward_call(&core, &data)?;
        if rows == 0 {
            // Sums over no rows.
            let zeros = || vec![0.0; core.hidden as usize];
            return Ok((
                Vec::new(),
                (core.gain != Gain::None).then(zeros),
                core.bias.then(zeros),
            ));
        }
        let out_of_memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let submitted = self.submit_backward::<N>(config, &core, data, rows);
        // Both popped (innermost first) before any await: the guards are not Send.
        let validation = validation.pop();
        let out_of_memory = out_of_memory.pop();
        let error = validation.await.or(out_of_memory.await);
        let (call, sizes) = match (submitted, error) {
            (Err(e), _) => return Err(self.classify_failure(e)),
            (Ok(_), Some(e)) => return Err(self.classify_failure(Error::Gpu(e.to_string()))),
            (Ok(pair), None) => pair,
        };
        let bytes = self.read_staging(&call.staging).await;
        // The browser frees a buffer only when it is destroyed or collected: a loop of calls
        // must not hold GPU memory until the next collection.
        call.destroy();
        let bytes = bytes?;
        // The call's timestamps, behind the gradients where the device has them.
        if let Some(t) = &self.call_timer {
            let at = (sizes.tensor + 2 * sizes.vector) as usize;
            let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes[at..at + 16]);
            let seconds = ticks[1].saturating_sub(ticks[0]) as f64 * t.period_ns * 1e-9;
            self.set_last_gpu_seconds(seconds);
        }
        let floats = |at: u64| -> Vec<f32> {
            let start = at as usize;
            bytemuck::pod_collect_to_vec(&bytes[start..start + sizes.vector as usize])
        };
        let has_gain = core.gain != Gain::None;
        Ok((
            bytes[..data.input.len()].to_vec(),
            has_gain.then(|| floats(sizes.tensor)),
            core.bias.then(|| floats(sizes.tensor + sizes.vector)),
        ))
    }

    /// The whole of a staging buffer, mapped and read.
    async fn read_staging(&self, staging: &wgpu::Buffer) -> Result<Vec<u8>> {
        let slice = staging.slice(..);
        platform::map_read(&self.device, slice)
            .await
            .map_err(|e| self.classify_failure(e))?;
        let bytes = slice
            .get_mapped_range()
            .map_err(|e| Error::Readback(e.to_string()))?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }

    /// Uploads a backward call's data, records it and the copies to a staging buffer
    /// (dx, then dgain and dbias), and submits.
    fn submit_backward<N: NormKind>(
        &self,
        config: &N::Config,
        core: &RmsNormConfig,
        data: BackwardData<'_>,
        rows: u32,
    ) -> Result<(CallBuffers, StagingSizes)> {
        let config = &N::without_saved_stats(config);
        let kernel = NormBackward::<N>::with_cache(&self.pipelines, config, &self.kernel_options)?;
        let sizes = StagingSizes {
            tensor: (data.input.len() as u64).next_multiple_of(4),
            vector: u64::from(core.hidden) * 4,
        };
        let call = self.backward_call_buffers(core, &data, sizes);
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("rmsnorm backward call"),
            });
        let timestamp_writes = self.call_timestamp_writes();
        let buffers = call.regions();
        kernel.encode_with_timestamps(
            &self.device,
            &mut encoder,
            &buffers,
            rows,
            timestamp_writes,
        )?;
        let staging = &call.staging;
        encoder.copy_buffer_to_buffer(&call.grad_input, 0, staging, 0, sizes.tensor);
        for (at, grad) in [
            (sizes.tensor, &call.grad_gain),
            (sizes.tensor + sizes.vector, &call.grad_bias),
        ] {
            if let Some(grad) = grad {
                encoder.copy_buffer_to_buffer(grad, 0, staging, at, sizes.vector);
            }
        }
        if let Some(t) = &self.call_timer {
            let at = sizes.tensor + 2 * sizes.vector;
            encoder.resolve_query_set(&t.query_set, 0..2, &t.resolve, 0);
            encoder.copy_buffer_to_buffer(&t.resolve, 0, staging, at, 16);
        }
        self.queue.submit([encoder.finish()]);
        Ok((call, sizes))
    }

    /// A backward call's buffers, made for it: the data uploaded, the gradients' outputs and
    /// the staging buffer (dx, dgain, dbias, the timestamps).
    fn backward_call_buffers(
        &self,
        core: &RmsNormConfig,
        data: &BackwardData<'_>,
        sizes: StagingSizes,
    ) -> CallBuffers {
        use wgpu::BufferUsages as U;
        let buffer = |label, size: u64, usage| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: size.next_multiple_of(4).max(4),
                usage,
                mapped_at_creation: false,
            })
        };
        let upload = |label, bytes: &[u8]| {
            let uploaded = buffer(label, bytes.len() as u64, U::STORAGE | U::COPY_DST);
            self.upload(&uploaded, 0, bytes);
            uploaded
        };
        let output = |label, size| buffer(label, size, U::STORAGE | U::COPY_SRC);
        let timestamps = if self.call_timer.is_some() { 16 } else { 0 };
        CallBuffers {
            input: upload("rmsnorm backward input", data.input),
            residual: data
                .residual
                .map(|r| upload("rmsnorm backward residual", r)),
            grad_output: upload("rmsnorm backward dy", data.grad_output),
            grad_sum: data.grad_sum.map(|g| upload("rmsnorm backward dsum", g)),
            gain: data.gain.map(|g| upload("rmsnorm backward gain", g)),
            grad_input: output("rmsnorm backward dx", sizes.tensor),
            grad_gain: (core.gain != Gain::None)
                .then(|| output("rmsnorm backward dgain", sizes.vector)),
            grad_bias: core
                .bias
                .then(|| output("rmsnorm backward dbias", sizes.vector)),
            staging: buffer(
                "rmsnorm backward staging",
                sizes.tensor + 2 * sizes.vector + timestamps,
                U::MAP_READ | U::COPY_DST,
            ),
        }
    }
}

/// The buffers of one high-level backward call.
struct CallBuffers {
    input: wgpu::Buffer,
    residual: Option<wgpu::Buffer>,
    grad_output: wgpu::Buffer,
    grad_sum: Option<wgpu::Buffer>,
    gain: Option<wgpu::Buffer>,
    grad_input: wgpu::Buffer,
    grad_gain: Option<wgpu::Buffer>,
    grad_bias: Option<wgpu::Buffer>,
    staging: wgpu::Buffer,
}

impl CallBuffers {
    fn destroy(&self) {
        let optional = [
            &self.residual,
            &self.grad_sum,
            &self.gain,
            &self.grad_gain,
            &self.grad_bias,
        ];
        for buffer in optional.into_iter().flatten() {
            buffer.destroy();
        }
        for buffer in [
            &self.input,
            &self.grad_output,
            &self.grad_input,
            &self.staging,
        ] {
            buffer.destroy();
        }
    }

    fn regions(&self) -> BackwardBuffers<'_> {
        let region = BufferRegion::whole;
        BackwardBuffers {
            input: region(&self.input),
            residual: self.residual.as_ref().map(region),
            grad_output: region(&self.grad_output),
            grad_sum: self.grad_sum.as_ref().map(region),
            gain: self.gain.as_ref().map(region),
            stats: None,
            grad_input: region(&self.grad_input),
            grad_gain: self.grad_gain.as_ref().map(region),
            grad_bias: self.grad_bias.as_ref().map(region),
        }
    }
}

/// Bytes of dx (rounded up to whole words) and of dgain or dbias in the staging buffer.
#[derive(Debug, Clone, Copy)]
struct StagingSizes {
    tensor: u64,
    vector: u64,
}

/// Checks a high-level backward call; returns its row count. (The rest is checked by the
/// kernel's own checks on the buffers made for it.)
fn check_backward_call(config: &RmsNormConfig, data: &BackwardData<'_>) -> Result<u32> {
    let element = config.dtype.bytes() as usize;
    let rows = config.rows_in(data.input.len() / element)?;
    let same_length = |which, other: Option<&[u8]>| match other {
        Some(t) if t.len() != data.input.len() => Err(Error::LengthMismatch {
            which,
            len: t.len() / element,
            expected: data.input.len() / element,
        }),
        _ => Ok(()),
    };
    same_length("grad_output", Some(data.grad_output))?;
    same_length("residual", data.residual)?;
    same_length("grad_sum", data.grad_sum)?;
    u32::try_from(rows).map_err(|_| Error::TooManyRows {
        rows: rows as u64,
        hidden: config.hidden,
    })
}

/// dx as elements of `T`.
fn gradients<T: Element>((dx, grad_gain, grad_bias): GradientBytes) -> NormGradients<T> {
    NormGradients {
        grad_input: bytemuck::pod_collect_to_vec(&dx),
        grad_gain,
        grad_bias,
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl GpuContext {
    /// [`GpuContext::rms_norm_backward`], blocking.
    pub fn rms_norm_backward_blocking<T: Element, W: Element>(
        &self,
        inputs: BackwardInputs<'_, T>,
        config: &RmsNormConfig,
        gain: Option<&[W]>,
    ) -> Result<NormGradients<T>> {
        platform::block_on(self.rms_norm_backward(inputs, config, gain))
    }

    /// [`GpuContext::layer_norm_backward`], blocking.
    pub fn layer_norm_backward_blocking<T: Element, W: Element>(
        &self,
        inputs: BackwardInputs<'_, T>,
        config: &LayerNormConfig,
        gain: Option<&[W]>,
    ) -> Result<NormGradients<T>> {
        platform::block_on(self.layer_norm_backward(inputs, config, gain))
    }
}
