//! A call's buffers checked, bound and recorded as the plan's launch says.

use super::pipelines::{
    BindingSet, Layouts, BINDING_BIAS, BINDING_GAIN, BINDING_GRAD_BIAS, BINDING_GRAD_GAIN,
    BINDING_GRAD_OUTPUT, BINDING_GRAD_SUM, BINDING_PARAMS, BINDING_PARTIALS, BINDING_PIECES,
    BINDING_RESIDUAL, BINDING_STATS, BINDING_SUM, BINDING_WEIGHT_PARTIALS, BINDING_X, BINDING_Y,
};
use super::plan::{lanes, row_loads, DeviceCaps, Launch, LaunchChunk, Plan, WideOffsets};
use super::{BackwardBuffers, BufferRegion, Norm, RmsNormBuffers};
use crate::config::{Residual, RmsNormConfig};
use crate::error::{Error, Result};
use crate::shaders::ElemLayout;
use bytemuck::Zeroable;

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
    stats_base: u32,
    dy_base: u32,
    dsum_base: u32,
    partials_written: u32,
    partial_rows: u32,
    dgain_base: u32,
    dbias_base: u32,
    hidden: u32,
    row_phase: u32,
    gain_phase: u32,
    bias_phase: u32,
}

/// Bytes in `Params`.
pub const PARAMS_SIZE: usize = std::mem::size_of::<Params>();

/// Each field of `Params` (the uniform block of `shaders/norm_common.wgsl`) by name and byte
/// offset, for the test that checks the Rust and WGSL sides against each other.
pub const PARAMS_FIELDS: [(&str, usize); 25] = [
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
    ("stats_base", std::mem::offset_of!(Params, stats_base)),
    ("dy_base", std::mem::offset_of!(Params, dy_base)),
    ("dsum_base", std::mem::offset_of!(Params, dsum_base)),
    (
        "partials_written",
        std::mem::offset_of!(Params, partials_written),
    ),
    ("partial_rows", std::mem::offset_of!(Params, partial_rows)),
    ("dgain_base", std::mem::offset_of!(Params, dgain_base)),
    ("dbias_base", std::mem::offset_of!(Params, dbias_base)),
    ("hidden", std::mem::offset_of!(Params, hidden)),
    ("row_phase", std::mem::offset_of!(Params, row_phase)),
    ("gain_phase", std::mem::offset_of!(Params, gain_phase)),
    ("bias_phase", std::mem::offset_of!(Params, bias_phase)),
];

/// A checked call with its bind groups and parameters, from `prepare`. It keeps the
/// buffers alive; record it only with the kernel that prepared it.
#[derive(Debug)]
pub struct PreparedDispatch {
    pub(crate) kernel_id: u64,
    pub(crate) launch: Launch,
    pub(crate) bind_groups: Vec<wgpu::BindGroup>,
    /// Backward with a gain or a bias: the bind group of the pass that sums dgain and dbias.
    pub(crate) weight_grads: Option<wgpu::BindGroup>,
    /// The buffers made for the call (parameters, partial sums), held by the bind groups.
    pub(crate) buffers: Vec<wgpu::Buffer>,
}

impl PreparedDispatch {
    /// Destroys the buffers made for the call, once no later submission records it again:
    /// in the browser wgpu leaves buffers to the garbage collector, so a loop that prepares
    /// a call per step would otherwise hold them until it runs (submitted work still
    /// completes: WebGPU and wgpu defer the destruction until it has).
    pub(crate) fn destroy_buffers(&self) {
        for buffer in &self.buffers {
            buffer.destroy();
        }
    }
}

/// How many elements a tensor of a call holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extent {
    /// This many per row (`hidden` for activations, the statistics' words per row).
    PerRow(u64),
    /// This many in all (`hidden` for the gain, bias, dgain, dbias).
    Fixed(u64),
}

/// One tensor of a call: its binding, buffer region, name for errors, and what it holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tensor<'a> {
    pub which: &'static str,
    pub binding: u32,
    pub region: BufferRegion<'a>,
    pub element_bytes: u64,
    pub extent: Extent,
    /// Whether the shader reads it in Elems (vec4 loads need its offset a multiple of 4
    /// elements); the statistics are read as f32.
    pub elems: bool,
    /// Whether the call writes it.
    pub writes: bool,
}

impl<'a> Tensor<'a> {
    fn new(
        which: &'static str,
        binding: u32,
        region: BufferRegion<'a>,
        element_bytes: u64,
        extent: Extent,
        writes: bool,
    ) -> Self {
        Self {
            which,
            binding,
            region,
            element_bytes,
            extent,
            elems: binding != BINDING_STATS,
            writes,
        }
    }
}

/// Words of saved statistics per row.
pub(crate) fn stats_per_row(norm: Norm) -> u64 {
    match norm {
        Norm::Rms => 2,
        Norm::Layer => 3,
    }
}

/// The tensors of a forward call, input and output first.
pub(crate) fn tensors<'a>(
    norm: Norm,
    config: &RmsNormConfig,
    buffers: &RmsNormBuffers<'a>,
) -> Vec<Tensor<'a>> {
    let act = config.dtype.bytes();
    let weights = config.weight_dtype.bytes();
    let in_place = config.residual == Residual::AddStoreSumInPlace;
    let (row, vector) = (
        Extent::PerRow(u64::from(config.hidden)),
        Extent::Fixed(u64::from(config.hidden)),
    );
    let stats = Extent::PerRow(stats_per_row(norm));
    [
        ("input", BINDING_X, Some(buffers.input), act, row, false),
        ("output", BINDING_Y, Some(buffers.output), act, row, true),
        ("gain", BINDING_GAIN, buffers.gain, weights, vector, false),
        ("bias", BINDING_BIAS, buffers.bias, weights, vector, false),
        (
            "residual",
            BINDING_RESIDUAL,
            buffers.residual,
            act,
            row,
            in_place,
        ),
        ("sum", BINDING_SUM, buffers.sum, act, row, true),
        ("stats", BINDING_STATS, buffers.stats, 4, stats, true),
    ]
    .into_iter()
    .filter_map(|(which, binding, region, bytes, extent, writes)| {
        region.map(|region| Tensor::new(which, binding, region, bytes, extent, writes))
    })
    .collect()
}

/// The tensors of a backward call.
pub(crate) fn backward_tensors<'a>(
    norm: Norm,
    config: &RmsNormConfig,
    buffers: &BackwardBuffers<'a>,
) -> Vec<Tensor<'a>> {
    let act = config.dtype.bytes();
    let weights = config.weight_dtype.bytes();
    let (row, vector) = (
        Extent::PerRow(u64::from(config.hidden)),
        Extent::Fixed(u64::from(config.hidden)),
    );
    let stats = Extent::PerRow(stats_per_row(norm));
    [
        ("input", BINDING_X, Some(buffers.input), act, row, false),
        (
            "grad_output",
            BINDING_GRAD_OUTPUT,
            Some(buffers.grad_output),
            act,
            row,
            false,
        ),
        (
            "grad_input",
            BINDING_Y,
            Some(buffers.grad_input),
            act,
            row,
            true,
        ),
        ("gain", BINDING_GAIN, buffers.gain, weights, vector, false),
        (
            "residual",
            BINDING_RESIDUAL,
            buffers.residual,
            act,
            row,
            false,
        ),
        (
            "grad_sum",
            BINDING_GRAD_SUM,
            buffers.grad_sum,
            act,
            row,
            false,
        ),
        ("stats", BINDING_STATS, buffers.stats, 4, stats, false),
        (
            "grad_gain",
            BINDING_GRAD_GAIN,
            buffers.grad_gain,
            4,
            vector,
            true,
        ),
        (
            "grad_bias",
            BINDING_GRAD_BIAS,
            buffers.grad_bias,
            4,
            vector,
            true,
        ),
    ]
    .into_iter()
    .filter_map(|(which, binding, region, bytes, extent, writes)| {
        region.map(|region| Tensor::new(which, binding, region, bytes, extent, writes))
    })
    .collect()
}

/// What the offsets of a call of `rows` rows allow: vec4 loads where every offset is a
/// multiple of 4 elements; rows at any element where the row tensors' element 0 lie at one
/// lane of an aligned group of four elements, and every binding can be rounded up to whole
/// groups within its buffer.
pub(crate) fn wide_offsets(tensors: &[Tensor<'_>], rows: u32) -> WideOffsets {
    let elems = || tensors.iter().filter(|t| t.elems);
    let aligned = elems().all(|t| t.region.offset % (4 * t.element_bytes) == 0);
    // The lane of an Elem (four elements) where the tensor's element 0 lies.
    let phase = |t: &Tensor<'_>| t.region.offset % (4 * t.element_bytes) / t.element_bytes;
    let row_phase = elems()
        .find(|t| matches!(t.extent, Extent::PerRow(_)))
        .map(phase);
    let same_phase = elems().all(|t| {
        let elements = match t.extent {
            Extent::Fixed(n) => n,
            Extent::PerRow(n) => u64::from(rows) * n,
        };
        let end = t.region.offset + elements * t.element_bytes;
        end.next_multiple_of(4 * t.element_bytes) <= t.region.buffer.size()
            && (matches!(t.extent, Extent::Fixed(_)) || Some(phase(t)) == row_phase)
    });
    WideOffsets {
        aligned,
        same_phase,
    }
}

/// What the config requires of a forward call's buffers, as typed errors.
pub(crate) fn check_forward_buffers(
    config: &RmsNormConfig,
    buffers: &RmsNormBuffers<'_>,
) -> Result<()> {
    config.check_weights(
        buffers.gain.map(|_| config.hidden as usize),
        buffers.bias.map(|_| config.hidden as usize),
    )?;
    check_stats_buffer(config.save_stats, buffers.stats.is_some())?;
    check_residual_buffers(config, buffers)
}

/// The statistics buffer is passed exactly when the config saves statistics.
pub(crate) fn check_stats_buffer(save_stats: bool, passed: bool) -> Result<()> {
    let mismatch = |which, fix| Err(Error::StatsMismatch { which, fix });
    match (save_stats, passed) {
        (true, false) => mismatch(
            "the config saves each row's statistics but no stats buffer was passed",
            "pass a stats buffer of stats_len(rows) f32, or set save_stats to false",
        ),
        (false, true) => mismatch(
            "a stats buffer was passed but the config does not save statistics",
            "set save_stats to true (with_saved_stats(true)), or pass none",
        ),
        _ => Ok(()),
    }
}

/// Everything wgpu would refuse of a call's tensors, as typed errors.
pub(crate) fn check_tensors(tensors: &[Tensor<'_>], rows: u32) -> Result<()> {
    for t in tensors {
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
        let elements = match t.extent {
            Extent::Fixed(n) => n,
            Extent::PerRow(n) => u64::from(rows) * n,
        };
        // WebGPU binds whole 4-byte words: the word holding a 16-bit tensor's last element
        // must be in the buffer, and a trailing partial word is not usable.
        let needed = (region.offset % 4 + elements * t.element_bytes).next_multiple_of(4)
            - region.offset % 4;
        let size = region.buffer.size() & !3;
        if region.offset > size || size - region.offset < needed {
            return Err(Error::BufferTooSmall {
                which,
                per_row: matches!(t.extent, Extent::PerRow(_)),
                offset: region.offset,
                needed,
                size,
            });
        }
    }
    for written in tensors.iter().filter(|t| t.writes) {
        for other in tensors {
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
/// partial sums), made for the call; and the backward's pass over dgain and dbias.
pub(crate) fn bind_groups(
    device: &wgpu::Device,
    layouts: &Layouts,
    plan: &Plan,
    config: &RmsNormConfig,
    launch: &Launch,
    tensors: &[Tensor<'_>],
) -> Result<BindGroups> {
    let partial_rows = launch.partial_rows();
    let mut made = Vec::new();
    let weight_partials = launch.weight_grads.map(|_| {
        let rows = partial_rows * (u64::from(plan.io.gain) + u64::from(plan.io.bias));
        scratch_buffer(
            device,
            "weight grad partials",
            rows * u64::from(plan.hidden) * 4,
        )
    });
    let mut groups = Vec::with_capacity(launch.chunks.len());
    for chunk in &launch.chunks {
        let bound = ChunkBindings::new(plan, tensors, chunk);
        let lanes = lanes(launch.elem);
        let params = chunk_params(
            plan,
            config,
            launch,
            chunk,
            |b| bound.base(b, lanes),
            |b| bound.phase(b),
        );
        let params_buffer = uniform_buffer(device, bytemuck::bytes_of(&params))?;
        let partials = (chunk.scratch_bytes > 0)
            .then(|| scratch_buffer(device, "split partials", chunk.scratch_bytes));
        made.push(params_buffer.clone());
        made.extend(partials.clone());
        let stage = &launch.stages[0];
        let set = BindingSet::of(stage);
        let mut entries: Vec<wgpu::BindGroupEntry<'_>> = bound
            .bound
            .iter()
            .filter(|(t, _)| set.has(t.binding))
            .map(|(t, b)| b.entry(t.binding))
            .collect();
        entries.push(wgpu::BindGroupEntry {
            binding: BINDING_PARAMS,
            resource: params_buffer.as_entire_binding(),
        });
        // Split rows' values per piece: the forward's partial sums, the backward's pieces.
        let piece_binding = if stage.entry.is_backward() {
            BINDING_PIECES
        } else {
            BINDING_PARTIALS
        };
        for (binding, scratch) in [
            (piece_binding, &partials),
            (BINDING_WEIGHT_PARTIALS, &weight_partials),
        ] {
            if let Some(scratch) = scratch {
                entries.push(wgpu::BindGroupEntry {
                    binding,
                    resource: scratch.as_entire_binding(),
                });
            }
        }
        groups.push(device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("rmsnorm bind group"),
            layout: &layouts.get(set).group,
            entries: &entries,
        }));
    }
    let weight_grads = match (launch.weight_grads, &weight_partials) {
        (Some((stage, _)), Some(partials)) => {
            let (group, params) =
                weight_grads_bind_group(device, layouts, plan, launch, tensors, &stage, partials)?;
            made.push(params);
            Some(group)
        }
        _ => None,
    };
    made.extend(weight_partials);
    Ok((groups, weight_grads, made))
}

/// A call's bind groups, the weight-grad pass's, and the buffers made for them.
pub(crate) type BindGroups = (
    Vec<wgpu::BindGroup>,
    Option<wgpu::BindGroup>,
    Vec<wgpu::Buffer>,
);

/// The bind group of the backward's `weight_grads`: its parameters, the partial sums, dgain
/// and dbias; and its parameters buffer, made here.
fn weight_grads_bind_group(
    device: &wgpu::Device,
    layouts: &Layouts,
    plan: &Plan,
    launch: &Launch,
    tensors: &[Tensor<'_>],
    stage: &super::plan::StagePlan,
    partials: &wgpu::Buffer,
) -> Result<(wgpu::BindGroup, wgpu::Buffer)> {
    let lanes = lanes(launch.elem);
    let (mut dgain_base, mut dbias_base) = (0, 0);
    let mut entries = vec![wgpu::BindGroupEntry {
        binding: BINDING_WEIGHT_PARTIALS,
        resource: partials.as_entire_binding(),
    }];
    let mut bound = Vec::new();
    for t in tensors {
        if t.binding == BINDING_GRAD_GAIN || t.binding == BINDING_GRAD_BIAS {
            let b = Bound::new(&plan.caps, t.region, 0, u64::from(plan.hidden) * 4, 4);
            let base = b.base_elements / lanes;
            if t.binding == BINDING_GRAD_GAIN {
                dgain_base = base;
            } else {
                dbias_base = base;
            }
            bound.push((t.binding, b));
        }
    }
    let params = weight_grads_params(plan, launch, dgain_base, dbias_base);
    entries.extend(bound.iter().map(|(binding, b)| b.entry(*binding)));
    let params_buffer = uniform_buffer(device, bytemuck::bytes_of(&params))?;
    entries.push(wgpu::BindGroupEntry {
        binding: BINDING_PARAMS,
        resource: params_buffer.as_entire_binding(),
    });
    let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("rmsnorm weight grads bind group"),
        layout: &layouts.get(BindingSet::of(stage)).group,
        entries: &entries,
    });
    Ok((group, params_buffer))
}

/// A storage buffer for intermediate results.
fn scratch_buffer(device: &wgpu::Device, label: &str, size: u64) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: size.max(4),
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    })
}

/// The tensors of one chunk of a call, each bound to the chunk's part of its region.
struct ChunkBindings<'a> {
    bound: Vec<(Tensor<'a>, Bound<'a>)>,
}

impl<'a> ChunkBindings<'a> {
    fn new(plan: &Plan, tensors: &[Tensor<'a>], chunk: &LaunchChunk) -> Self {
        let bound = tensors
            .iter()
            .map(|t| {
                let bytes = t.element_bytes;
                let b = match t.extent {
                    Extent::PerRow(n) => Bound::new(
                        &plan.caps,
                        t.region,
                        chunk.first_row * n * bytes,
                        u64::from(chunk.rows) * n * bytes,
                        bytes,
                    ),
                    Extent::Fixed(n) => Bound::new(&plan.caps, t.region, 0, n * bytes, bytes),
                };
                (*t, b)
            })
            .collect();
        Self { bound }
    }

    /// The lane of its base Elem (a group of four elements) where the tensor at `binding`
    /// starts.
    fn phase(&self, binding: u32) -> u32 {
        self.bound
            .iter()
            .find(|(t, _)| t.binding == binding)
            .map_or(0, |(_, b)| b.base_elements % 4)
    }

    /// The base of the tensor at `binding`: in Elems of `lanes` elements, or in f32 words
    /// for the statistics; 0 where the call has none.
    fn base(&self, binding: u32, lanes: u32) -> u32 {
        self.bound
            .iter()
            .find(|(t, _)| t.binding == binding)
            .map_or(0, |(t, b)| {
                b.base_elements / if t.elems { lanes } else { 1 }
            })
    }
}

/// A chunk's `Params`: `base(binding)` gives a tensor's base in Elems of the launch's layout
/// (in f32 words for the statistics), 0 for tensors the call does not have; `phase(binding)`
/// the lane of that Elem where its element 0 lies (rows at any element only).
pub(crate) fn chunk_params(
    plan: &Plan,
    config: &RmsNormConfig,
    launch: &Launch,
    chunk: &LaunchChunk,
    base: impl Fn(u32) -> u32,
    phase: impl Fn(u32) -> u32,
) -> Params {
    let elem = launch.elem;
    let row_len = row_loads(elem, plan.hidden);
    let k_len = match elem {
        ElemLayout::Vec4Masked => row_loads(elem, plan.k),
        _ => plan.k.div_ceil(lanes(elem)),
    };
    // Rows at any element: where element 0 lies in its Elem (x's, as y's, r's and the sum's).
    let phase = |binding: u32| match elem {
        ElemLayout::Vec4Masked => phase(binding),
        _ => 0,
    };
    let pieces = launch.split_pieces;
    // Written over r in place: the sum's base is r's.
    let sum_base = match config.residual {
        Residual::AddStoreSumInPlace => base(BINDING_RESIDUAL),
        _ => base(BINDING_SUM),
    };
    Params {
        rows: chunk.rows,
        row_len,
        k: plan.k,
        k_f32: plan.k as f32,
        eps: config.eps,
        x_base: base(BINDING_X),
        y_base: base(BINDING_Y),
        gain_base: base(BINDING_GAIN),
        bias_base: base(BINDING_BIAS),
        r_base: base(BINDING_RESIDUAL),
        sum_base,
        chunks: pieces.unwrap_or(0),
        k_chunk_len: pieces.map_or(0, |p| k_len.div_ceil(p)),
        chunk_len: pieces.map_or(0, |p| row_len.div_ceil(p)),
        stats_base: base(BINDING_STATS),
        dy_base: base(BINDING_GRAD_OUTPUT),
        dsum_base: base(BINDING_GRAD_SUM),
        // The backward's first chunk writes the partial rows of dgain and dbias, later
        // chunks add to them.
        partials_written: u32::from(chunk.first_row > 0),
        partial_rows: launch.partial_rows() as u32,
        dgain_base: 0,
        dbias_base: 0,
        hidden: plan.hidden,
        row_phase: phase(BINDING_X),
        gain_phase: phase(BINDING_GAIN),
        bias_phase: phase(BINDING_BIAS),
    }
}

/// The `Params` of the backward's `weight_grads` pass, with dgain and dbias at these bases
/// (in Elems of the launch's layout).
pub(crate) fn weight_grads_params(
    plan: &Plan,
    launch: &Launch,
    dgain_base: u32,
    dbias_base: u32,
) -> Params {
    let mut params = Params::zeroed();
    params.row_len = row_loads(launch.elem, plan.hidden);
    params.partial_rows = launch.partial_rows() as u32;
    params.dgain_base = dgain_base;
    params.dbias_base = dbias_base;
    params
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
