//! `--backward`: RMSNorm, pRMSNorm and LayerNorm backward, each checked against the f64
//! reference (dx, dgain, dbias, norm-wise) and timed with statistics recomputed and saved.

use super::{widen, Args, Data};
use wgpu_rmsnorm::kernel::{Layer, NormKind, Rms};
use wgpu_rmsnorm::reference::{self, compare_normwise, Gradients, BACKWARD_TOL};
use wgpu_rmsnorm::timing::GpuTimer;
use wgpu_rmsnorm::{
    BackwardBuffers, BackwardInputs, BufferRegion, Element, GpuContext, LayerNormConfig,
    NormBackward, NormGradients, NormKernel, PartialRms, RmsNormBuffers, RmsNormConfig,
};

/// Which normalization a table row is.
#[derive(Clone, Copy)]
enum Which {
    Rms(PartialRms),
    Layer,
}

/// The run's tensors on the GPU, for timing.
struct Buffers {
    x: wgpu::Buffer,
    residual: Option<wgpu::Buffer>,
    grad_output: wgpu::Buffer,
    grad_sum: Option<wgpu::Buffer>,
    gain: Option<wgpu::Buffer>,
    bias: Option<wgpu::Buffer>,
    output: wgpu::Buffer,
    sum: Option<wgpu::Buffer>,
    grad_input: wgpu::Buffer,
    grad_gain: wgpu::Buffer,
    grad_bias: wgpu::Buffer,
    stats: wgpu::Buffer,
}

/// The backward data besides the forward's: dy, and the gradient of the stored sum.
struct Upstream<T> {
    grad_output: Vec<T>,
    grad_sum: Option<Vec<T>>,
    /// The normalized input h where the forward stored it (the backward's input then).
    sum: Option<Vec<T>>,
}

pub async fn run<T: Element, W: Element>(
    gpu: &GpuContext,
    timer: &GpuTimer,
    args: &Args,
    data: &Data<T, W>,
) -> wgpu_rmsnorm::Result<bool> {
    let len = data.x.len();
    let act = |seed| -> Vec<T> {
        let values = reference::sample_data(len, seed, 1.0);
        values.into_iter().map(T::from_f32).collect()
    };
    let stores_sum = args.config.residual.stores_sum();
    let upstream = Upstream {
        grad_output: act(11),
        grad_sum: stores_sum.then(|| act(12)),
        sum: data.residual.as_ref().map(|r| {
            let h = reference::residual_sum(&widen(&data.x), &widen(r), args.config.dtype);
            h.into_iter().map(T::from_f32).collect()
        }),
    };
    let buffers = Buffers::new(gpu.device(), args, data, &upstream);
    println!(
        "{:<9} {:>8} {:<44} {:<6} {:>11} {:>9} {:>6} {:>10} {:>8}",
        "kernel", "k", "variant", "tensor", "max abs err", "err/scale", "check", "GPU ms", "GB/s"
    );
    let mut all_pass = true;
    let kernels = [
        ("RMSNorm", Which::Rms(PartialRms::Full)),
        ("pRMSNorm", Which::Rms(args.partial)),
        ("LayerNorm", Which::Layer),
    ];
    for (name, which) in kernels {
        let (k, stats) = check(gpu, args, data, &upstream, which).await?;
        let times = time(gpu, timer, args, &buffers, which).await?;
        all_pass &= print_kernel(name, k, &stats, &times, moved_bytes(args, data));
    }
    Ok(all_pass)
}

/// One kernel's rows of the table: dx, dgain and dbias checked (with the first timing), then
/// the other timings. Returns whether all three passed.
fn print_kernel(
    name: &str,
    k: u32,
    checks: &[reference::ErrorStats; 3],
    times: &[(String, f64)],
    moved: f64,
) -> bool {
    let mut all_pass = true;
    for (row, (tensor, stats)) in ["dx", "dgain", "dbias"].into_iter().zip(checks).enumerate() {
        let pass = stats.failures == 0;
        all_pass &= pass;
        let first = row == 0;
        let (variant, ms, rate) = match first {
            true => (
                times[0].0.clone(),
                format!("{:.3}", times[0].1 * 1e3),
                format!("{:.2}", moved / times[0].1 / 1e9),
            ),
            false => (String::new(), String::new(), String::new()),
        };
        println!(
            "{:<9} {:>8} {:<44} {:<6} {:>11.3e} {:>9.2e} {:>6} {:>10} {:>8}",
            if first { name } else { "" },
            if first { k.to_string() } else { String::new() },
            variant,
            tensor,
            stats.max_abs,
            stats.max_rel,
            if pass { "PASS" } else { "FAIL" },
            ms,
            rate
        );
    }
    for (variant, seconds) in &times[1..] {
        let (ms, rate) = (seconds * 1e3, moved / seconds / 1e9);
        println!(
            "{:<9} {:>8} {variant:<44} {:<6} {:>11} {:>9} {:>6} {ms:>10.3} {rate:>8.2}",
            "", "", "", "", "", ""
        );
    }
    all_pass
}

/// Bytes a backward call moves at the least: x (or h), dy read, dx written (r read where h
/// is recomputed, the gradient of h read where it was stored), gain read, dgain and dbias
/// written (f32).
fn moved_bytes<T, W>(args: &Args, data: &Data<T, W>) -> f64 {
    let config = &args.config;
    let tensors = if data.residual.is_some() { 4 } else { 3 };
    let element = config.dtype.bytes() as f64;
    let n = f64::from(config.hidden);
    tensors as f64 * data.x.len() as f64 * element
        + n * config.weight_dtype.bytes() as f64
        + 2.0 * n * 4.0
}

/// The gradients through the high-level API against the f64 reference: the RMS count and
/// the comparisons of dx, dgain and dbias.
async fn check<T: Element, W: Element>(
    gpu: &GpuContext,
    args: &Args,
    data: &Data<T, W>,
    upstream: &Upstream<T>,
    which: Which,
) -> wgpu_rmsnorm::Result<(u32, [reference::ErrorStats; 3])> {
    eprintln!("backward: checking against the f64 reference");
    let config = &args.config;
    let inputs = BackwardInputs {
        input: upstream
            .sum
            .as_deref()
            .filter(|_| config.residual.stores_sum())
            .unwrap_or(&data.x),
        residual: data
            .residual
            .as_deref()
            .filter(|_| !config.residual.stores_sum()),
        grad_output: &upstream.grad_output,
        grad_sum: upstream.grad_sum.as_deref(),
    };
    // The normalized input h as the reference takes it.
    let h = match &upstream.sum {
        Some(h) => widen(h),
        None => widen(&data.x),
    };
    let dy = widen(&upstream.grad_output);
    let dsum = upstream.grad_sum.as_deref().map(widen);
    let gain = data.gain.as_deref().map(widen);
    let (k, got, expected): (u32, NormGradients<T>, Gradients) = match which {
        Which::Rms(partial) => {
            let config = config.with_partial(partial);
            let got = gpu
                .rms_norm_backward(inputs, &config, data.gain.as_deref())
                .await?;
            let expected =
                reference::rms_norm_backward(&h, &dy, &config, gain.as_deref(), dsum.as_deref())?;
            (config.rms_count()?, got, expected)
        }
        Which::Layer => {
            let config = LayerNormConfig::from_rms_config(config);
            let got = gpu
                .layer_norm_backward(inputs, &config, data.gain.as_deref())
                .await?;
            let expected =
                reference::layer_norm_backward(&h, &dy, &config, gain.as_deref(), dsum.as_deref())?;
            (config.hidden, got, expected)
        }
    };
    Ok((k, compare_gradients(&got, &expected, config)))
}

/// dx, dgain and dbias against the reference, norm-wise (a missing one fails).
fn compare_gradients<T: Element>(
    got: &NormGradients<T>,
    expected: &Gradients,
    config: &RmsNormConfig,
) -> [reference::ErrorStats; 3] {
    let f32_type = wgpu_rmsnorm::DType::F32;
    let compare = |got: Option<&Vec<f32>>, want: Option<&Vec<f64>>, scale: &[f64]| match (got, want)
    {
        (Some(g), Some(w)) => compare_normwise(g, w, scale, 1, f32_type, BACKWARD_TOL),
        _ => reference::ErrorStats {
            failures: 1,
            ..Default::default()
        },
    };
    let n = config.hidden as usize;
    let dx = &widen(&got.grad_input);
    [
        compare_normwise(
            dx,
            &expected.dx,
            &expected.dx_scale,
            n,
            config.dtype,
            BACKWARD_TOL,
        ),
        compare(
            got.grad_gain.as_ref(),
            expected.dgain.as_ref(),
            &expected.dgain_scale,
        ),
        compare(
            got.grad_bias.as_ref(),
            expected.dbias.as_ref(),
            &expected.dbias_scale,
        ),
    ]
}

/// Median GPU times of the backward with statistics recomputed and with them saved by the
/// forward (run once before), with the variants' names.
async fn time(
    gpu: &GpuContext,
    timer: &GpuTimer,
    args: &Args,
    b: &Buffers,
    which: Which,
) -> wgpu_rmsnorm::Result<Vec<(String, f64)>> {
    let mut times = Vec::new();
    for saved in [false, true] {
        let config = args.config.with_saved_stats(saved);
        let forward = b.forward_buffers(saved);
        let backward = b.backward_buffers(&config, saved);
        let timed = match which {
            Which::Rms(partial) => {
                let config = config.with_partial(partial);
                time_one::<Rms>(gpu, timer, args, &config, &forward, &backward).await?
            }
            Which::Layer => {
                let config = LayerNormConfig::from_rms_config(&config);
                time_one::<Layer>(gpu, timer, args, &config, &forward, &backward).await?
            }
        };
        times.push(timed);
    }
    Ok(times)
}

/// One backward's median time and variant name, after a forward that saves the statistics
/// where the config does.
async fn time_one<N: NormKind>(
    gpu: &GpuContext,
    timer: &GpuTimer,
    args: &Args,
    config: &N::Config,
    forward: &RmsNormBuffers<'_>,
    backward: &BackwardBuffers<'_>,
) -> wgpu_rmsnorm::Result<(String, f64)> {
    let (device, queue, rows) = (gpu.device(), gpu.queue(), args.rows);
    if forward.stats.is_some() {
        let mut encoder = device.create_command_encoder(&Default::default());
        NormKernel::<N>::new(device, config, &args.options)?.encode(
            device,
            &mut encoder,
            forward,
            rows,
        )?;
        queue.submit([encoder.finish()]);
    }
    let kernel = NormBackward::<N>::new(device, config, &args.options)?;
    let seconds = timer
        .median(device, queue, args.samples, 0.01, |encoder, ts| {
            kernel.encode_with_timestamps(device, encoder, backward, rows, ts)
        })
        .await?;
    Ok((kernel.variant_name(backward, rows), seconds))
}

impl Buffers {
    fn new<T: Element, W: Element>(
        device: &wgpu::Device,
        args: &Args,
        data: &Data<T, W>,
        upstream: &Upstream<T>,
    ) -> Self {
        use wgpu::util::DeviceExt;
        let storage = |label, contents: &[u8]| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE,
            })
        };
        let empty = |label, size: u64| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: size.next_multiple_of(4).max(4),
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        let bytes = |v: &[T]| bytemuck::cast_slice::<T, u8>(v).to_vec();
        let tensor = (data.x.len() as u64) * args.config.dtype.bytes();
        let vector = u64::from(args.config.hidden) * 4;
        let stores_sum = args.config.residual.stores_sum();
        Self {
            x: storage("x", &bytes(&data.x)),
            residual: data.residual.as_deref().map(|r| storage("r", &bytes(r))),
            grad_output: storage("dy", &bytes(&upstream.grad_output)),
            grad_sum: upstream
                .grad_sum
                .as_deref()
                .map(|g| storage("dsum", &bytes(g))),
            gain: data
                .gain
                .as_deref()
                .map(|g| storage("gain", bytemuck::cast_slice(g))),
            bias: data
                .bias
                .as_deref()
                .map(|b| storage("bias", bytemuck::cast_slice(b))),
            output: empty("y", tensor),
            sum: upstream
                .sum
                .as_deref()
                .filter(|_| stores_sum)
                .map(|h| storage("sum", &bytes(h))),
            grad_input: empty("dx", tensor),
            grad_gain: empty("dgain", vector),
            grad_bias: empty("dbias", vector),
            stats: empty("stats", u64::from(args.rows) * 3 * 4),
        }
    }

    /// The forward's buffers (saving statistics or not).
    fn forward_buffers(&self, saved: bool) -> RmsNormBuffers<'_> {
        let region = BufferRegion::whole;
        RmsNormBuffers {
            gain: self.gain.as_ref().map(region),
            bias: self.bias.as_ref().map(region),
            residual: self.residual.as_ref().map(region),
            sum: self.sum.as_ref().map(region),
            stats: saved.then(|| region(&self.stats)),
            ..RmsNormBuffers::new(region(&self.x), region(&self.output))
        }
    }

    /// The backward's buffers: its input is h where the forward stored it.
    fn backward_buffers(&self, config: &RmsNormConfig, saved: bool) -> BackwardBuffers<'_> {
        let region = BufferRegion::whole;
        let stores_sum = config.residual.stores_sum();
        let input = match (&self.sum, stores_sum) {
            (Some(sum), true) => sum,
            _ => &self.x,
        };
        BackwardBuffers {
            residual: self.residual.as_ref().filter(|_| !stores_sum).map(region),
            grad_sum: self.grad_sum.as_ref().map(region),
            gain: self.gain.as_ref().map(region),
            stats: saved.then(|| region(&self.stats)),
            grad_gain: self.gain.as_ref().map(|_| region(&self.grad_gain)),
            grad_bias: self.bias.as_ref().map(|_| region(&self.grad_bias)),
            ..BackwardBuffers::new(
                region(input),
                region(&self.grad_output),
                region(&self.grad_input),
            )
        }
    }
}
