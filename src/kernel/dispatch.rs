//! A call's buffers checked, bound and recorded as the plan's launch says.

use super::pipelines::{
    BindingSet, Layouts, BINDING_BIAS, BINDING_GAIN, BINDING_PARAMS, BINDING_PARTIALS,
    BINDING_RESIDUAL, BINDING_SUM, BINDING_X, BINDING_Y,
};
use super::plan::{lanes, DeviceCaps, Launch, LaunchChunk, Plan};
use super::{BufferRegion, RmsNormBuffers};
use crate::config::{Residual, RmsNormConfig};
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
    r_base: u32,
    sum_base: u32,
    chunks: u32,
    k_chunk_len: u32,
    chunk_len: u32,
}

/// Bytes in `Params`.
pub const PARAMS_SIZE: usize = std::mem::size_of::<Params>();

/// Each field of `Params` (the uniform block of `shaders/norm_common.wgsl`) by name and byte
/// offset, for the test that checks the Rust and WGSL sides against each other.
pub const PARAMS_FIELDS: [(&str, usize); 14] = [
    ("rows", std::mem::offset_of!(Params, rows)),
    ("row_len", std::mem::offset_of!(Params, row_len)),
    ("k", std::mem::offset_of!(Params, k)),
    ("k_f32", std::mem::offset_of!(Params, k_f32)),
    ("eps", std::mem::offset_of!(Params, eps)),
    ("x_base", std::mem::offset_of!(Params, x_base)),
    ("y_base", std::mem::offset_of!(Params, y_base)),
    ("gain_base", std::mem::offset_of!(Params, gain_base)),
    ("bias_base", std::mem::offset_of!(Params, bias_base)),
    ("r_base", std::mem::offset_of!(Params, r_base)),
    ("sum_base", std::mem::offset_of!(Params, sum_base)),
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

/// One tensor of a call: its buffer region, its name for errors, and what it holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tensor<'a> {
    pub which: &'static str,
    pub region: BufferRegion<'a>,
    pub element_bytes: u64,
    /// `hidden` elements (gain, bias) rather than `rows * hidden`.
    pub vector: bool,
    /// Whether the call writes it.
    pub writes: bool,
}

/// The tensors of a call, input and output first.
pub(crate) fn tensors<'a>(config: &RmsNormConfig, buffers: &RmsNormBuffers<'a>) -> Vec<Tensor<'a>> {
    let act = config.dtype.bytes();
    let weights = config.weight_dtype.bytes();
    let in_place = config.residual == Residual::AddStoreSumInPlace;
    [
        ("input", Some(buffers.input), act, false, false),
        ("output", Some(buffers.output), act, false, true),
        ("gain", buffers.gain, weights, true, false),
        ("bias", buffers.bias, weights, true, false),
        ("residual", buffers.residual, act, false, in_place),
        ("sum", buffers.sum, act, false, true),
    ]
    .into_iter()
    .filter_map(|(which, region, element_bytes, vector, writes)| {
        region.map(|region| Tensor {
            which,
            region,
            element_bytes,
            vector,
            writes,
        })
    })
    .collect()
}

/// Whether every offset of the call allows vec4 loads (4 elements).
pub(crate) fn vec4_offsets(config: &RmsNormConfig, buffers: &RmsNormBuffers<'_>) -> bool {
    tensors(config, buffers)
        .iter()
        .all(|t| t.region.offset % (4 * t.element_bytes) == 0)
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
    check_residual_buffers(config, buffers)?;
    let tensors = tensors(config, buffers);
    for t in &tensors {
        let (which, region) = (t.which, t.region);
        if !region.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::MissingStorageUsage { which });
        }
        if region.offset % t.element_bytes != 0 {
            return Err(Error::MisalignedOffset {
                which,
                offset: region.offset,
                element_bytes: t.element_bytes,
            });
        }
        let elements = if t.vector {
            u64::from(config.hidden)
        } else {
            u64::from(rows) * u64::from(config.hidden)
        };
        // WebGPU binds whole 4-byte words: the word holding a 16-bit tensor's last element
        // must be in the buffer, and a trailing partial word is not usable.
        let needed = (region.offset % 4 + elements * t.element_bytes).next_multiple_of(4)
            - region.offset % 4;
        let size = region.buffer.size() & !3;
        if region.offset > size || size - region.offset < needed {
            return Err(Error::BufferTooSmall {
                which,
                per_row: !t.vector,
                offset: region.offset,
                needed,
                size,
            });
        }
    }
    for written in tensors.iter().filter(|t| t.writes) {
        for other in &tensors {
            if other.which != written.which && other.region.buffer == written.region.buffer {
                return Err(Error::AliasedOutput {
                    written: written.which,
                    other: other.which,
                });
            }
        }
    }
    Ok(())
}

/// The residual and sum buffers are passed exactly when the config's residual add needs them.
fn check_residual_buffers(config: &RmsNormConfig, buffers: &RmsNormBuffers<'_>) -> Result<()> {
    let mismatch = |which, fix| Err(Error::ResidualMismatch { which, fix });
    match (config.residual.is_some(), buffers.residual.is_some()) {
        (true, false) => {
            return mismatch(
                "the config has a residual add but no residual buffer was passed",
                "pass the residual r, or set residual to Residual::None",
            )
        }
        (false, true) => {
            return mismatch(
                "a residual buffer was passed but the config has no residual add",
                "set residual to Residual::Add (or AddStoreSum, AddStoreSumInPlace), or pass none",
            )
        }
        _ => {}
    }
    match (
        config.residual == Residual::AddStoreSum,
        buffers.sum.is_some(),
    ) {
        (true, false) => mismatch(
            "the config stores the sum x + r but no sum buffer was passed",
            "pass a sum buffer, or set residual to Residual::Add or AddStoreSumInPlace",
        ),
        (false, true) => mismatch(
            "a sum buffer was passed but the config does not store the sum to its own buffer",
            "set residual to Residual::AddStoreSum, or pass none (AddStoreSumInPlace writes \
             the sum over the residual)",
        ),
        _ => Ok(()),
    }
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
    /// The binding for `len` bytes at `region.offset + start`, of elements of
    /// `element_bytes`.
    fn new(
        caps: &DeviceCaps,
        region: BufferRegion<'a>,
        start: u64,
        len: u64,
        element_bytes: u64,
    ) -> Self {
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
            base_elements: ((begin - aligned) / element_bytes) as u32,
        }
    }

    fn entry(&self, binding: u32) -> wgpu::BindGroupEntry<'a> {
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
    launch
        .chunks
        .iter()
        .map(|chunk| {
            let bound = ChunkBindings::new(plan, config, buffers, chunk);
            let params = bound.params(plan, config, launch, chunk);
            let params_buffer = uniform_buffer(device, bytemuck::bytes_of(&params))?;
            let partials = (chunk.scratch_bytes > 0).then(|| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("rmsnorm split partials"),
                    size: chunk.scratch_bytes,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            });
            let mut entries = bound.entries();
            entries.push(wgpu::BindGroupEntry {
                binding: BINDING_PARAMS,
                resource: params_buffer.as_entire_binding(),
            });
            if let Some(partials) = &partials {
                entries.push(wgpu::BindGroupEntry {
                    binding: BINDING_PARTIALS,
                    resource: partials.as_entire_binding(),
                });
            }
            let layout = layouts.get(BindingSet::new(&plan.io, partials.is_some()));
            Ok(device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("rmsnorm bind group"),
                layout: &layout.group,
                entries: &entries,
            }))
        })
        .collect()
}

/// The tensors of one chunk of a call, each bound to the chunk's part of its region.
struct ChunkBindings<'a> {
    x: Bound<'a>,
    y: Bound<'a>,
    gain: Option<Bound<'a>>,
    bias: Option<Bound<'a>>,
    r: Option<Bound<'a>>,
    sum: Option<Bound<'a>>,
}

impl<'a> ChunkBindings<'a> {
    fn new(
        plan: &Plan,
        config: &RmsNormConfig,
        buffers: &RmsNormBuffers<'a>,
        chunk: &LaunchChunk,
    ) -> Self {
        let (act, weight) = (config.dtype.bytes(), config.weight_dtype.bytes());
        let row_bytes = u64::from(plan.hidden) * act;
        let (start, bytes) = (
            chunk.first_row * row_bytes,
            u64::from(chunk.rows) * row_bytes,
        );
        let caps = &plan.caps;
        let tensor = |region| Bound::new(caps, region, start, bytes, act);
        let vector = |region| Bound::new(caps, region, 0, u64::from(plan.hidden) * weight, weight);
        Self {
            x: tensor(buffers.input),
            y: tensor(buffers.output),
            gain: buffers.gain.map(vector),
            bias: buffers.bias.map(vector),
            r: buffers.residual.map(tensor),
            sum: buffers.sum.map(tensor),
        }
    }

    /// The chunk's `Params`: bases in Elems of the launch's layout.
    fn params(
        &self,
        plan: &Plan,
        config: &RmsNormConfig,
        launch: &Launch,
        chunk: &LaunchChunk,
    ) -> Params {
        let lanes = lanes(launch.elem);
        let (row_len, k_len) = (plan.hidden / lanes, plan.k.div_ceil(lanes));
        let base = |b: Option<Bound<'_>>| b.map_or(0, |b| b.base_elements / lanes);
        let pieces = launch.split_pieces;
        Params {
            rows: chunk.rows,
            row_len,
            k: plan.k,
            k_f32: plan.k as f32,
            eps: config.eps,
            x_base: base(Some(self.x)),
            y_base: base(Some(self.y)),
            gain_base: base(self.gain),
            bias_base: base(self.bias),
            r_base: base(self.r),
            // Written over r in place: the sum's base is r's.
            sum_base: base(self.sum.or(self.r)),
            chunks: pieces.unwrap_or(0),
            k_chunk_len: pieces.map_or(0, |p| k_len.div_ceil(p)),
            chunk_len: pieces.map_or(0, |p| row_len.div_ceil(p)),
        }
    }

    /// The tensors' bind group entries (only those the call has).
    fn entries(&self) -> Vec<wgpu::BindGroupEntry<'a>> {
        let mut entries = vec![self.x.entry(BINDING_X), self.y.entry(BINDING_Y)];
        for (binding, bound) in [
            (BINDING_GAIN, self.gain),
            (BINDING_BIAS, self.bias),
            (BINDING_RESIDUAL, self.r),
            (BINDING_SUM, self.sum),
        ] {
            entries.extend(bound.map(|b| b.entry(binding)));
        }
        entries
    }
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
