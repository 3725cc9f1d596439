//! The launch plan: everything about how a normalization runs, decided in one place from the
//! device's capabilities and the call. Pure functions of [`DeviceCaps`], so that tests can
//! plan for devices they do not have (`tests/plan.rs`); pipelines, bind groups, dispatches
//! and `variant_name` read the plan and derive nothing themselves.

use super::{KernelOptions, Norm, Reduction};
use crate::config::Residual;
use crate::config::RmsNormConfig;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shaders::{
    ElemLayout, ModuleShape, ReductionKind, ResidualIo, ShaderTarget, StatsIo, Storage, TensorIo,
};

/// What the plan needs to know of a device. Built from a real device with
/// [`DeviceCaps::from_device`], or written by hand for a device that is not here.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceCaps {
    /// The adapter's type: `Cpu` marks software adapters (lavapipe, llvmpipe, WARP).
    pub device_type: wgpu::DeviceType,
    /// The backend.
    pub backend: wgpu::Backend,
    /// Whether the device has `Features::SUBGROUP`.
    pub subgroups: bool,
    /// Whether the device has `Features::SHADER_F16` (WGSL's f16 type).
    pub shader_f16: bool,
    /// The smallest subgroup size the adapter reports. Used for speed only, never for
    /// correctness: adapters have run below it.
    pub subgroup_min_size: u32,
    /// The largest subgroup size the adapter reports.
    pub subgroup_max_size: u32,
    /// `min(max_compute_invocations_per_workgroup, max_compute_workgroup_size_x)`.
    pub max_invocations: u32,
    /// `max_compute_workgroup_storage_size`, bytes.
    pub max_workgroup_storage: u32,
    /// `max_storage_buffers_per_shader_stage`.
    pub max_storage_buffers_per_stage: u32,
    /// `max_storage_buffer_binding_size`, bytes.
    pub max_storage_binding: u64,
    /// `max_buffer_size`, bytes.
    pub max_buffer_size: u64,
    /// `min_storage_buffer_offset_alignment`, bytes.
    pub storage_offset_alignment: u64,
    /// `max_compute_workgroups_per_dimension`.
    pub max_workgroups_per_dimension: u32,
    /// Where the WGSL is compiled.
    pub target: ShaderTarget,
}

impl DeviceCaps {
    /// The capabilities of `device`.
    pub fn from_device(device: &wgpu::Device) -> Self {
        Self::new(&device.adapter_info(), device.features(), &device.limits())
    }

    /// The capabilities of a device with this adapter info, these enabled features and limits.
    pub fn new(info: &wgpu::AdapterInfo, features: wgpu::Features, limits: &wgpu::Limits) -> Self {
        Self {
            device_type: info.device_type,
            backend: info.backend,
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
            max_invocations: limits
                .max_compute_invocations_per_workgroup
                .min(limits.max_compute_workgroup_size_x),
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_storage_buffers_per_stage: limits.max_storage_buffers_per_shader_stage,
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            storage_offset_alignment: u64::from(limits.min_storage_buffer_offset_alignment),
            max_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            target: ShaderTarget::CURRENT,
        }
    }

    /// The one subgroup width the adapter can run, where that is provable: a CPU adapter
    /// whose reported minimum and maximum agree (its SIMD width). GPUs are never trusted
    /// with this: drivers have run subgroups below their reported minimum.
    pub fn fixed_subgroup_width(&self) -> Option<u32> {
        let fixed = self.subgroups
            && self.device_type == wgpu::DeviceType::Cpu
            && self.subgroup_min_size == self.subgroup_max_size
            && self.subgroup_min_size.is_power_of_two();
        fixed.then_some(self.subgroup_min_size)
    }

    /// The narrowest subgroup to count loop iterations with: the fixed width where there is
    /// one, else at most 4 (GPUs have run below their reported minimum).
    pub fn narrowest_subgroup(&self) -> u32 {
        self.fixed_subgroup_width()
            .unwrap_or(self.subgroup_min_size.clamp(1, 4))
    }

    /// Invocations per workgroup the kernels may use: the device's limit, at most 1024, and
    /// what the workgroup memory of a reduction (4 bytes an invocation, plus 16) allows.
    fn workgroup_limit(&self) -> u32 {
        let by_memory = (self.max_workgroup_storage.saturating_sub(16) / 4).max(1);
        let limit = self.max_invocations.min(1024).min(by_memory).max(1);
        1 << (31 - limit.leading_zeros())
    }

    /// Bytes a storage binding may hold for the kernels: element indices are u32.
    pub(crate) fn binding_limit(&self) -> u64 {
        self.max_storage_binding
            .min(self.max_buffer_size)
            .min(u64::from(u32::MAX) & !15)
    }

    /// Bytes a binding may need beyond its data: the offset aligned down, the end rounded
    /// up to 16.
    pub(crate) fn binding_slack(&self) -> u64 {
        self.storage_offset_alignment + 16
    }
}

/// Which entry point of a kernel file a pipeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entry {
    /// `rms_norm`: one workgroup per row, x read twice.
    RmsNorm,
    /// `rms_norm_cached`: one workgroup per row, x read once.
    RmsNormCached,
    /// `layer_norm_cached`: the same for LayerNorm.
    LayerNormCached,
    /// `split_partials`: dispatch 1 of split rows.
    SplitPartials,
    /// `split_scale`: dispatch 2 of split rows.
    SplitScale,
    /// `layer_norm`.
    LayerNorm,
    /// `rms_norm_per_invocation`: one row per invocation, no reduction.
    RmsNormPerInvocation,
    /// `layer_norm_per_invocation`: the same for LayerNorm.
    LayerNormPerInvocation,
    /// `rms_norm_backward`: dx and the partial sums of dgain and dbias, one workgroup per row.
    RmsNormBackward,
    /// `layer_norm_backward`: the same for LayerNorm.
    LayerNormBackward,
    /// `weight_grads`: dgain and dbias from the backward's partial sums.
    WeightGrads,
    /// `backward_split_statistics`: the backward's split rows, dispatch 1 (each piece's
    /// statistics, where none were saved).
    BackwardSplitStatistics,
    /// `backward_split_sums`: dispatch 2 (each piece's sums for the correction).
    BackwardSplitSums,
    /// `backward_split_dx`: dispatch 3 (dx, and dgain and dbias into partial rows).
    BackwardSplitDx,
}

impl Entry {
    /// The WGSL function name.
    pub fn name(self) -> &'static str {
        match self {
            Entry::RmsNorm => "rms_norm",
            Entry::RmsNormCached => "rms_norm_cached",
            Entry::LayerNormCached => "layer_norm_cached",
            Entry::SplitPartials => "split_partials",
            Entry::SplitScale => "split_scale",
            Entry::LayerNorm => "layer_norm",
            Entry::RmsNormPerInvocation => "rms_norm_per_invocation",
            Entry::LayerNormPerInvocation => "layer_norm_per_invocation",
            Entry::RmsNormBackward => "rms_norm_backward",
            Entry::LayerNormBackward => "layer_norm_backward",
            Entry::WeightGrads => "weight_grads",
            Entry::BackwardSplitStatistics => "backward_split_statistics",
            Entry::BackwardSplitSums => "backward_split_sums",
            Entry::BackwardSplitDx => "backward_split_dx",
        }
    }

    /// Whether the entry point is one of a backward kernel.
    pub fn is_backward(self) -> bool {
        matches!(
            self,
            Entry::RmsNormBackward
                | Entry::LayerNormBackward
                | Entry::WeightGrads
                | Entry::BackwardSplitStatistics
                | Entry::BackwardSplitSums
                | Entry::BackwardSplitDx
        )
    }

    /// The entry point that does the same work one row per invocation, where there is one
    /// (the forward's whole rows).
    pub fn per_invocation(self) -> Option<Entry> {
        match self {
            Entry::RmsNorm | Entry::RmsNormPerInvocation => Some(Entry::RmsNormPerInvocation),
            Entry::LayerNorm | Entry::LayerNormPerInvocation => Some(Entry::LayerNormPerInvocation),
            _ => None,
        }
    }

    /// Whether the entry point is one of the backward's split rows.
    pub fn is_backward_split(self) -> bool {
        matches!(
            self,
            Entry::BackwardSplitStatistics | Entry::BackwardSplitSums | Entry::BackwardSplitDx
        )
    }
}

/// One compute pipeline of a plan: the entry point and the module's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StagePlan {
    /// The entry point.
    pub entry: Entry,
    /// The module: element layout, reduction, workgroup size, cache length.
    pub shape: ModuleShape,
}

/// The pipelines of one element layout: one stage, or two or three for split rows.
#[derive(Debug, Clone, PartialEq)]
pub struct LayoutPlan {
    /// The kernel for whole rows; `None` where no workgroup the device allows keeps a whole
    /// row within the iteration budget, so that every call splits its rows.
    pub rows: Option<StagePlan>,
    /// Split rows' stages (two for the forward, two or three for the backward), where this
    /// kernel splits rows.
    pub split: Option<Vec<StagePlan>>,
    /// One row per invocation, which calls of at least [`PER_INVOCATION_MIN_ROWS`] rows take
    /// instead of `rows` (CPU adapters' forward of short rows, where `Reduction::Auto`).
    pub alone: Option<StagePlan>,
    /// Backward with a gain or a bias: the pass that sums dgain and dbias over the
    /// partial sums of the row stage's workgroups.
    pub weight_grads: Option<StagePlan>,
}

impl LayoutPlan {
    /// The stage a call runs first by default: whole rows, else split rows' first.
    pub fn first_stage(&self) -> StagePlan {
        match (self.rows, self.split.as_ref().and_then(|s| s.first())) {
            (Some(rows), _) => rows,
            (None, Some(first)) => *first,
            // The planner makes one or the other.
            (None, None) => unreachable!("a layout plan has whole-row or split stages"),
        }
    }
}

/// Whether calls split few long rows across workgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitPolicy {
    /// Never.
    Never,
    /// Calls of at most [`SPLIT_MAX_ROWS`] rows of at least [`SPLIT_MIN_ROW_LOADS`] Elems.
    FewLongRows,
    /// Every call, in at least 8 pieces where the row allows.
    Always,
}

/// Which way a plan runs the normalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pass {
    /// y from x.
    Forward,
    /// dx, dgain and dbias from dy.
    Backward,
}

/// Everything decided once per kernel: what runs for each element layout, and the rules a
/// call's launch follows.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Which normalization.
    pub norm: Norm,
    /// Forward or backward.
    pub pass: Pass,
    /// Elements per row.
    pub hidden: u32,
    /// Leading elements in the RMS (`hidden` for RMSNorm and LayerNorm).
    pub k: u32,
    /// The tensors: storage formats, gain, bias and the residual add, as the scalar layout
    /// runs them. The vec4 layout binds the same tensors; its f16 storage may differ
    /// ([`Plan::io`]).
    pub io: TensorIo,
    /// The tensors as the vec4 layout runs them.
    vec4_io: TensorIo,
    /// The tensors as rows at any element run them.
    masked_io: TensorIo,
    /// Whether the device was treated as a CPU adapter.
    pub cpu: bool,
    /// vec4 loads, where `hidden` is a multiple of 4 (calls with such offsets use it).
    pub vec4: Option<LayoutPlan>,
    /// vec4 loads for rows at any element (`ElemLayout::Vec4Masked`): the forward, for
    /// calls the vec4 layout cannot take whose row tensors share a phase and whose bindings
    /// reach whole vec4s.
    pub masked: Option<LayoutPlan>,
    /// Scalar loads, for calls whose offsets rule out vec4; an error where such rows cannot
    /// run on this device (LayerNorm rows too long for any workgroup), returned by those
    /// calls' launch.
    pub scalar: Result<LayoutPlan>,
    /// When calls split rows (only where `split` stages exist).
    pub split_policy: SplitPolicy,
    /// At most this many workgroups per dispatch, each looping over rows (not split rows).
    pub max_workgroups: Option<u32>,
    /// The device's capabilities, for launches.
    pub caps: DeviceCaps,
}

/// One dispatch range of a call: rows that fit one binding and the iteration budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchChunk {
    /// The chunk's first row in the call.
    pub first_row: u64,
    /// Rows in the chunk.
    pub rows: u32,
    /// Workgroups dispatched (each stage).
    pub workgroups: u32,
    /// Bytes of split rows' values per row piece (the forward's two f32, the backward's
    /// four), 0 when not split.
    pub scratch_bytes: u64,
}

/// Everything decided for one call: element layout, split, dispatches.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// The element layout.
    pub elem: ElemLayout,
    /// The stages, in order: one, or split rows' two.
    pub stages: Vec<StagePlan>,
    /// Pieces per row when rows are split.
    pub split_pieces: Option<u32>,
    /// The dispatch ranges, in order; empty for a call of no rows.
    pub chunks: Vec<LaunchChunk>,
    /// Backward with a gain or a bias: the pass over the partial sums, and its workgroups.
    pub weight_grads: Option<(StagePlan, u32)>,
    /// Backward: partial rows of dgain (and as many of dbias): one per workgroup of the
    /// first chunk (whole rows), or per row of the first chunk (split rows); later chunks
    /// add into the same rows.
    pub(crate) partial_rows: u64,
}

impl Launch {
    /// Backward: the partial rows of dgain (and as many of dbias).
    pub fn partial_rows(&self) -> u64 {
        self.partial_rows
    }
}

/// Loop iterations one invocation may run in one dispatch, all loops together. llvmpipe
/// (lavapipe, and the GL backend on it) silently stops loops past 65535 iterations.
pub const LOOP_ITERATION_BUDGET: u64 = 32768;
/// Iterations per row the default workgroup size aims for, leaving room for many rows per
/// workgroup.
const ROW_ITERATION_TARGET: u64 = 8192;
/// Read once by default where each invocation keeps at most this many vec4 (32 f32).
const READ_ONCE_DEFAULT_MAX_VEC4: u32 = 8;
/// `read_once: Some(true)` keeps at most this many Elems per invocation.
pub const READ_ONCE_FORCED_MAX: u32 = 128;
/// Split rows: Elems per piece of a row.
pub const SPLIT_PIECE_LOADS: u32 = 2048;
/// Split rows by default: calls of at most this many rows ...
pub const SPLIT_MAX_ROWS: u32 = 32;
/// ... of at least this many Elems per row.
pub const SPLIT_MIN_ROW_LOADS: u32 = 8192;
/// CPU adapters: calls of at least this many rows of at most [`PER_INVOCATION_MAX_HIDDEN`]
/// elements take one row per invocation by default (fewer rows would leave SIMD lanes idle:
/// on SwiftShader one 4096-element row took 0.34 ms alone against 0.17 ms with the tree).
pub const PER_INVOCATION_MIN_ROWS: u32 = 32;
/// CPU adapters with subgroups (lavapipe): the longest rows one row per invocation takes by
/// default (65536 x 128 1.4x faster; at 4096 the single subgroup was ahead).
pub const PER_INVOCATION_MAX_HIDDEN: u32 = 256;
/// CPU adapters on the workgroup tree (SwiftShader, llvmpipe's GL): the same, where the
/// tree's barriers cost more (SwiftShader: 4096 x 1024 1.8x faster, 1024 x 4096 1.2x).
pub const PER_INVOCATION_MAX_HIDDEN_TREE: u32 = 4096;
/// CPU adapters with the workgroup tree or a row per invocation: workgroups per dispatch by
/// default.
const CPU_MAX_WORKGROUPS: u32 = 1024;
/// Backward on CPU adapters: workgroups per dispatch by default, each summing dgain and
/// dbias over its rows into a partial row (a few per core keep every core busy).
const BACKWARD_CPU_MAX_WORKGROUPS: u32 = 64;
/// Backward on GPUs: workgroups per dispatch by default (partial rows of dgain: 2 MiB per
/// 1024 elements of hidden size).
const BACKWARD_GPU_MAX_WORKGROUPS: u32 = 512;
pub use crate::shaders::BACKWARD_ROW_BLOCK;
/// GPUs: the fewest invocations per workgroup (two 32-wide SIMDs, one 64-wide), so that no
/// short row leaves most of a SIMD idle.
const GPU_MIN_WORKGROUP: u32 = 64;
/// GPUs: the most invocations per workgroup by default (about 16 elements each).
const GPU_MAX_WORKGROUP: u32 = 256;

/// Loop iterations of one invocation for one work item with `wg` invocations: a row of
/// `loads` Elems, or for the split stages one piece of `loads` Elems of a row cut in
/// `pieces`. The passes over the item, the loops of its two reductions (the tree's levels,
/// or the subgroup reduction's pass over the partials, at subgroups of `subgroup_min`), and
/// the loops' own overhead. llvmpipe stops every loop past 65535 iterations.
pub fn item_iterations(
    entry: Entry,
    reduction: ReductionKind,
    wg: u32,
    loads: u32,
    pieces: u32,
    subgroup_min: u32,
) -> u64 {
    let per_pass = u64::from(loads.div_ceil(wg));
    let passes = match entry {
        // The sum, the rescaled sum, the scaling.
        Entry::RmsNorm => 3 * per_pass,
        // The same over the whole row, which one invocation takes (a work item is a row per
        // invocation of the workgroup).
        Entry::RmsNormPerInvocation => 3 * u64::from(loads),
        Entry::LayerNormPerInvocation => 2 * u64::from(loads),
        Entry::RmsNormCached | Entry::LayerNormCached => 0,
        // The sum over the piece; out of range, the max and the scaled sum.
        Entry::SplitPartials => 3 * per_pass,
        // The scaling of the piece, after two passes over the row's pieces.
        Entry::SplitScale => per_pass + 2 * u64::from(pieces.div_ceil(wg)),
        Entry::LayerNorm => 2 * per_pass,
        // Per block of rows, for each at most: the statistics with the correction's sums
        // where they are recomputed, for a row out of range the forward's two passes and the
        // correction's own, dx's pass; and the block's loops over its rows.
        Entry::RmsNormBackward | Entry::LayerNormBackward => {
            u64::from(BACKWARD_ROW_BLOCK) * (5 * per_pass + 2)
        }
        // One pass over the partial rows per Elem; planned apart (`weight_grads_workgroups`).
        Entry::WeightGrads => per_pass,
        // The backward's split rows: the piece's statistics (the forward's split_partials'
        // three passes); then, after two passes over the row's pieces (its statistics), the
        // sums over the piece; then the same two, one or two more (the sums), and dx.
        Entry::BackwardSplitStatistics => 3 * per_pass,
        Entry::BackwardSplitSums => per_pass + 2 * u64::from(pieces.div_ceil(wg)),
        Entry::BackwardSplitDx => per_pass + 4 * u64::from(pieces.div_ceil(wg)),
    };
    let per_reduction = match reduction {
        ReductionKind::WorkgroupTree => u64::from(wg.trailing_zeros()),
        ReductionKind::Subgroups => u64::from(wg.div_ceil(subgroup_min.max(1))),
        ReductionKind::SingleSubgroup | ReductionKind::PerInvocation => 0,
    };
    // Two reductions at most; three in split_partials out of range (sum, max, sum), four in
    // the backward (the statistics', the correction's).
    let reductions = match entry {
        Entry::SplitPartials => 3,
        Entry::RmsNormBackward | Entry::LayerNormBackward => 5 * u64::from(BACKWARD_ROW_BLOCK),
        Entry::BackwardSplitStatistics => 3,
        Entry::BackwardSplitSums | Entry::BackwardSplitDx => 4,
        _ => 2,
    };
    passes + reductions * per_reduction + 3
}

/// Pieces of a split row of `loads` Elems: pieces of [`SPLIT_PIECE_LOADS`], at least 2, and
/// at least 8 where every call splits.
fn split_piece_count(loads: u32, policy: SplitPolicy) -> u32 {
    let pieces = loads.div_ceil(SPLIT_PIECE_LOADS).max(2.min(loads));
    match policy {
        SplitPolicy::Always => pieces.max(8.min(loads)),
        _ => pieces,
    }
}

impl Plan {
    /// Plans `norm`'s forward for `config` on a device with `caps`, honouring `options` or
    /// refusing them with a typed error.
    pub fn new(
        caps: &DeviceCaps,
        norm: Norm,
        config: &RmsNormConfig,
        options: &KernelOptions,
    ) -> Result<Self> {
        Self::for_pass(caps, norm, Pass::Forward, config, options)
    }

    /// Plans `norm`'s forward or backward. The backward reads x and dy twice (never once: no
    /// read-once variant), runs at most [`BACKWARD_CPU_MAX_WORKGROUPS`] or
    /// [`BACKWARD_GPU_MAX_WORKGROUPS`] workgroups per dispatch by default, each summing
    /// dgain and dbias over its blocks of rows, and splits few long rows as the forward does
    /// (LayerNorm's backward too). Where the forward saved statistics the backward reads them
    /// (8 or 12 bytes per row, always cheaper than recomputing them from the row).
    pub fn for_pass(
        caps: &DeviceCaps,
        norm: Norm,
        pass: Pass,
        config: &RmsNormConfig,
        options: &KernelOptions,
    ) -> Result<Self> {
        config.validate()?;
        let k = config.rms_count()?;
        let cpu = options
            .cpu_adapter
            .unwrap_or(caps.device_type == wgpu::DeviceType::Cpu);
        let io = tensor_io(caps, config, options, ElemLayout::Scalar, cpu, pass)?;
        let vec4_io = tensor_io(caps, config, options, ElemLayout::Vec4, cpu, pass)?;
        let masked_io = tensor_io(caps, config, options, ElemLayout::Vec4Masked, cpu, pass)?;
        check_storage_buffers(caps, pass, &io)?;
        // A row of activations, or the gain or bias, in one binding.
        let element_bytes = config.dtype.bytes().max(config.weight_dtype.bytes());
        let row_bytes = u64::from(config.hidden) * element_bytes + caps.binding_slack();
        if row_bytes > caps.binding_limit() {
            return Err(Error::RowExceedsBindingLimit {
                hidden: config.hidden,
                row_bytes,
                limit: caps.binding_limit(),
            });
        }
        let split_policy = split_policy(caps, pass, &io, config.hidden, options)?;
        let planner = LayoutPlanner {
            caps,
            norm,
            pass,
            options,
            cpu,
            split: split_policy,
            io,
            vec4_io,
            masked_io,
            hidden: config.hidden,
        };
        // Bindings start at multiples of the offset alignment, which must hold whole vec4s.
        let masked = (pass == Pass::Forward && caps.storage_offset_alignment.is_multiple_of(16))
            .then(|| {
                planner.plan(
                    ElemLayout::Vec4Masked,
                    row_loads(ElemLayout::Vec4Masked, config.hidden),
                )
            })
            .and_then(Result::ok);
        let vec4 = config
            .hidden
            .is_multiple_of(4)
            .then(|| planner.plan(ElemLayout::Vec4, config.hidden / 4))
            .transpose()?;
        let scalar = planner.plan(ElemLayout::Scalar, config.hidden);
        let primary = match (&scalar, &vec4) {
            (Ok(layout), _) | (Err(_), Some(layout)) => layout.first_stage(),
            (Err(e), None) => return Err(e.clone()),
        };
        // CPU adapters pay for each workgroup: where nothing but the row loop needs many
        // (the tree's barriers, a row per invocation) fewer loop over more rows.
        let alone = vec4
            .iter()
            .chain(&masked)
            .chain(scalar.as_ref().ok())
            .any(|layout| layout.alone.is_some());
        let few_workgroups = alone
            || matches!(
                primary.shape.reduction,
                ReductionKind::WorkgroupTree | ReductionKind::PerInvocation
            );
        let default_cap = match (pass, cpu) {
            (Pass::Backward, true) => Some(BACKWARD_CPU_MAX_WORKGROUPS),
            (Pass::Backward, false) => Some(BACKWARD_GPU_MAX_WORKGROUPS),
            (Pass::Forward, _) => (cpu && few_workgroups).then_some(CPU_MAX_WORKGROUPS),
        };
        Ok(Self {
            norm,
            pass,
            hidden: config.hidden,
            k,
            io,
            vec4_io,
            masked_io,
            cpu,
            vec4,
            masked,
            scalar,
            split_policy,
            max_workgroups: options.max_workgroups.map(|cap| cap.max(1)).or(default_cap),
            caps: caps.clone(),
        })
    }

    /// The tensors as rows of `elem` run them (f16 storage may differ between layouts).
    pub fn io(&self, elem: ElemLayout) -> TensorIo {
        match elem {
            ElemLayout::Vec4 => self.vec4_io,
            ElemLayout::Scalar => self.io,
            ElemLayout::Vec4Masked => self.masked_io,
        }
    }

    /// Every pipeline this plan can run.
    pub fn stages(&self) -> Vec<StagePlan> {
        let mut stages = Vec::new();
        for layout in self
            .vec4
            .iter()
            .chain(&self.masked)
            .chain(self.scalar.as_ref().ok())
        {
            stages.extend(layout.rows);
            stages.extend(layout.alone);
            stages.extend(layout.split.iter().flatten());
            stages.extend(layout.weight_grads);
        }
        stages
    }

    /// The stage of scalar whole rows where there is one, else the first of another layout:
    /// what `reduction()` and `workgroup_size()` report.
    pub fn primary_stage(&self) -> StagePlan {
        match (&self.scalar, &self.vec4) {
            (Ok(layout), _) | (Err(_), Some(layout)) => layout.first_stage(),
            (Err(_), None) => unreachable!("Plan::new refuses a plan with no layout"),
        }
    }

    /// Plans a call of `rows` rows. `offsets`: what the call's buffer offsets allow (vec4
    /// loads need every offset a multiple of 4 elements as well as `hidden % 4 == 0`; rows at
    /// any element need x, y, r and the sum at one phase and bindings that reach whole
    /// groups of four elements).
    pub fn launch(&self, rows: u32, offsets: WideOffsets) -> Result<Launch> {
        let (elem, layout) = match (&self.vec4, &self.masked) {
            (Some(layout), _) if offsets.aligned => (ElemLayout::Vec4, layout),
            (_, Some(layout)) if offsets.same_phase => (ElemLayout::Vec4Masked, layout),
            _ => (
                ElemLayout::Scalar,
                self.scalar.as_ref().map_err(Clone::clone)?,
            ),
        };
        let row_len = row_loads(elem, self.hidden);
        // Split where the layout has no whole-row stage, else by the policy.
        let pieces = match (layout.rows, &layout.split) {
            (None, Some(_)) => Some(split_piece_count(row_len, self.split_policy)),
            (Some(_), Some(_)) => self.split_pieces(rows, row_len),
            _ => None,
        };
        let stages: Vec<StagePlan> = match (pieces, &layout.split, layout.alone) {
            (Some(_), Some(split), _) => split.clone(),
            (None, _, Some(alone)) if rows >= PER_INVOCATION_MIN_ROWS => vec![alone],
            _ => vec![layout.first_stage()],
        };
        let per_item = self.item_iterations(&stages, row_len, pieces);
        // The backward's work item is a block of rows (whole rows).
        let rows_per_item = match (self.pass, pieces) {
            (Pass::Backward, None) => u64::from(BACKWARD_ROW_BLOCK),
            // A row per invocation.
            (_, None) if stages[0].shape.reduction == ReductionKind::PerInvocation => {
                u64::from(stages[0].shape.workgroup_size)
            }
            _ => 1,
        };
        // Split rows' words per piece: RMSNorm's sum and exponent, LayerNorm's mean, sum of
        // squared deviations and shift, the backward's four.
        let piece_bytes = match (self.pass, self.norm) {
            (Pass::Forward, Norm::Rms) => 8,
            (Pass::Forward, Norm::Layer) => 12,
            (Pass::Backward, _) => 16,
        };
        let rows_per_chunk = self.rows_per_chunk(per_item, pieces, rows_per_item)?;
        let mut chunks: Vec<LaunchChunk> = Vec::new();
        let mut first_row = 0u64;
        while first_row < u64::from(rows) {
            let chunk_rows = rows_per_chunk.min(u64::from(rows) - first_row) as u32;
            let items =
                u64::from(chunk_rows).div_ceil(rows_per_item) * u64::from(pieces.unwrap_or(1));
            let workgroups = self.workgroups(items, per_item, pieces.is_some());
            chunks.push(LaunchChunk {
                first_row,
                rows: chunk_rows,
                workgroups,
                scratch_bytes: pieces.map_or(0, |_| items * piece_bytes),
            });
            first_row += u64::from(chunk_rows);
        }
        let partial_rows = chunks.first().map_or(0, |c| match pieces {
            Some(_) => u64::from(c.rows),
            None => u64::from(c.workgroups),
        });
        let weight_grads = match layout.weight_grads {
            Some(stage) if !chunks.is_empty() => Some((
                stage,
                self.weight_grads_workgroups(stage, row_len, partial_rows)?,
            )),
            _ => None,
        };
        Ok(Launch {
            elem,
            stages,
            split_pieces: pieces,
            chunks,
            weight_grads,
            partial_rows,
        })
    }

    /// Workgroups of the backward's `weight_grads` for `partial_rows` partial rows of
    /// `row_len` Elems: each invocation adds the partial rows of its Elems, within the
    /// iteration budget; the partial sums in one binding.
    fn weight_grads_workgroups(
        &self,
        stage: StagePlan,
        row_len: u32,
        partial_rows: u64,
    ) -> Result<u32> {
        let wg = u64::from(stage.shape.workgroup_size);
        let groups = u64::from(row_len)
            .div_ceil(wg)
            .min(u64::from(self.caps.max_workgroups_per_dimension));
        // dgain's and dbias's loops, each over the partial rows, per Elem.
        let weights = (u64::from(self.io.gain) + u64::from(self.io.bias)).max(1);
        let iterations = u64::from(row_len).div_ceil(groups * wg) * (weights * partial_rows + 1);
        let bytes = partial_rows * weights * u64::from(self.hidden) * 4;
        if iterations > LOOP_ITERATION_BUDGET || bytes > self.caps.binding_limit() {
            return Err(Error::RowTooLong {
                hidden: self.hidden,
                reason: format!(
                    "the backward's {partial_rows} partial rows of dgain and dbias would \
                     loop past the {LOOP_ITERATION_BUDGET} iterations every adapter runs \
                     correctly or exceed one binding: pass a smaller max_workgroups, or \
                     fewer rows per call"
                ),
            });
        }
        Ok(groups as u32)
    }

    /// Pieces per row when a call of `rows` rows of `row_len` Elems splits them by the
    /// policy.
    fn split_pieces(&self, rows: u32, row_len: u32) -> Option<u32> {
        let wanted = match self.split_policy {
            SplitPolicy::Never => false,
            SplitPolicy::Always => true,
            SplitPolicy::FewLongRows => rows <= SPLIT_MAX_ROWS && row_len >= SPLIT_MIN_ROW_LOADS,
        };
        let pieces = split_piece_count(row_len, self.split_policy);
        (wanted && pieces >= 2).then_some(pieces)
    }

    /// Loop iterations of one invocation per work item (a row, or a piece of one).
    fn item_iterations(&self, stages: &[StagePlan], row_len: u32, pieces: Option<u32>) -> u64 {
        let pieces = pieces.unwrap_or(1);
        let loads = row_len.div_ceil(pieces);
        stages
            .iter()
            .map(|stage| {
                let shape = stage.shape;
                item_iterations(
                    stage.entry,
                    shape.reduction,
                    shape.workgroup_size,
                    loads,
                    pieces,
                    self.caps.narrowest_subgroup(),
                )
            })
            .max()
            .unwrap_or(1)
    }

    /// Rows per dispatch: within one binding (x, y, and split rows' partial sums) and within
    /// the iteration budget at the device's most workgroups per dispatch.
    fn rows_per_chunk(
        &self,
        per_item: u64,
        pieces: Option<u32>,
        rows_per_item: u64,
    ) -> Result<u64> {
        let caps = &self.caps;
        let row_bytes = u64::from(self.hidden) * self.io.activations.element_bytes();
        let mut rows = (caps.binding_limit() - caps.binding_slack()) / row_bytes;
        let split = pieces.is_some();
        let pieces = u64::from(pieces.unwrap_or(1));
        if split {
            rows = rows.min(caps.binding_limit() / (pieces * 16));
            // The backward's partial rows are the first chunk's rows: at most the few rows
            // split rows are for, and what fits one binding.
            if self.pass == Pass::Backward {
                let cap = self.workgroup_cap().unwrap_or(SPLIT_MAX_ROWS);
                rows = rows.min(u64::from(cap.min(SPLIT_MAX_ROWS)));
            }
        }
        let items_per_workgroup = (LOOP_ITERATION_BUDGET / per_item).max(1);
        // The backward keeps every chunk within the workgroup cap (its partial rows are as
        // many as the first chunk's workgroups), taking more chunks instead.
        // (Split rows take a workgroup per piece.)
        let workgroups = match (self.pass, split) {
            (Pass::Forward, _) | (Pass::Backward, true) => caps.max_workgroups_per_dimension,
            (Pass::Backward, false) => self
                .workgroup_cap()
                .unwrap_or(caps.max_workgroups_per_dimension)
                .min(caps.max_workgroups_per_dimension),
        };
        let items = u64::from(workgroups) * items_per_workgroup;
        // Each chunk's item count stays a u32 for the shader.
        let items = items.min(u64::from(u32::MAX));
        if items < pieces {
            return Err(Error::RowTooLong {
                hidden: self.hidden,
                reason: format!(
                    "its {pieces} pieces need more workgroups than one dispatch has ({}) \
                     within the loop budget",
                    caps.max_workgroups_per_dimension
                ),
            });
        }
        Ok(rows.min(items / pieces * rows_per_item).max(1))
    }

    /// The most workgroups per dispatch: the option or the default, and for the backward no
    /// more partial rows (one per workgroup) than fit one binding.
    fn workgroup_cap(&self) -> Option<u32> {
        match self.pass {
            Pass::Forward => self.max_workgroups,
            Pass::Backward => {
                let weights = u64::from(self.io.gain) + u64::from(self.io.bias);
                let row_bytes = weights.max(1) * u64::from(self.hidden) * 4;
                let fit = (self.caps.binding_limit() / row_bytes).clamp(1, u64::from(u32::MAX));
                self.max_workgroups.map(|cap| cap.min(fit as u32))
            }
        }
    }

    /// Workgroups for `items` rows (or pieces): one each up to the device's limit, fewer
    /// where a cap asks, never so few that an invocation loops past the budget.
    fn workgroups(&self, items: u64, per_item: u64, split: bool) -> u32 {
        let limit = u64::from(self.caps.max_workgroups_per_dimension);
        let needed = items.div_ceil((LOOP_ITERATION_BUDGET / per_item).max(1));
        let wanted = match (self.workgroup_cap(), split) {
            (Some(cap), false) => u64::from(cap).max(needed),
            _ => items,
        };
        wanted.min(items).min(limit).max(1) as u32
    }

    /// What a launch runs, e.g. "Subgroups wg=256 vec4 read-once" or
    /// "split x128 Subgroups wg=256 scalar": for reports.
    pub fn variant_name(&self, launch: &Launch) -> String {
        let stage = launch.stages[0];
        let reduction = public_reduction(stage.shape.reduction);
        let loads = match launch.elem {
            ElemLayout::Vec4 => "vec4",
            ElemLayout::Scalar => "scalar",
            ElemLayout::Vec4Masked => "vec4 masked edges",
        };
        let wg = stage.shape.workgroup_size;
        let pass = match self.pass {
            Pass::Forward => "",
            Pass::Backward => "backward ",
        };
        let stats = match self.io.stats {
            StatsIo::Load => " saved stats",
            _ => " recomputed stats",
        };
        let name = match launch.split_pieces {
            Some(pieces) if self.pass == Pass::Backward => {
                format!("{pass}split x{pieces} {reduction:?} wg={wg} {loads}{stats}")
            }
            Some(pieces) => format!("split x{pieces} {reduction:?} wg={wg} {loads}"),
            None if matches!(stage.entry, Entry::RmsNormCached | Entry::LayerNormCached) => {
                format!("{reduction:?} wg={wg} {loads} read-once")
            }
            None if self.pass == Pass::Backward => {
                format!("{pass}{reduction:?} wg={wg} {loads}{stats}")
            }
            None => format!("{reduction:?} wg={wg} {loads}"),
        };
        let storage = match stage.shape.io.activations {
            Storage::F32 => "",
            Storage::F16 => " f16",
            Storage::PackedF16 => " packed-f16",
            Storage::PackedBf16 => " packed-bf16",
        };
        let residual = match self.io.residual {
            ResidualIo::None => "",
            _ => " +residual",
        };
        format!("{name}{storage}{residual}")
    }
}

/// The storage buffers a pass of these tensors binds, within the device's limit.
fn check_storage_buffers(caps: &DeviceCaps, pass: Pass, io: &TensorIo) -> Result<()> {
    let needed = match pass {
        Pass::Forward => io.storage_buffers(),
        Pass::Backward => io.backward_storage_buffers(),
    };
    if caps.max_storage_buffers_per_stage >= needed {
        return Ok(());
    }
    let (tensors, fix) = match pass {
        Pass::Forward => (
            "x, y, gain, bias, residual, sum, statistics",
            "drop the bias, the stored sum or the saved statistics, or run the residual add as \
             a kernel of its own before the normalization",
        ),
        Pass::Backward => (
            "x, dy, dx, gain, residual or the gradient of the sum, statistics, the partial sums \
             of dgain and dbias",
            "drop the residual add or the saved statistics (recomputed then), or the gain and \
             bias",
        ),
    };
    Err(Error::TooManyStorageBuffers {
        tensors,
        fix,
        needed,
        limit: caps.max_storage_buffers_per_stage,
    })
}

/// The public name of a reduction.
pub(crate) fn public_reduction(kind: ReductionKind) -> Reduction {
    match kind {
        ReductionKind::WorkgroupTree => Reduction::WorkgroupTree,
        ReductionKind::Subgroups => Reduction::Subgroups,
        ReductionKind::SingleSubgroup => Reduction::SingleSubgroup,
        ReductionKind::PerInvocation => Reduction::PerInvocation,
    }
}

/// The storage formats and tensors of `config` in `elem` rows on a device with `caps`
/// (`options.native_f16` decides f16 where it is set). f16 is WGSL's type where the device
/// has it, except in vec4 rows (aligned or with masked edges) on CPU adapters: lavapipe
/// converts vec4<f16> slowly (RMSNorm on 4096 x 4096 f16: 90 ms with the type, 48 ms with
/// packed words; 1024 x 4097 with masked edges: 23 ms against 14), while in scalar rows
/// (tensors at different phases) the type saves the packed words' atomics on every element
/// (64 x 4097 in scalar rows: 1.8 ms against 4.7 ms). bf16 is always packed, and so is f16
/// where the device lacks the type.
fn tensor_io(
    caps: &DeviceCaps,
    config: &RmsNormConfig,
    options: &KernelOptions,
    elem: ElemLayout,
    cpu: bool,
    pass: Pass,
) -> Result<TensorIo> {
    let has_f16 = config.dtype == DType::F16 || config.weight_dtype == DType::F16;
    let native_f16 = match options.native_f16 {
        Some(true) if has_f16 && !caps.shader_f16 => {
            return Err(Error::UnsupportedOption {
                option: "native_f16",
                reason: "WGSL's f16 type needs Features::SHADER_F16, which this device lacks: \
                         pass None or Some(false) (packed f16 runs on every device)"
                    .to_string(),
            })
        }
        Some(native) => native,
        None => caps.shader_f16 && !(cpu && elem != ElemLayout::Scalar),
    };
    let storage = |dtype: DType| match dtype {
        DType::F32 => Storage::F32,
        DType::F16 if native_f16 => Storage::F16,
        DType::F16 => Storage::PackedF16,
        DType::Bf16 => Storage::PackedBf16,
    };
    let io = TensorIo {
        activations: storage(config.dtype),
        weights: storage(config.weight_dtype),
        gain: config.gain != crate::config::Gain::None,
        bias: config.bias,
        residual: match config.residual {
            Residual::None => ResidualIo::None,
            Residual::Add => ResidualIo::Add,
            Residual::AddStoreSum => ResidualIo::StoreSum,
            Residual::AddStoreSumInPlace => ResidualIo::StoreSumInPlace,
        },
        stats: if config.save_stats {
            StatsIo::Store
        } else {
            StatsIo::None
        },
        grad_sum: false,
    };
    Ok(match pass {
        Pass::Forward => io,
        Pass::Backward => io.backward(),
    })
}

/// Whether (and when) this kernel splits rows.
fn split_policy(
    caps: &DeviceCaps,
    pass: Pass,
    io: &TensorIo,
    hidden: u32,
    options: &KernelOptions,
) -> Result<SplitPolicy> {
    // Split rows bind their values per piece besides the tensors.
    let split_buffers = match pass {
        Pass::Forward => io.storage_buffers(),
        Pass::Backward => io.backward_storage_buffers(),
    } + 1;
    let fits = caps.max_storage_buffers_per_stage >= split_buffers;
    match options.split_rows {
        Some(false) => Ok(SplitPolicy::Never),
        Some(true) if fits => Ok(SplitPolicy::Always),
        Some(true) => Err(Error::UnsupportedOption {
            option: "split_rows",
            reason: format!(
                "split rows bind {split_buffers} storage buffers and this device allows \
                 {} per shader stage: pass None or Some(false)",
                caps.max_storage_buffers_per_stage
            ),
        }),
        // One row per invocation, when asked for, takes whole rows only.
        None if options.reduction == Reduction::PerInvocation => Ok(SplitPolicy::Never),
        None if fits && hidden >= SPLIT_MIN_ROW_LOADS * 4 => Ok(SplitPolicy::FewLongRows),
        None => Ok(SplitPolicy::Never),
    }
}

/// Plans the pipelines of one element layout.
struct LayoutPlanner<'a> {
    caps: &'a DeviceCaps,
    norm: Norm,
    pass: Pass,
    options: &'a KernelOptions,
    cpu: bool,
    split: SplitPolicy,
    io: TensorIo,
    vec4_io: TensorIo,
    masked_io: TensorIo,
    /// Elements per row.
    hidden: u32,
}

/// What a stage computes per work item, for the iteration budget: its entry points, the
/// Elems of one item, and the pieces of a split row.
#[derive(Clone, Copy)]
struct Work<'e> {
    entries: &'e [Entry],
    loads: u32,
    pieces: u32,
}

impl LayoutPlanner<'_> {
    fn io_of(&self, elem: ElemLayout) -> TensorIo {
        match elem {
            ElemLayout::Vec4 => self.vec4_io,
            ElemLayout::Scalar => self.io,
            ElemLayout::Vec4Masked => self.masked_io,
        }
    }

    fn plan(&self, elem: ElemLayout, loads: u32) -> Result<LayoutPlan> {
        let entry = match (self.norm, self.pass) {
            (Norm::Rms, Pass::Forward) => Entry::RmsNorm,
            (Norm::Layer, Pass::Forward) => Entry::LayerNorm,
            (Norm::Rms, Pass::Backward) => Entry::RmsNormBackward,
            (Norm::Layer, Pass::Backward) => Entry::LayerNormBackward,
        };
        let split = match self.split {
            SplitPolicy::Never => None,
            policy => Some(self.split_stages(elem, loads, policy)?),
        };
        let work = Work {
            entries: &[entry],
            loads,
            pieces: 1,
        };
        let rows = match (self.reduction(elem, work)?, &split) {
            (Some((reduction, workgroup_size)), _) => {
                let entry = match reduction {
                    ReductionKind::PerInvocation => entry.per_invocation().unwrap_or(entry),
                    _ => entry,
                };
                let shape = ModuleShape {
                    elem,
                    reduction,
                    workgroup_size,
                    cache_len: 1,
                    io: self.io_of(elem),
                };
                Some(
                    match self.read_once(elem, loads, reduction, workgroup_size)? {
                        Some((workgroup_size, cache_len)) => StagePlan {
                            entry: match self.norm {
                                Norm::Rms => Entry::RmsNormCached,
                                Norm::Layer => Entry::LayerNormCached,
                            },
                            shape: ModuleShape {
                                workgroup_size,
                                cache_len,
                                ..shape
                            },
                        },
                        None => StagePlan { entry, shape },
                    },
                )
            }
            // No workgroup keeps a whole row within the budget: every call splits.
            (None, Some(_)) => None,
            (None, None) => {
                return Err(Error::RowTooLong {
                    hidden: loads * lanes(elem),
                    reason: format!(
                        "{} invocations per workgroup would each loop past the {} iterations \
                         that every adapter runs correctly, and split_rows is off or this \
                         device cannot split",
                        self.caps.workgroup_limit(),
                        LOOP_ITERATION_BUDGET,
                    ),
                })
            }
        };
        let tree = rows.is_some_and(|r| r.shape.reduction == ReductionKind::WorkgroupTree);
        let alone = match (self.pass, rows) {
            (Pass::Forward, Some(_)) => self.alone_stage(elem, work, tree),
            _ => None,
        };
        let io = self.io_of(elem);
        let any_stage = rows.or_else(|| split.as_ref().map(|stages| stages[0]));
        let weight_grads = match any_stage {
            Some(stage) if self.pass == Pass::Backward && (io.gain || io.bias) => Some(StagePlan {
                entry: Entry::WeightGrads,
                shape: stage.shape,
            }),
            _ => None,
        };
        Ok(LayoutPlan {
            rows,
            split,
            alone,
            weight_grads,
        })
    }

    /// Split rows' stages, sized for one piece of a row, not for the row: the forward's two,
    /// the backward's three (two where the statistics were saved).
    fn split_stages(
        &self,
        elem: ElemLayout,
        loads: u32,
        policy: SplitPolicy,
    ) -> Result<Vec<StagePlan>> {
        let entries: &[Entry] = match (self.pass, self.io.stats) {
            (Pass::Forward, _) => &[Entry::SplitPartials, Entry::SplitScale],
            (Pass::Backward, StatsIo::Load) => &[Entry::BackwardSplitSums, Entry::BackwardSplitDx],
            (Pass::Backward, _) => &[
                Entry::BackwardSplitStatistics,
                Entry::BackwardSplitSums,
                Entry::BackwardSplitDx,
            ],
        };
        let work = Work {
            entries,
            loads: SPLIT_PIECE_LOADS.min(loads),
            pieces: split_piece_count(loads, policy),
        };
        let (reduction, workgroup_size) =
            self.reduction(elem, work)?
                .ok_or_else(|| Error::RowTooLong {
                    hidden: loads * lanes(elem),
                    reason: format!(
                        "even split into {} pieces its rows would loop past the {} iterations \
                         that every adapter runs correctly",
                        work.pieces, LOOP_ITERATION_BUDGET
                    ),
                })?;
        let shape = ModuleShape {
            elem,
            reduction,
            workgroup_size,
            cache_len: 1,
            io: self.io_of(elem),
        };
        Ok(entries
            .iter()
            .map(|&entry| StagePlan { entry, shape })
            .collect())
    }

    /// Loop iterations per invocation of `work` with `wg` invocations and `reduction`.
    fn iterations(&self, work: Work<'_>, reduction: ReductionKind, wg: u32) -> u64 {
        work.entries
            .iter()
            .map(|&entry| {
                let min = self.caps.narrowest_subgroup();
                let entry = match (reduction, entry.per_invocation()) {
                    (ReductionKind::PerInvocation, Some(alone)) => alone,
                    _ => entry,
                };
                item_iterations(entry, reduction, wg, work.loads, work.pieces, min)
            })
            .max()
            .unwrap_or(0)
    }

    /// The reduction and workgroup size for `work`; `None` where the size is the plan's to
    /// choose and none the device allows keeps an invocation within the iteration budget.
    fn reduction(&self, elem: ElemLayout, work: Work<'_>) -> Result<Option<(ReductionKind, u32)>> {
        let caps = self.caps;
        let limit = caps.workgroup_limit();
        let forced = self.options.workgroup_size;
        // The fewest invocations that keep an item near the iteration target (its passes).
        let row_minimum = min_power_of_two(
            |wg| self.iterations(work, ReductionKind::SingleSubgroup, wg) <= ROW_ITERATION_TARGET,
            limit,
        )
        .unwrap_or(limit);
        let fixed = caps.fixed_subgroup_width();
        let reduction = match self.options.reduction {
            Reduction::Auto => match fixed {
                Some(width)
                    if self.cpu && row_minimum <= width && forced.is_none_or(|s| s <= width) =>
                {
                    ReductionKind::SingleSubgroup
                }
                _ if caps.subgroups => ReductionKind::Subgroups,
                _ => ReductionKind::WorkgroupTree,
            },
            Reduction::WorkgroupTree => ReductionKind::WorkgroupTree,
            Reduction::Subgroups => ReductionKind::Subgroups,
            Reduction::SingleSubgroup => ReductionKind::SingleSubgroup,
            Reduction::PerInvocation => ReductionKind::PerInvocation,
        };
        let whole_rows = work.entries.iter().all(|e| e.per_invocation().is_some());
        if reduction == ReductionKind::PerInvocation && !whole_rows {
            return Err(Error::UnsupportedOption {
                option: "Reduction::PerInvocation",
                reason: "one row per invocation runs the forward of whole rows, not the \
                         backward or split rows: pass Auto or another reduction (and \
                         split_rows None or Some(false))"
                    .into(),
            });
        }
        if reduction.uses_subgroups() && !caps.subgroups {
            let name = match reduction {
                ReductionKind::SingleSubgroup => "SingleSubgroup",
                _ => "Subgroups",
            };
            return Err(Error::SubgroupsUnsupported { reduction: name });
        }
        let size = match (reduction, forced, fixed) {
            (_, Some(size), _) => size,
            (ReductionKind::SingleSubgroup, None, Some(width)) => width,
            (ReductionKind::SingleSubgroup, None, None) => 0,
            // No reduction: one SIMD width's rows side by side (CPU adapters), or two
            // 32-wide SIMDs' (a GPU, where it is only ever asked for).
            (ReductionKind::PerInvocation, None, _) => self.per_invocation_workgroup(),
            (_, None, _) if self.cpu => cpu_floor(caps).max(row_minimum).min(limit),
            // GPUs: about 16 elements per invocation.
            (_, None, _) => (work.loads * lanes(elem))
                .div_ceil(16)
                .next_power_of_two()
                .clamp(GPU_MIN_WORKGROUP, GPU_MAX_WORKGROUP)
                .max(row_minimum)
                .min(limit),
        };
        // Sizes the plan chose may give way to split rows; a single subgroup's and one row
        // per invocation's are fixed, so past the budget they are refused.
        let chosen = forced.is_none()
            && !matches!(
                reduction,
                ReductionKind::SingleSubgroup | ReductionKind::PerInvocation
            );
        if chosen && self.iterations(work, reduction, size) > LOOP_ITERATION_BUDGET {
            return Ok(None);
        }
        self.check_workgroup(work, reduction, size)?;
        Ok(Some((reduction, size)))
    }

    /// Refuses a workgroup size the device or the kernel cannot run correctly.
    fn check_workgroup(&self, work: Work<'_>, reduction: ReductionKind, size: u32) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidWorkgroupSize { size, reason });
        let limit = self.caps.workgroup_limit();
        if reduction == ReductionKind::SingleSubgroup {
            match self.caps.fixed_subgroup_width() {
                None => {
                    return Err(Error::UnsupportedOption {
                        option: "Reduction::SingleSubgroup",
                        reason: "it is correct only where every subgroup is known to hold the \
                                 whole workgroup, and this adapter's subgroup width is not \
                                 fixed (or it is a GPU, whose reported minimum has been \
                                 wrong): use Reduction::Subgroups or Auto"
                            .into(),
                    })
                }
                Some(width) if size > width => {
                    return invalid(format!(
                        "Reduction::SingleSubgroup needs the workgroup to fit in one subgroup \
                         of {width}: pass at most {width} or None"
                    ))
                }
                Some(_) => {}
            }
        }
        if size == 0 || !size.is_power_of_two() {
            return invalid("it must be a power of two, e.g. 64 or 256".into());
        }
        if size > limit {
            return invalid(format!(
                "this device allows at most {limit} invocations per workgroup \
                 (max_compute_invocations_per_workgroup, max_compute_workgroup_size_x, \
                 4 bytes of workgroup memory each)"
            ));
        }
        let iterations = self.iterations(work, reduction, size);
        if iterations > LOOP_ITERATION_BUDGET && reduction == ReductionKind::PerInvocation {
            return invalid(format!(
                "rows of {} loads would loop {iterations} times in the one invocation that \
                 takes each, past the {LOOP_ITERATION_BUDGET} that every adapter runs \
                 correctly: use Reduction::Auto or another reduction",
                work.loads
            ));
        }
        if iterations > LOOP_ITERATION_BUDGET {
            let needed = min_power_of_two(
                |wg| self.iterations(work, reduction, wg) <= LOOP_ITERATION_BUDGET,
                limit,
            );
            let advice = match needed {
                Some(wg) => format!("use at least {wg} invocations, or split rows"),
                None => "split rows".into(),
            };
            return invalid(format!(
                "items of {} loads would loop {iterations} times per invocation, past the \
                 {LOOP_ITERATION_BUDGET} that every adapter runs correctly: {advice}",
                work.loads
            ));
        }
        Ok(())
    }

    /// One row per invocation beside the workgroup stage, for calls of many rows: the
    /// forward of whole rows on a CPU adapter with `Reduction::Auto` and no option asking for
    /// what it does not do (a workgroup size, read-once, split rows), rows of at most
    /// [`PER_INVOCATION_MAX_HIDDEN`] elements, or [`PER_INVOCATION_MAX_HIDDEN_TREE`] where
    /// the workgroup stage would be the tree (its barriers cost most there), within the
    /// iteration budget.
    fn alone_stage(&self, elem: ElemLayout, work: Work<'_>, tree: bool) -> Option<StagePlan> {
        let options = self.options;
        let entry = work.entries.first()?.per_invocation()?;
        let max_hidden = if tree {
            PER_INVOCATION_MAX_HIDDEN_TREE
        } else {
            PER_INVOCATION_MAX_HIDDEN
        };
        let wanted = self.cpu
            && work.entries.len() == 1
            && options.reduction == Reduction::Auto
            && options.workgroup_size.is_none()
            && options.read_once != Some(true)
            && options.split_rows != Some(true)
            && self.hidden <= max_hidden;
        let workgroup_size = self.per_invocation_workgroup();
        let fits = self.iterations(work, ReductionKind::PerInvocation, workgroup_size)
            <= LOOP_ITERATION_BUDGET;
        (wanted && fits).then_some(StagePlan {
            entry,
            shape: ModuleShape {
                elem,
                reduction: ReductionKind::PerInvocation,
                workgroup_size,
                cache_len: 1,
                io: self.io_of(elem),
            },
        })
    }

    /// Invocations per workgroup with one row per invocation: a SIMD width's rows, at least 8
    /// (CPU adapters), or two 32-wide SIMDs' (a GPU, where it is only ever asked for).
    fn per_invocation_workgroup(&self) -> u32 {
        let width = if self.cpu {
            cpu_floor(self.caps).max(8)
        } else {
            GPU_MIN_WORKGROUP
        };
        width.min(self.caps.workgroup_limit())
    }

    /// Read once (RMSNorm and LayerNorm): the workgroup size and cache length, where each
    /// invocation's share of a row fits. On GPUs by default, growing the workgroup up to the device's
    /// limit so that rows up to 32 f32 per invocation fit; forced, up to
    /// [`READ_ONCE_FORCED_MAX`] Elems per invocation or a typed error.
    fn read_once(
        &self,
        elem: ElemLayout,
        loads: u32,
        reduction: ReductionKind,
        workgroup_size: u32,
    ) -> Result<Option<(u32, u32)>> {
        let max_len = match (self.norm, self.options.read_once) {
            _ if self.pass == Pass::Backward => return Ok(None),
            (_, Some(true)) if reduction == ReductionKind::PerInvocation => {
                return Err(Error::UnsupportedOption {
                    option: "read_once",
                    reason: "one row per invocation (Reduction::PerInvocation) reads each \
                             row twice: pass read_once None or Some(false), or another \
                             reduction"
                        .into(),
                })
            }
            _ if reduction == ReductionKind::PerInvocation => return Ok(None),
            (_, Some(false)) => return Ok(None),
            (_, Some(true)) => READ_ONCE_FORCED_MAX,
            (_, None) if self.cpu => return Ok(None),
            (_, None) => READ_ONCE_DEFAULT_MAX_VEC4 * 4 / lanes(elem),
        };
        let fits = |wg: u32| loads.div_ceil(wg) <= max_len;
        // A forced size or a single subgroup keeps its workgroup; the others may grow.
        let fixed =
            self.options.workgroup_size.is_some() || reduction == ReductionKind::SingleSubgroup;
        let wg = if fixed || fits(workgroup_size) {
            Some(workgroup_size).filter(|&wg| fits(wg))
        } else {
            min_power_of_two(fits, self.caps.workgroup_limit()).map(|wg| wg.max(workgroup_size))
        };
        match (wg, self.options.read_once) {
            (Some(wg), _) => Ok(Some((wg, loads.div_ceil(wg)))),
            (None, Some(true)) => Err(Error::UnsupportedOption {
                option: "read_once",
                reason: format!(
                    "rows of {loads} loads need more than {READ_ONCE_FORCED_MAX} per invocation \
                     at workgroup size {workgroup_size} (this device allows up to {}): pass \
                     None, or a larger workgroup_size",
                    self.caps.workgroup_limit()
                ),
            }),
            (None, _) => Ok(None),
        }
    }
}

/// Elements per load.
pub(crate) fn lanes(elem: ElemLayout) -> u32 {
    match elem {
        ElemLayout::Vec4 | ElemLayout::Vec4Masked => 4,
        ElemLayout::Scalar => 1,
    }
}

/// The most Elems a row of `elements` covers in `elem` rows (of a row or of its first k): a
/// row at any element may start at the last lane of an Elem.
pub(crate) fn row_loads(elem: ElemLayout, elements: u32) -> u32 {
    match elem {
        ElemLayout::Vec4Masked => (elements + 3).div_ceil(4),
        _ => elements / lanes(elem),
    }
}

/// What a call's buffer offsets allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WideOffsets {
    /// Every offset a multiple of 4 elements: vec4 loads where the hidden size is a
    /// multiple of 4.
    pub aligned: bool,
    /// Row tensors that share a phase within aligned groups of four elements, every binding
    /// reaching whole groups within its buffer: vec4 loads with masked row edges.
    pub same_phase: bool,
}

impl WideOffsets {
    /// Offsets that allow every layout (tensors bound from their first element, padded).
    pub const ANY: Self = Self {
        aligned: true,
        same_phase: true,
    };
    /// Offsets that allow the aligned layouts only (a framework's own buffers).
    pub const ALIGNED: Self = Self {
        aligned: true,
        same_phase: false,
    };
    /// Offsets that allow scalar loads only.
    pub const NONE: Self = Self {
        aligned: false,
        same_phase: false,
    };
}

/// CPU adapters: a workgroup of about one SIMD width keeps barriers cheap. The GL backend
/// reports no subgroups (and a minimum of 4 that means nothing); its CPU implementation,
/// llvmpipe, runs 8 lanes.
fn cpu_floor(caps: &DeviceCaps) -> u32 {
    match caps.backend {
        wgpu::Backend::Gl => 8,
        _ if caps.subgroups => caps.subgroup_min_size.clamp(4, 64),
        _ => 4,
    }
}

/// The smallest power of two up to `limit` for which `ok` holds.
fn min_power_of_two(ok: impl Fn(u32) -> bool, limit: u32) -> Option<u32> {
    (0..32)
        .map(|p| 1u32 << p)
        .take_while(|&wg| wg <= limit)
        .find(|&wg| ok(wg))
}
