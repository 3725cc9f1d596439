//! The backward's contestants in [`bench_shape`](super::bench_shape): RMSNorm, pRMSNorm
//! (p = 1/16) and LayerNorm backward with a gain and a bias (dx, dgain, dbias), statistics
//! recomputed; RMSNorm's with the forward's saved statistics; and RMSNorm's without weights,
//! so that what dgain and dbias cost (their partial sums and the pass over them) shows.

use super::{Measurement, Named};
use crate::config::{Gain, LayerNormConfig, PartialRms, RmsNormConfig};
use crate::context::{BackwardInputs, GpuContext};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernel::{
    BackwardBuffers, BufferRegion, Layer, NormBackward, NormKind, PreparedDispatch, Rms, RmsNorm,
    RmsNormBuffers,
};
use crate::reference::{self, compare_normwise, BACKWARD_TOL};
use crate::timing::PassTimestamps;
use wgpu::util::DeviceExt;

/// Records one backward call.
pub(crate) type Recorder = Box<dyn Fn(&mut wgpu::CommandEncoder, PassTimestamps<'_>) -> Result<()>>;

/// The tensors every backward contestant shares.
pub(crate) struct BackwardTensors {
    dy: wgpu::Buffer,
    gain: wgpu::Buffer,
    grad_gain: wgpu::Buffer,
    grad_bias: wgpu::Buffer,
    stats: wgpu::Buffer,
    dy_values: Vec<f32>,
    gain_values: Vec<f32>,
}

impl BackwardTensors {
    pub(crate) fn new(device: &wgpu::Device, rows: u32, hidden: u32) -> Self {
        let len = rows as usize * hidden as usize;
        let dy_values = reference::sample_data(len, 91, 1.0);
        let gain_values = reference::sample_data(hidden as usize, 92, 2.0);
        let init = |contents: &[f32]| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("bench backward"),
                contents: bytemuck::cast_slice(contents),
                usage: wgpu::BufferUsages::STORAGE,
            })
        };
        let empty = |size: u64| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bench backward"),
                size,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        Self {
            dy: init(&dy_values),
            gain: init(&gain_values),
            grad_gain: empty(u64::from(hidden) * 4),
            grad_bias: empty(u64::from(hidden) * 4),
            stats: empty(u64::from(rows) * 3 * 4),
            dy_values,
            gain_values,
        }
    }
}

/// Which backward a contestant runs.
#[derive(Clone, Copy)]
enum Contestant {
    Rms(PartialRms, Option<f64>),
    RmsSavedStats,
    RmsWithoutWeights,
    Layer,
}

/// The backward contestants on `x_buffer` (x) and `dx_buffer` (dx), each checked against the
/// f64 reference through the high-level API first.
pub(crate) async fn backward_contestants(
    gpu: &GpuContext,
    x: &[f32],
    x_buffer: &wgpu::Buffer,
    dx_buffer: &wgpu::Buffer,
    tensors: &BackwardTensors,
    rows: u32,
    hidden: u32,
) -> Result<(Vec<Named>, Vec<Recorder>)> {
    let contestants = [
        ("RMSNorm", Contestant::Rms(PartialRms::Full, None)),
        ("RMSNorm", Contestant::RmsSavedStats),
        ("RMSNorm", Contestant::RmsWithoutWeights),
        (
            "pRMSNorm",
            Contestant::Rms(PartialRms::Fraction(1.0 / 16.0), Some(1.0 / 16.0)),
        ),
        ("LayerNorm", Contestant::Layer),
    ];
    let mut names = Vec::new();
    let mut recorders = Vec::new();
    for (name, contestant) in contestants {
        let weighted = RmsNormConfig::new(hidden)
            .with_gain(Gain::Scale)
            .with_bias(true);
        let (config, p) = match contestant {
            Contestant::Rms(partial, p) => (weighted.with_partial(partial), p),
            Contestant::RmsSavedStats => (weighted.with_saved_stats(true), None),
            Contestant::RmsWithoutWeights => (RmsNormConfig::new(hidden), None),
            Contestant::Layer => (weighted, None),
        };
        let layer = LayerNormConfig::new(hidden)
            .with_gain(Gain::Scale)
            .with_bias(true);
        verify(
            gpu,
            x,
            tensors,
            &config,
            matches!(contestant, Contestant::Layer),
            rows,
        )
        .await?;
        let buffers = BackwardBuffers {
            gain: (config.gain != Gain::None).then(|| BufferRegion::whole(&tensors.gain)),
            grad_gain: (config.gain != Gain::None).then(|| BufferRegion::whole(&tensors.grad_gain)),
            grad_bias: config.bias.then(|| BufferRegion::whole(&tensors.grad_bias)),
            stats: config
                .save_stats
                .then(|| BufferRegion::whole(&tensors.stats)),
            ..BackwardBuffers::new(
                BufferRegion::whole(x_buffer),
                BufferRegion::whole(&tensors.dy),
                BufferRegion::whole(dx_buffer),
            )
        };
        if config.save_stats {
            save_stats(gpu, &config, x_buffer, dx_buffer, tensors, rows)?;
        }
        let (variant, recorder) = match contestant {
            Contestant::Layer => recorder::<Layer>(gpu, &layer, &buffers, rows)?,
            _ => recorder::<Rms>(gpu, &config, &buffers, rows)?,
        };
        let variant = match contestant {
            Contestant::RmsWithoutWeights => format!("{variant}, no gain or bias"),
            _ => variant,
        };
        names.push((name, p, variant, 0));
        recorders.push(recorder);
    }
    Ok((names, recorders))
}

/// The backward for `config`, prepared on `buffers`, and its variant name.
fn recorder<N: NormKind>(
    gpu: &GpuContext,
    config: &N::Config,
    buffers: &BackwardBuffers<'_>,
    rows: u32,
) -> Result<(String, Recorder)> {
    let device = gpu.device();
    let kernel = NormBackward::<N>::new(device, config, &Default::default())?;
    let prepared: PreparedDispatch = kernel.prepare(device, buffers, rows)?;
    let variant = kernel.variant_name(buffers, rows);
    let record: Recorder = Box::new(move |encoder, ts| kernel.record(&prepared, encoder, ts));
    Ok((variant, record))
}

/// Runs the forward once (the gain as gain and bias), saving the rows' statistics for the
/// saved-statistics contestant.
fn save_stats(
    gpu: &GpuContext,
    config: &RmsNormConfig,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    tensors: &BackwardTensors,
    rows: u32,
) -> Result<()> {
    let device = gpu.device();
    let forward = RmsNorm::new(device, config, &Default::default())?;
    let weights = || Some(BufferRegion::whole(&tensors.gain));
    let buffers = RmsNormBuffers {
        gain: (config.gain != Gain::None).then(weights).flatten(),
        bias: config.bias.then(weights).flatten(),
        stats: Some(BufferRegion::whole(&tensors.stats)),
        ..RmsNormBuffers::new(BufferRegion::whole(x), BufferRegion::whole(y))
    };
    let mut encoder = device.create_command_encoder(&Default::default());
    forward.encode(device, &mut encoder, &buffers, rows)?;
    gpu.queue().submit([encoder.finish()]);
    Ok(())
}

/// dx, dgain and dbias of `config` through the high-level API against the f64 reference.
async fn verify(
    gpu: &GpuContext,
    x: &[f32],
    tensors: &BackwardTensors,
    config: &RmsNormConfig,
    layer: bool,
    rows: u32,
) -> Result<()> {
    let inputs = BackwardInputs::new(x, &tensors.dy_values);
    let gain = (config.gain != Gain::None).then_some(&tensors.gain_values[..]);
    let config = config.with_saved_stats(false);
    let (got, expected) = if layer {
        let layer = LayerNormConfig::new(config.hidden)
            .with_gain(config.gain)
            .with_bias(config.bias);
        let got = gpu.layer_norm_backward(inputs, &layer, gain).await?;
        let expected = reference::layer_norm_backward(x, &tensors.dy_values, &layer, gain, None)?;
        (got, expected)
    } else {
        let got = gpu.rms_norm_backward(inputs, &config, gain).await?;
        let expected = reference::rms_norm_backward(x, &tensors.dy_values, &config, gain, None)?;
        (got, expected)
    };
    let n = config.hidden as usize;
    let f32_type = crate::dtype::DType::F32;
    let mut failures = compare_normwise(
        &got.grad_input,
        &expected.dx,
        &expected.dx_scale,
        n,
        f32_type,
        BACKWARD_TOL,
    )
    .failures;
    for (got, want, scale) in [
        (&got.grad_gain, &expected.dgain, &expected.dgain_scale),
        (&got.grad_bias, &expected.dbias, &expected.dbias_scale),
    ] {
        if let (Some(got), Some(want)) = (got, want) {
            failures += compare_normwise(got, want, scale, 1, f32_type, BACKWARD_TOL).failures;
        }
    }
    if failures > 0 {
        return Err(Error::Gpu(format!(
            "the backward of {config:?} on {rows} rows disagrees with the reference in \
             {failures} elements: not timing it"
        )));
    }
    Ok(())
}

/// The backward's measurements from their medians, next to the copies' (`copies`: the copy
/// engine's and the fastest copy kernel's seconds for `bytes` of one tensor). Bytes counted:
/// x, dy and dx; the gain, dgain and dbias (f32) where the contestant has them.
pub(crate) fn measurements(
    names: Vec<Named>,
    medians: &[f64],
    bytes: u64,
    hidden: u32,
    copies: (f64, f64),
) -> Vec<Measurement> {
    let vectors = 3 * u64::from(hidden) * 4;
    let copy_gbps = |copy: f64| 2.0 * bytes as f64 / copy / 1e9;
    names
        .into_iter()
        .zip(medians)
        .map(|((name, p, variant, _), &seconds)| {
            let weights = if variant.ends_with("no gain or bias") {
                0
            } else {
                vectors
            };
            let moved = 3 * bytes + weights;
            let gbps = moved as f64 / seconds / 1e9;
            Measurement {
                kernel: name,
                p,
                variant,
                seconds,
                gbps,
                sol_copy: gbps / copy_gbps(copies.0),
                sol_kernel: gbps / copy_gbps(copies.1),
                library_bytes: 0,
                dtype: DType::F32,
                weight_dtype: DType::F32,
                residual: "none",
                bytes: moved,
                pass: "backward",
            }
        })
        .collect()
}
