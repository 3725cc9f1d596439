//! The measurements behind `cargo xtask bench` and the demo page's benchmark panel: one
//! shape's kernels next to the speed of light on the same adapter, timed the same way in
//! the same run, each kernel checked against the f64 reference before it is timed.
//!
//! - `sol_copy`: effective bandwidth over that of `copy_buffer_to_buffer` of the same bytes;
//! - `sol_kernel`: over that of the fastest vec4 copy compute shader (`shaders/copy_vec4.wgsl`:
//!   a grid-stride loop at workgroup sizes 8, 64 and 256, and a loop over rows launched as
//!   RMSNorm's kernel is, with its workgroup size and count);
//! - on GPUs the forward's repetitions rotate over buffer pairs of 256 MiB in all (128 MiB
//!   for tensors under 2 MiB), so that x and y go to and from memory, not a cache that holds
//!   them whole.
//! - effective bandwidth = bytes moved / time: x read and y written (x counted once
//!   where a kernel reads it twice), and with the residual add r read and h written; for
//!   the backward x and dy read and dx written (each once), the gain read and dgain and
//!   dbias written.
//!
//! [`bench_formats`] measures the element types and the fused residual add (against an
//! add kernel followed by RMSNorm) on one shape.

mod backward;
mod formats;

pub use formats::bench_formats;

use crate::config::{LayerNormConfig, PartialRms, RmsNormConfig};
use crate::context::{GpuContext, Weights};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernel::{BufferRegion, LayerNorm, PreparedDispatch, RmsNorm, RmsNormBuffers};
use crate::reference::{self, F32_ABS_TOL, F32_REL_TOL};
use crate::shaders::COPY_VEC4;
use crate::timing::{GpuTimer, PassTimestamps};
use wgpu::util::DeviceExt;

/// How long to measure.
#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    /// Samples per measurement; the median is reported.
    pub samples: usize,
    /// Each sample repeats the work until it lasts about this long.
    pub min_sample_seconds: f64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            samples: 10,
            min_sample_seconds: 0.01,
        }
    }
}

/// One kernel on one shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// "copy", "RMSNorm", "pRMSNorm" or "LayerNorm".
    pub kernel: &'static str,
    /// pRMSNorm's fraction.
    pub p: Option<f64>,
    /// Reduction, workgroup size and loads, or which copy.
    pub variant: String,
    /// Median seconds per call.
    pub seconds: f64,
    /// Effective bandwidth, GB/s.
    pub gbps: f64,
    /// Against `copy_buffer_to_buffer`.
    pub sol_copy: f64,
    /// Against the fastest vec4 copy kernel.
    pub sol_kernel: f64,
    /// GPU bytes the high-level API held for this call (0 for the copies).
    pub library_bytes: u64,
    /// Element type of the activations (for a copy: of the tensor it copies).
    pub dtype: DType,
    /// Element type of the weights.
    pub weight_dtype: DType,
    /// "none", "fused" (the residual add in the kernel) or "unfused" (an add kernel, then
    /// the normalization).
    pub residual: &'static str,
    /// Bytes moved per call, as counted for `gbps`.
    pub bytes: u64,
    /// "forward" or "backward".
    pub pass: &'static str,
}

/// The timer the benchmarks use: timestamps where they can bracket copies too, else the
/// wall clock for everything, so that all numbers of a run are measured the same way.
pub fn timer(gpu: &GpuContext) -> GpuTimer {
    let timer = GpuTimer::new(gpu.device(), gpu.queue());
    if timer.times_copies() {
        timer
    } else {
        GpuTimer::wall_clock()
    }
}

/// Measures the copies, RMSNorm, pRMSNorm (p = 1/16, 1/2) and LayerNorm on `rows x hidden`,
/// and their backward (see `backward.rs` for which).
pub async fn bench_shape(
    gpu: &GpuContext,
    timer: &GpuTimer,
    rows: u32,
    hidden: u32,
    options: &BenchOptions,
) -> Result<Vec<Measurement>> {
    if rows == 0 || hidden == 0 {
        return Err(Error::Gpu(format!(
            "a benchmark of {rows} x {hidden} measures nothing: pass at least one row of one element"
        )));
    }
    let device = gpu.device();
    let len = rows as usize * hidden as usize;
    let bytes = len as u64 * 4;
    let x = reference::sample_data(len, u64::from(hidden), 4.0);
    let pairs = rotation_pairs(gpu, &x, bytes);
    let buffers: Vec<RmsNormBuffers<'_>> = pairs
        .iter()
        .map(|(x, y)| RmsNormBuffers::new(BufferRegion::whole(x), BufferRegion::whole(y)))
        .collect();

    // Every contestant checked first, then prepared (on every pair) so that timing records
    // work only.
    let (mut names, rms) = rms_contestants(gpu, &x, rows, hidden, &buffers).await?;
    let copies = copy_contestants(gpu, &pairs, rows, hidden, &rms[0].0)?;
    let (layer_name, layer, layer_prepared) =
        layer_contestant(gpu, &x, rows, hidden, &buffers).await?;
    names.push(layer_name);
    let (x_buffer, y_buffer) = &pairs[0];
    let backward_tensors = backward::BackwardTensors::new(device, rows, hidden);
    let (backward_names, backward) = backward::backward_contestants(
        gpu,
        &x,
        x_buffer,
        y_buffer,
        &backward_tensors,
        rows,
        hidden,
    )
    .await?;

    // Contestant c records one repetition: 0 the copy engine, then the copy kernels, then
    // the normalizations in the order of `names`, then the backward ones. Each repetition
    // of the forward takes the next pair of buffers.
    let next = std::cell::Cell::new(0usize);
    let pair = || {
        let at = next.get();
        next.set(at + 1);
        at % pairs.len()
    };
    let forward_end = 1 + copies.len() + names.len();
    let contestants = forward_end + backward.len();
    let record = |c: usize, encoder: &mut wgpu::CommandEncoder, ts: PassTimestamps<'_>| {
        match c {
            0 => {
                let (x, y) = &pairs[pair()];
                encoder.copy_buffer_to_buffer(x, 0, y, 0, bytes);
            }
            c if c <= copies.len() => {
                let copy = &copies[c - 1];
                copy.kernels[pair()].encode(encoder, copy.groups, ts);
            }
            c if c - 1 - copies.len() < rms.len() => {
                let (kernel, prepared) = &rms[c - 1 - copies.len()];
                kernel.record(&prepared[pair()], encoder, ts)?;
            }
            c if c < forward_end => layer.record(&layer_prepared[pair()], encoder, ts)?,
            c => backward[c - forward_end](encoder, ts)?,
        }
        Ok(())
    };
    let medians = round_robin_medians(gpu, timer, contestants, options, &record).await?;
    let mut out = measurements(&medians[..forward_end], &copies, names, bytes);
    let copies = (out[0].seconds, out[1].seconds);
    let backward = &medians[forward_end..];
    out.extend(backward::measurements(
        backward_names,
        backward,
        bytes,
        hidden,
        copies,
    ));
    // The browser frees buffers only when destroyed (or collected).
    for (x, y) in &pairs {
        x.destroy();
        y.destroy();
    }
    Ok(out)
}

/// Bytes the forward's buffer pairs add up to at least, on GPUs, where [`MAX_PAIRS`]
/// reach it (tensors of 2 MiB and more; smaller ones take 128 MiB): more than any GPU's
/// last level cache (an H100's L2 holds 50 MB, so a 16 MiB tensor would otherwise be read
/// from cache and the "memory bandwidth" would be the cache's).
const ROTATION_BYTES: u64 = 256 << 20;
const MAX_PAIRS: u64 = 64;

/// The (x, y) buffer pairs the forward's contestants take in turn, x holding `x`: enough
/// for [`ROTATION_BYTES`] on a GPU, one on a CPU adapter (lavapipe, SwiftShader), whose
/// caches are far smaller than the tensors that matter.
fn rotation_pairs(gpu: &GpuContext, x: &[f32], bytes: u64) -> Vec<(wgpu::Buffer, wgpu::Buffer)> {
    let count = if gpu.is_cpu_adapter() {
        1
    } else {
        ROTATION_BYTES
            .div_ceil(2 * bytes.max(1))
            .clamp(1, MAX_PAIRS)
    };
    let storage = |usage| {
        gpu.device()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("bench"),
                contents: bytemuck::cast_slice(x),
                usage: wgpu::BufferUsages::STORAGE | usage,
            })
    };
    (0..count)
        .map(|_| {
            (
                storage(wgpu::BufferUsages::COPY_SRC),
                storage(wgpu::BufferUsages::COPY_DST),
            )
        })
        .collect()
}

/// A copy kernel of the speed-of-light roof, bound to each pair of buffers.
pub(crate) struct CopyContestant {
    name: String,
    kernels: Vec<BoundKernel>,
    groups: u32,
}

/// The copy kernels the forward is measured against: the grid-stride vec4 copy at 8, 64
/// and 256 invocations per workgroup, and, for vec4 rows the kernel does not split, the
/// row-loop copy launched exactly as RMSNorm's kernel (its workgroup size and count).
fn copy_contestants(
    gpu: &GpuContext,
    pairs: &[(wgpu::Buffer, wgpu::Buffer)],
    rows: u32,
    hidden: u32,
    rms: &RmsNorm,
) -> Result<Vec<CopyContestant>> {
    let device = gpu.device();
    let vec4s = (u64::from(rows) * u64::from(hidden) / 4) as u32;
    let mut copies: Vec<CopyContestant> = [8u32, 64, 256]
        .into_iter()
        .map(|wg| CopyContestant {
            name: format!("vec4 grid wg={wg}"),
            kernels: pairs
                .iter()
                .map(|(x, y)| copy_kernel(device, wg, x, y))
                .collect(),
            groups: vec4s.div_ceil(wg).clamp(1, 65535),
        })
        .collect();
    let launch = rms
        .plan()
        .launch(rows, crate::kernel::plan::WideOffsets::ALIGNED)?;
    if hidden.is_multiple_of(4) && launch.split_pieces.is_none() && launch.chunks.len() == 1 {
        let (wg, groups) = (
            launch.stages[0].shape.workgroup_size,
            launch.chunks[0].workgroups,
        );
        let constants = [
            ("WG", f64::from(wg)),
            ("ROWS", f64::from(rows)),
            ("ROW_VEC4S", f64::from(hidden / 4)),
        ];
        copies.push(CopyContestant {
            name: format!("vec4 rows wg={wg} x{groups}"),
            kernels: pairs
                .iter()
                .map(|(x, y)| {
                    let buffers = [(0, x), (1, y)];
                    BoundKernel::new(
                        device,
                        COPY_VEC4.path,
                        COPY_VEC4.text,
                        "copy_rows",
                        &constants,
                        &buffers,
                    )
                })
                .collect(),
            groups,
        });
    }
    Ok(copies)
}

/// RMSNorm and pRMSNorm (p = 1/16, 1/2), each checked against the reference on a context of
/// its own (so that what it allocates is this call's alone), then prepared on `buffers`.
async fn rms_contestants(
    gpu: &GpuContext,
    x: &[f32],
    rows: u32,
    hidden: u32,
    buffers: &[RmsNormBuffers<'_>],
) -> Result<(Vec<Named>, Vec<(RmsNorm, Vec<PreparedDispatch>)>)> {
    let partials = [
        ("RMSNorm", None, PartialRms::Full),
        (
            "pRMSNorm",
            Some(1.0 / 16.0),
            PartialRms::Fraction(1.0 / 16.0),
        ),
        ("pRMSNorm", Some(0.5), PartialRms::Fraction(0.5)),
    ];
    let (device, queue) = (gpu.device(), gpu.queue());
    let mut names = Vec::new();
    let mut kernels = Vec::new();
    for (name, p, partial) in partials {
        let config = RmsNormConfig::new(hidden).with_partial(partial);
        let fresh = GpuContext::from_device(device.clone(), queue.clone(), Default::default());
        let y = fresh.rms_norm(x, &config, Weights::NONE).await?;
        let expected = reference::rms_norm(x, &config, None, None)?;
        verify(&y, &expected, name, rows, hidden)?;
        let kernel = gpu.kernel(&config)?;
        let prepared = buffers
            .iter()
            .map(|b| kernel.prepare(device, b, rows))
            .collect::<Result<Vec<_>>>()?;
        let variant = kernel.variant_name(&buffers[0], rows);
        names.push((name, p, variant, fresh.scratch_bytes()));
        kernels.push((kernel, prepared));
    }
    Ok((names, kernels))
}

/// LayerNorm, checked and prepared like [`rms_contestants`].
async fn layer_contestant(
    gpu: &GpuContext,
    x: &[f32],
    rows: u32,
    hidden: u32,
    buffers: &[RmsNormBuffers<'_>],
) -> Result<(Named, LayerNorm, Vec<PreparedDispatch>)> {
    let (device, queue) = (gpu.device(), gpu.queue());
    let config = LayerNormConfig::new(hidden);
    let fresh = GpuContext::from_device(device.clone(), queue.clone(), Default::default());
    let y = fresh.layer_norm(x, &config, Weights::NONE).await?;
    let expected = reference::layer_norm(x, &config, None, None)?;
    verify(&y, &expected, "LayerNorm", rows, hidden)?;
    let layer = LayerNorm::new(device, &config, &Default::default())?;
    let prepared = buffers
        .iter()
        .map(|b| layer.prepare(device, b, rows))
        .collect::<Result<Vec<_>>>()?;
    let variant = layer.variant_name(&buffers[0], rows);
    Ok((
        ("LayerNorm", None, variant, fresh.scratch_bytes()),
        layer,
        prepared,
    ))
}

/// The median seconds of each contestant. Samples are taken round-robin, so that a slow
/// spell of a shared machine slows every contestant alike and the ratios stay fair.
pub(crate) async fn round_robin_medians(
    gpu: &GpuContext,
    timer: &GpuTimer,
    contestants: usize,
    options: &BenchOptions,
    record: &dyn Fn(usize, &mut wgpu::CommandEncoder, PassTimestamps<'_>) -> Result<()>,
) -> Result<Vec<f64>> {
    let (device, queue) = (gpu.device(), gpu.queue());
    let mut reps = Vec::with_capacity(contestants);
    for c in 0..contestants {
        let once = timer
            .time(device, queue, 1, |e, ts| record(c, e, ts))
            .await?;
        let n = (options.min_sample_seconds / once.max(1e-9))
            .ceil()
            .clamp(1.0, 10_000.0);
        reps.push(n as u32);
    }
    let mut times = vec![Vec::with_capacity(options.samples); contestants];
    for _ in 0..options.samples.max(1) {
        for c in 0..contestants {
            let t = timer
                .time(device, queue, reps[c], |e, ts| record(c, e, ts))
                .await?;
            times[c].push(t);
        }
    }
    Ok(times.into_iter().map(median).collect())
}

/// A normalization's name, p, variant and the bytes its context held.
pub(crate) type Named = (&'static str, Option<f64>, String, u64);

/// The measurements from the medians: the copy engine, the fastest copy kernel, then the
/// normalizations in the order of `names`.
fn measurements(
    medians: &[f64],
    copies: &[CopyContestant],
    names: Vec<Named>,
    bytes: u64,
) -> Vec<Measurement> {
    let copy_engine = medians[0];
    let (best, copy_kernel) = medians[1..=copies.len()]
        .iter()
        .copied()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, f64::NAN));
    let measurement = |kernel, p, variant, seconds: f64, library_bytes| Measurement {
        kernel,
        p,
        variant,
        seconds,
        gbps: 2.0 * bytes as f64 / seconds / 1e9,
        sol_copy: copy_engine / seconds,
        sol_kernel: copy_kernel / seconds,
        library_bytes,
        dtype: DType::F32,
        weight_dtype: DType::F32,
        residual: "none",
        bytes: 2 * bytes,
        pass: "forward",
    };
    let mut out = vec![
        measurement("copy", None, "copy_buffer_to_buffer".into(), copy_engine, 0),
        measurement("copy", None, copies[best].name.clone(), copy_kernel, 0),
    ];
    for ((name, p, variant, library_bytes), seconds) in
        names.into_iter().zip(&medians[1 + copies.len()..])
    {
        out.push(measurement(name, p, variant, *seconds, library_bytes));
    }
    out
}

fn verify(y: &[f32], expected: &[f64], name: &str, rows: u32, hidden: u32) -> Result<()> {
    let stats = reference::compare(y, expected, F32_ABS_TOL, F32_REL_TOL);
    if stats.failures == 0 {
        Ok(())
    } else {
        Err(Error::Gpu(format!(
            "{name} {rows} x {hidden} disagrees with the reference ({stats:?}): not timing it"
        )))
    }
}

/// Wall-clock medians of `count` whole 1 x 4096 RMSNorm calls through the high-level API
/// (upload, dispatch, readback) and of as many empty dispatches with a 16-byte readback.
pub async fn round_trips(gpu: &GpuContext, count: usize) -> Result<(f64, f64)> {
    let device = gpu.device();
    let x = reference::sample_data(4096, 5, 4.0);
    let config = RmsNormConfig::new(4096);
    gpu.rms_norm(&x, &config, Weights::NONE).await?;
    let mut calls = Vec::with_capacity(count);
    for _ in 0..count {
        let start = crate::platform::now_seconds();
        gpu.rms_norm(&x, &config, Weights::NONE).await?;
        calls.push(crate::platform::now_seconds() - start);
    }
    let make = |usage| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("round trip"),
            size: 16,
            usage,
            mapped_at_creation: false,
        })
    };
    let src = make(wgpu::BufferUsages::STORAGE);
    let dst = make(wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC);
    let staging = make(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
    let copy = copy_kernel(device, 64, &src, &dst);
    let mut empties = Vec::with_capacity(count);
    for i in 0..=count {
        let start = crate::platform::now_seconds();
        let mut encoder = device.create_command_encoder(&Default::default());
        copy.encode(&mut encoder, 1, None);
        encoder.copy_buffer_to_buffer(&dst, 0, &staging, 0, 16);
        gpu.queue().submit([encoder.finish()]);
        crate::platform::map_read(device, staging.slice(..)).await?;
        staging.unmap();
        if i > 0 {
            empties.push(crate::platform::now_seconds() - start);
        }
    }
    Ok((median(calls), median(empties)))
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A compute pipeline with its one bind group: the benchmark's copy and add kernels.
pub(crate) struct BoundKernel {
    label: &'static str,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
}

impl BoundKernel {
    /// Entry point `entry` of the WGSL `source`, with `constants`, on `buffers` (binding,
    /// buffer), each bound whole.
    pub(crate) fn new(
        device: &wgpu::Device,
        label: &'static str,
        source: &str,
        entry: &str,
        constants: &[(&str, f64)],
        buffers: &[(u32, &wgpu::Buffer)],
    ) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(label),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
            .iter()
            .map(|&(binding, buffer)| wgpu::BindGroupEntry {
                binding,
                resource: buffer.as_entire_binding(),
            })
            .collect();
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Self {
            label,
            pipeline,
            bind_group,
        }
    }

    /// One compute pass of `groups` workgroups.
    pub(crate) fn encode(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        groups: u32,
        timestamp_writes: PassTimestamps<'_>,
    ) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(self.label),
            timestamp_writes,
        });
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(groups, 1, 1);
    }
}

/// `shaders/copy_vec4.wgsl` bound to a source and a destination.
pub(crate) fn copy_kernel(
    device: &wgpu::Device,
    workgroup_size: u32,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
) -> BoundKernel {
    BoundKernel::new(
        device,
        COPY_VEC4.path,
        COPY_VEC4.text,
        "copy",
        &[("WG", f64::from(workgroup_size))],
        &[(0, src), (1, dst)],
    )
}
