//! A call's buffers checked, bound and recorded as the plan's launch says.

use super::pipelines::{
    Layouts, BINDING_BIAS, BINDING_GAIN, BINDING_PARAMS, BINDING_PARTIALS, BINDING_X, BINDING_Y,
};
use super::plan::{lanes, DeviceCaps, Launch, Plan};
use super::{BufferRegion, RmsNormBuffers};
use crate::config::RmsNormConfig;
use crate::error::{Error, Result};

/// The uniform block of `shaders/norm_common.wgsl` (`struct Params`); `tests/contract.rs`
/// checks the two against each other through naga.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    rows: u32,
    row_len: u32,
    k: u32,
    k_f32: f32,
    eps: f32,
    x_base: u32,
    y_base: u32,
    gain_base: u32,
    bias_base: u32,
    chunks: u32,
    k_chunk_len: u32,
    chunk_len: u32,
}

/// Bytes in `Params`.
pub const PARAMS_SIZE: usize = std::mem::size_of::<Params>();

/// Each field of `Params` (the uniform block of `shaders/norm_common.wgsl`) by name and byte
/// offset, for the test that checks the Rust and WGSL sides against each other.
pub const PARAMS_FIELDS: [(&str, usize); 12] = [
    ("rows", std::mem::offset_of!(Params, rows)),
    ("row_len", std::mem::offset_of!(Params, row_len)),
    ("k", std::mem::offset_of!(Params, k)),
    ("k_f32", std::mem::offset_of!(Params, k_f32)),
    ("eps", std::mem::offset_of!(Params, eps)),
    ("x_base", std::mem::offset_of!(Params, x_base)),
    ("y_base", std::mem::offset_of!(Params, y_base)),
    ("gain_base", std::mem::offset_of!(Params, gain_base)),
    ("bias_base", std::mem::offset_of!(Params, bias_base)),
    ("chunks", std::mem::offset_of!(Params, chunks)),
    ("k_chunk_len", std::mem::offset_of!(Params, k_chunk_len)),
    ("chunk_len", std::mem::offset_of!(Params, chunk_len)),
];

/// A checked call with its bind groups and parameters, from `prepare`. It keeps the
/// buffers alive; record it only with the kernel that prepared it.
#[derive(Debug)]
pub struct PreparedDispatch {
    pub(crate) kernel_id: u64,
    pub(crate) launch: Launch,
    pub(crate) bind_groups: Vec<wgpu::BindGroup>,
}

/// The buffers of a call with their names, input and output first.
pub(crate) fn regions<'a, 'b>(
    buffers: &'b RmsNormBuffers<'a>,
) -> impl Iterator<Item = (&'static str, BufferRegion<'a>)> + 'b {
    [
        ("input", Some(buffers.input)),
        ("output", Some(buffers.output)),
        ("gain", buffers.gain),
        ("bias", buffers.bias),
    ]
    .into_iter()
    .filter_map(|(which, region)| region.map(|r| (which, r)))
}

/// Whether every offset of the call allows vec4 loads.
pub(crate) fn vec4_offsets(buffers: &RmsNormBuffers<'_>) -> bool {
    regions(buffers).all(|(_, region)| region.offset % 16 == 0)
}

/// Everything wgpu would refuse, and what the config requires, as typed errors.
pub(crate) fn check_buffers(
    config: &RmsNormConfig,
    buffers: &RmsNormBuffers<'_>,
    rows: u32,
) -> Result<()> {
    config.check_weights(
        buffers.gain.map(|_| config.hidden as usize),
        buffers.bias.map(|_| config.hidden as usize),
    )?;
    let tensor_bytes = u64::from(rows) * u64::from(config.hidden) * 4;
    let vector_bytes = u64::from(config.hidden) * 4;
    for (which, region) in regions(buffers) {
        if !region.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::MissingStorageUsage { which });
        }
        if region.offset % 4 != 0 {
            return Err(Error::MisalignedOffset {
                which,
                offset: region.offset,
            });
        }
        let needed = match which {
            "input" | "output" => tensor_bytes,
            _ => vector_bytes,
        };
        // WebGPU binds whole 4-byte words: a trailing partial word is not usable.
        let size = region.buffer.size() & !3;
        if region.offset > size || size - region.offset < needed {
            return Err(Error::BufferTooSmall {
                which,
                offset: region.offset,
                needed,
                size,
            });
        }
    }
    for (other, region) in regions(buffers).skip(2) {
        if region.buffer == buffers.output.buffer {
            return Err(Error::AliasedOutput { other });
        }
    }
    if buffers.input.buffer == buffers.output.buffer {
        return Err(Error::AliasedOutput { other: "input" });
    }
    Ok(())
}

/// A binding of part of a buffer: the offset aligned down to the device's alignment, the
/// rest a base index in elements.
#[derive(Debug, Clone, Copy)]
struct Bound<'a> {
    buffer: &'a wgpu::Buffer,
    offset: u64,
    size: u64,
    base_elements: u32,
}

impl<'a> Bound<'a> {
    /// The binding for `len` bytes at `region.offset + start`.
    fn new(caps: &DeviceCaps, region: BufferRegion<'a>, start: u64, len: u64) -> Self {
        let begin = region.offset + start;
        let aligned = begin - begin % caps.storage_offset_alignment;
        // Rounded up to whole vec4s where the buffer allows: a vec4 array binding of a size
        // that is not a multiple of 16 would drop its last partial element.
        let end = (begin + len)
            .next_multiple_of(16)
            .min(region.buffer.size() & !3);
        Self {
            buffer: region.buffer,
            offset: aligned,
            size: end - aligned,
            base_elements: ((begin - aligned) / 4) as u32,
        }
    }

    fn entry(&self, binding: u32) -> wgpu::BindGroupEntry<'_> {
        wgpu::BindGroupEntry {
            binding,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: self.buffer,
                offset: self.offset,
                size: wgpu::BufferSize::new(self.size),
            }),
        }
    }
}

/// The bind groups of `launch`: one per chunk, each with its parameters (and split rows'
/// partial sums), made for the call.
pub(crate) fn bind_groups(
    device: &wgpu::Device,
    layouts: &Layouts,
    plan: &Plan,
    config: &RmsNormConfig,
    launch: &Launch,
    buffers: &RmsNormBuffers<'_>,
) -> Result<Vec<wgpu::BindGroup>> {
    let lanes = lanes(launch.elem);
    let row_len = plan.hidden / lanes;
    let k_len = plan.k.div_ceil(lanes);
    let row_bytes = u64::from(plan.hidden) * 4;
    let caps = &plan.caps;
    launch
        .chunks
        .iter()
        .map(|chunk| {
            let bytes = u64::from(chunk.rows) * row_bytes;
            let x = Bound::new(caps, buffers.input, chunk.first_row * row_bytes, bytes);
            let y = Bound::new(caps, buffers.output, chunk.first_row * row_bytes, bytes);
            let gain = buffers.gain.map(|g| Bound::new(caps, g, 0, row_bytes));
            let bias = buffers.bias.map(|b| Bound::new(caps, b, 0, row_bytes));
            let pieces = launch.split_pieces;
            let params = Params {
                rows: chunk.rows,
                row_len,
                k: plan.k,
                k_f32: plan.k as f32,
                eps: config.eps,
                x_base: x.base_elements / lanes,
                y_base: y.base_elements / lanes,
                gain_base: gain.map_or(0, |g| g.base_elements / lanes),
                bias_base: bias.map_or(0, |b| b.base_elements / lanes),
                chunks: pieces.unwrap_or(0),
                k_chunk_len: pieces.map_or(0, |p| k_len.div_ceil(p)),
                chunk_len: pieces.map_or(0, |p| row_len.div_ceil(p)),
            };
            let params_buffer = uniform_buffer(device, bytemuck::bytes_of(&params))?;
            // Without gain or bias, x is bound in their place: the shader never reads them.
            let (gain, bias) = (gain.unwrap_or(x), bias.unwrap_or(x));
            let mut entries = vec![
                wgpu::BindGroupEntry {
                    binding: BINDING_PARAMS,
                    resource: params_buffer.as_entire_binding(),
                },
                x.entry(BINDING_X),
                gain.entry(BINDING_GAIN),
                bias.entry(BINDING_BIAS),
                y.entry(BINDING_Y),
            ];
            let partials = (chunk.scratch_bytes > 0).then(|| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("rmsnorm split partials"),
                    size: chunk.scratch_bytes,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            });
            if let Some(partials) = &partials {
                entries.push(wgpu::BindGroupEntry {
                    binding: BINDING_PARTIALS,
                    resource: partials.as_entire_binding(),
                });
            }
            Ok(device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("rmsnorm bind group"),
                layout: match (&partials, &layouts.split) {
                    (Some(_), Some(split)) => split,
                    _ => &layouts.rows,
                },
                entries: &entries,
            }))
        })
        .collect()
}

/// A uniform buffer holding `contents`, or [`Error::DeviceLost`] where the device can no
/// longer make one (wgpu's `create_buffer_init` panics there).
fn uniform_buffer(device: &wgpu::Device, contents: &[u8]) -> Result<wgpu::Buffer> {
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("rmsnorm params"),
        size: contents.len() as u64,
        usage: wgpu::BufferUsages::UNIFORM,
        mapped_at_creation: true,
    });
    buffer
        .slice(..)
        .get_mapped_range_mut()
        .map_err(|e| Error::DeviceLost(format!("a parameter buffer could not be made: {e}")))?
        .copy_from_slice(contents);
    buffer.unmap();
    Ok(buffer)
}
