//! Element types and the fused residual add on one shape: RMSNorm in f32, f16 and bf16,
//! the fused `y = RMSNorm(x + r)` (storing h = x + r), and the unfused form it replaces (an
//! add kernel written like the copy kernel, then RMSNorm on h), next to the copies of a
//! tensor of each element size, all timed round-robin in one run. Each is checked against
//! the f64 reference first.
//!
//! Bytes moved per call, for N elements of b bytes: RMSNorm 2Nb (x read, y written), fused
//! 4Nb (x and r read, y and h written), unfused 5Nb (the add's 3Nb, then RMSNorm's 2Nb).
//! `sol_kernel` is the bandwidth over that of the fastest vec4 copy kernel copying a tensor
//! of the same element size.

use super::{copy_kernel, round_robin_medians, BenchOptions, BoundKernel, Measurement};
use crate::config::{Residual, RmsNormConfig};
use crate::context::{GpuContext, Weights};
use crate::dtype::{bf16, f16, DType, Element};
use crate::error::{Error, Result};
use crate::kernel::{BufferRegion, PreparedDispatch, RmsNorm, RmsNormBuffers};
use crate::reference::{self, F32_ABS_TOL, F32_REL_TOL};
use crate::shaders::{self, ElemLayout, Storage, BINDING_RESIDUAL, BINDING_SUM, BINDING_X};
use crate::timing::{GpuTimer, PassTimestamps};
use wgpu::util::DeviceExt;

/// Workgroup sizes of the copy and add kernels; the fastest of each is reported.
const WORKGROUP_SIZES: [u32; 3] = [8, 64, 256];

/// One element type's tensors, its kernels prepared on them, and its add kernels.
struct Format {
    dtype: DType,
    x: wgpu::Buffer,
    y: wgpu::Buffer,
    h: wgpu::Buffer,
    plain: (RmsNorm, PreparedDispatch),
    fused: (RmsNorm, PreparedDispatch),
    /// RMSNorm on h, after the add kernel.
    on_sum: (RmsNorm, PreparedDispatch),
    adds: Vec<BoundKernel>,
}

/// What one contestant records.
#[derive(Debug, Clone, Copy)]
enum Contestant {
    /// `copy_buffer_to_buffer` of format f's x.
    CopyEngine(usize),
    /// The vec4 copy kernel of workgroup size WORKGROUP_SIZES[k] on format f's x.
    CopyKernel(usize, usize),
    Plain(usize),
    Fused(usize),
    /// The add kernel of workgroup size WORKGROUP_SIZES[k], then RMSNorm.
    Unfused(usize, usize),
}

/// Measures RMSNorm, fused and unfused residual RMSNorm in f32, f16 and bf16 (weights of
/// the same type, no gain) on `rows x hidden`. The tensors' buffers end at a multiple of 16
/// bytes (padded with zeros), which the copy and add kernels take whole.
pub async fn bench_formats(
    gpu: &GpuContext,
    timer: &GpuTimer,
    rows: u32,
    hidden: u32,
    options: &BenchOptions,
) -> Result<Vec<Measurement>> {
    let mut formats = Vec::new();
    for dtype in DType::ALL {
        formats.push(Format::new(gpu, rows, hidden, dtype).await?);
    }
    let device = gpu.device();
    let len = u64::from(rows) * u64::from(hidden);
    let copies: Vec<Vec<BoundKernel>> = formats
        .iter()
        .map(|f| {
            let kernel = |&wg: &u32| copy_kernel(device, wg, &f.x, &f.y);
            WORKGROUP_SIZES.iter().map(kernel).collect()
        })
        .collect();
    let mut contestants = Vec::new();
    for f in 0..formats.len() {
        contestants.push(Contestant::CopyEngine(f));
        contestants.extend((0..WORKGROUP_SIZES.len()).map(|k| Contestant::CopyKernel(f, k)));
        contestants.extend([Contestant::Plain(f), Contestant::Fused(f)]);
        contestants.extend((0..WORKGROUP_SIZES.len()).map(|k| Contestant::Unfused(f, k)));
    }
    let groups = |wg: u32| len.div_ceil(4).div_ceil(u64::from(wg)).clamp(1, 65535) as u32;
    let record = |c: usize, encoder: &mut wgpu::CommandEncoder, ts: PassTimestamps<'_>| {
        match contestants[c] {
            Contestant::CopyEngine(f) => {
                let format = &formats[f];
                encoder.copy_buffer_to_buffer(&format.x, 0, &format.y, 0, format.x.size());
            }
            Contestant::CopyKernel(f, k) => {
                copies[f][k].encode(encoder, groups(WORKGROUP_SIZES[k]), ts)
            }
            Contestant::Plain(f) => formats[f]
                .plain
                .0
                .record(&formats[f].plain.1, encoder, ts)?,
            Contestant::Fused(f) => formats[f]
                .fused
                .0
                .record(&formats[f].fused.1, encoder, ts)?,
            Contestant::Unfused(f, k) => {
                // The two passes share the timestamps: the add's begins, RMSNorm's ends.
                let (begin, end) = split_timestamps(ts);
                formats[f].adds[k].encode(encoder, groups(WORKGROUP_SIZES[k]), begin);
                let (kernel, prepared) = &formats[f].on_sum;
                kernel.record(prepared, encoder, end)?;
            }
        }
        Ok(())
    };
    let medians = round_robin_medians(gpu, timer, contestants.len(), options, &record).await?;
    Ok(measurements(&formats, &contestants, &medians, len))
}

/// One pass's timestamp writes split into the first pass's beginning and the last's end.
fn split_timestamps(ts: PassTimestamps<'_>) -> (PassTimestamps<'_>, PassTimestamps<'_>) {
    match ts {
        None => (None, None),
        Some(t) => (
            Some(wgpu::ComputePassTimestampWrites {
                query_set: t.query_set,
                beginning_of_pass_write_index: t.beginning_of_pass_write_index,
                end_of_pass_write_index: None,
            }),
            Some(wgpu::ComputePassTimestampWrites {
                query_set: t.query_set,
                beginning_of_pass_write_index: None,
                end_of_pass_write_index: t.end_of_pass_write_index,
            }),
        ),
    }
}

/// The report: per format the copy engine, the fastest copy kernel, RMSNorm, fused, and
/// the fastest unfused.
fn measurements(
    formats: &[Format],
    contestants: &[Contestant],
    medians: &[f64],
    len: u64,
) -> Vec<Measurement> {
    let time = |wanted: &dyn Fn(&Contestant) -> bool| {
        contestants
            .iter()
            .zip(medians)
            .filter(|(c, _)| wanted(c))
            .map(|(_, &t)| t)
            .fold(f64::INFINITY, f64::min)
    };
    let mut out = Vec::new();
    for (f, format) in formats.iter().enumerate() {
        let tensor = len * format.dtype.bytes();
        let engine = time(&|c| matches!(c, Contestant::CopyEngine(g) if *g == f));
        let copy = time(&|c| matches!(c, Contestant::CopyKernel(g, _) if *g == f));
        let copy_gbps = 2.0 * tensor as f64 / copy / 1e9;
        let engine_gbps = 2.0 * tensor as f64 / engine / 1e9;
        let measurement = |kernel, variant: String, residual, seconds: f64, bytes: u64| {
            let gbps = bytes as f64 / seconds / 1e9;
            Measurement {
                kernel,
                p: None,
                variant,
                seconds,
                gbps,
                sol_copy: gbps / engine_gbps,
                sol_kernel: gbps / copy_gbps,
                library_bytes: 0,
                dtype: format.dtype,
                weight_dtype: format.dtype,
                residual,
                bytes,
                pass: "forward",
            }
        };
        let variant = |(kernel, prepared): &(RmsNorm, PreparedDispatch)| {
            kernel.plan().variant_name(&prepared.launch)
        };
        out.push(measurement(
            "copy",
            "copy_buffer_to_buffer".into(),
            "none",
            engine,
            2 * tensor,
        ));
        out.push(measurement(
            "copy",
            "vec4 kernel".into(),
            "none",
            copy,
            2 * tensor,
        ));
        let plain = time(&|c| matches!(c, Contestant::Plain(g) if *g == f));
        out.push(measurement(
            "RMSNorm",
            variant(&format.plain),
            "none",
            plain,
            2 * tensor,
        ));
        let fused = time(&|c| matches!(c, Contestant::Fused(g) if *g == f));
        out.push(measurement(
            "RMSNorm",
            variant(&format.fused),
            "fused",
            fused,
            4 * tensor,
        ));
        let unfused = time(&|c| matches!(c, Contestant::Unfused(g, _) if *g == f));
        let name = format!("add + {}", variant(&format.on_sum));
        out.push(measurement("RMSNorm", name, "unfused", unfused, 5 * tensor));
    }
    out
}

impl Format {
    /// The tensors of `dtype`, every kernel checked against the reference, then prepared.
    async fn new(gpu: &GpuContext, rows: u32, hidden: u32, dtype: DType) -> Result<Self> {
        let device = gpu.device();
        let len = rows as usize * hidden as usize;
        let x_values = rounded(&reference::sample_data(len, u64::from(hidden), 4.0), dtype);
        let r_values = rounded(
            &reference::sample_data(len, u64::from(hidden) + 1, 2.0),
            dtype,
        );
        // Padded with zeros to whole vec4s: the copy and add kernels take every vec4.
        let buffer = |label, values: &[f32]| {
            let mut contents = encode(values, dtype);
            contents.resize(contents.len().next_multiple_of(16), 0);
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
        };
        let (x, r) = (buffer("bench x", &x_values), buffer("bench r", &r_values));
        let (y, h) = (buffer("bench y", &x_values), buffer("bench h", &x_values));
        let config = RmsNormConfig::new(hidden).with_dtype(dtype);
        let fused_config = config.with_residual(Residual::AddStoreSum);
        check_high_level(gpu, &config, &x_values, None).await?;
        check_high_level(gpu, &fused_config, &x_values, Some(&r_values)).await?;
        let region = BufferRegion::whole;
        let plain_buffers = RmsNormBuffers::new(region(&x), region(&y));
        let fused_buffers = RmsNormBuffers {
            residual: Some(region(&r)),
            sum: Some(region(&h)),
            ..plain_buffers
        };
        let on_sum_buffers = RmsNormBuffers::new(region(&h), region(&y));
        let prepared = |config: &RmsNormConfig, buffers: &RmsNormBuffers<'_>| {
            let kernel = gpu.kernel(config)?;
            let prepared = kernel.prepare(device, buffers, rows)?;
            Ok::<_, Error>((kernel, prepared))
        };
        let plain = prepared(&config, &plain_buffers)?;
        let storage = plain.0.plan().io(ElemLayout::Vec4).activations;
        let format = Self {
            dtype,
            fused: prepared(&fused_config, &fused_buffers)?,
            on_sum: prepared(&config, &on_sum_buffers)?,
            plain,
            adds: WORKGROUP_SIZES
                .iter()
                .map(|&wg| add_kernel(device, storage, wg, &x, &r, &h))
                .collect(),
            x,
            y,
            h,
        };
        format
            .check_unfused(gpu, rows, &x_values, &r_values)
            .await?;
        Ok(format)
    }

    /// The add kernel's h must be the reference's bit for bit, and RMSNorm of it right.
    async fn check_unfused(&self, gpu: &GpuContext, rows: u32, x: &[f32], r: &[f32]) -> Result<()> {
        let device = gpu.device();
        let len = x.len() as u64;
        let mut encoder = device.create_command_encoder(&Default::default());
        let groups = len.div_ceil(4).div_ceil(64).clamp(1, 65535) as u32;
        self.adds[1].encode(&mut encoder, groups, None);
        let (kernel, prepared) = &self.on_sum;
        kernel.record(prepared, &mut encoder, None)?;
        gpu.queue().submit([encoder.finish()]);
        let mut h = decode(&read_bytes(gpu, &self.h).await?, self.dtype);
        h.truncate(x.len());
        let expected_h = reference::residual_sum(x, r, self.dtype);
        if h != expected_h {
            return Err(Error::Gpu(format!(
                "the {} add kernel disagrees with the reference: not timing it",
                self.dtype
            )));
        }
        let mut y = decode(&read_bytes(gpu, &self.y).await?, self.dtype);
        y.truncate(x.len());
        let expected = reference::rms_norm(&h, kernel.config(), None, None)?;
        verify_rounded(&y, &expected, self.dtype, "unfused RMSNorm", rows)
    }
}

/// Checks a config through the high-level API against the reference (the sum bit for bit).
async fn check_high_level(
    gpu: &GpuContext,
    config: &RmsNormConfig,
    x: &[f32],
    r: Option<&[f32]>,
) -> Result<()> {
    match config.dtype {
        DType::F32 => check_typed::<f32>(gpu, config, x, r).await,
        DType::F16 => check_typed::<f16>(gpu, config, x, r).await,
        DType::Bf16 => check_typed::<bf16>(gpu, config, x, r).await,
    }
}

async fn check_typed<T: Element>(
    gpu: &GpuContext,
    config: &RmsNormConfig,
    x: &[f32],
    r: Option<&[f32]>,
) -> Result<()> {
    let typed = |v: &[f32]| v.iter().map(|&e| T::from_f32(e)).collect::<Vec<T>>();
    let widen = |v: &[T]| v.iter().map(|e| e.to_f32()).collect::<Vec<f32>>();
    let fresh = GpuContext::from_device(
        gpu.device().clone(),
        gpu.queue().clone(),
        Default::default(),
    );
    let rows = x.len() as u32 / config.hidden;
    let (y, input) = match r {
        None => (
            fresh.rms_norm(&typed(x), config, Weights::NONE).await?,
            x.to_vec(),
        ),
        Some(r) => {
            let out = fresh
                .rms_norm_residual(&typed(x), &typed(r), config, Weights::NONE)
                .await?;
            let h = reference::residual_sum(x, r, config.dtype);
            if out.sum.as_deref().map(widen) != Some(h.clone()) {
                return Err(Error::Gpu(
                    "the fused sum disagrees with the reference".into(),
                ));
            }
            (out.output, h)
        }
    };
    let expected = reference::rms_norm(&input, config, None, None)?;
    verify_rounded(&widen(&y), &expected, config.dtype, "RMSNorm", rows)
}

fn verify_rounded(y: &[f32], expected: &[f64], dtype: DType, name: &str, rows: u32) -> Result<()> {
    let stats = reference::compare_rounded(y, expected, dtype, F32_ABS_TOL, F32_REL_TOL);
    if stats.failures == 0 {
        return Ok(());
    }
    Err(Error::Gpu(format!(
        "{name} {dtype} on {rows} rows disagrees with the reference ({stats:?}): not timing it"
    )))
}

/// Values rounded to `dtype`.
fn rounded(values: &[f32], dtype: DType) -> Vec<f32> {
    values.iter().map(|&v| dtype.round(v)).collect()
}

/// Values of `dtype` as little-endian bytes.
fn encode(values: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => bytemuck::cast_slice(values).to_vec(),
        DType::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
        DType::Bf16 => values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
    }
}

/// Little-endian bytes of `dtype` widened to f32.
fn decode(bytes: &[u8], dtype: DType) -> Vec<f32> {
    let bits = bytes
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]));
    match dtype {
        DType::F32 => bytemuck::pod_collect_to_vec(bytes),
        DType::F16 => bits.map(|b| f16::from_bits(b).to_f32()).collect(),
        DType::Bf16 => bits.map(|b| bf16::from_bits(b).to_f32()).collect(),
    }
}

/// The bytes of `buffer` (which needs COPY_SRC).
async fn read_bytes(gpu: &GpuContext, buffer: &wgpu::Buffer) -> Result<Vec<u8>> {
    let device = gpu.device();
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("bench readback"),
        size: buffer.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, buffer.size());
    gpu.queue().submit([encoder.finish()]);
    crate::platform::map_read(device, staging.slice(..)).await?;
    let bytes = staging
        .slice(..)
        .get_mapped_range()
        .map_err(|e| Error::Readback(e.to_string()))?
        .to_vec();
    staging.unmap();
    Ok(bytes)
}

/// `shaders/residual_add.wgsl` for one storage format, bound to x, r and h.
fn add_kernel(
    device: &wgpu::Device,
    storage: Storage,
    workgroup_size: u32,
    x: &wgpu::Buffer,
    r: &wgpu::Buffer,
    h: &wgpu::Buffer,
) -> BoundKernel {
    let composed = shaders::compose_residual_add(storage, workgroup_size);
    BoundKernel::new(
        device,
        shaders::RESIDUAL_ADD.path,
        &composed.source,
        "residual_add",
        &[],
        &[(BINDING_X, x), (BINDING_RESIDUAL, r), (BINDING_SUM, h)],
    )
}
