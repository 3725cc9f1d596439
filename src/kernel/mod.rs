//! The low-level API: pipelines built once, work recorded into the caller's encoder with the
//! caller's buffers. One core ([`NormKernel`]) serves RMSNorm, pRMSNorm and LayerNorm; the
//! launch is decided by [`plan`], pipelines come from [`pipelines`], bind groups and
//! dispatches from [`dispatch`].

mod dispatch;
pub mod external;
pub(crate) mod pipelines;
pub mod plan;

pub use dispatch::PreparedDispatch;
#[doc(hidden)]
pub use dispatch::{PARAMS_FIELDS, PARAMS_SIZE};
#[doc(hidden)]
pub use pipelines::{
    BINDING_BIAS, BINDING_GAIN, BINDING_GRAD_BIAS, BINDING_GRAD_GAIN, BINDING_GRAD_OUTPUT,
    BINDING_GRAD_SUM, BINDING_PARAMS, BINDING_PARTIALS, BINDING_RESIDUAL, BINDING_STATS,
    BINDING_SUM, BINDING_X, BINDING_Y,
};

use crate::config::{LayerNormConfig, RmsNormConfig};
use crate::error::{Error, Result};
use crate::shaders::ElemLayout;
use dispatch::Tensor;
use pipelines::{Layouts, PipelineCache, PipelineKey};
use plan::{DeviceCaps, Pass, Plan, StagePlan};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Which workgroup reduction the kernel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Reduction {
    /// Chosen by the launch plan from the device and the row length (see [`plan`]).
    #[default]
    Auto,
    /// A tree in workgroup memory; works everywhere.
    WorkgroupTree,
    /// subgroupAdd, then one partial per subgroup through workgroup memory. Needs
    /// `Features::SUBGROUP`.
    Subgroups,
    /// One subgroup per workgroup, no barriers. Only where the plan can prove every
    /// subgroup holds the whole workgroup: a CPU adapter with one fixed subgroup width
    /// (lavapipe). Elsewhere a typed error.
    SingleSubgroup,
    /// No reduction: each invocation normalizes whole rows on its own, a workgroup's rows
    /// side by side in its SIMD lanes; no barrier, no subgroups. The forward of whole rows
    /// only (not the backward, split rows or read-once: a typed error). `Auto` takes it on
    /// CPU adapters for calls of at least 32 rows of at most 256 elements (4096 without
    /// subgroups, where the tree's barriers cost most); it runs correctly on every device,
    /// but on a GPU neighbouring invocations would read memory a row apart.
    PerInvocation,
}

/// How the kernel is built; the defaults suit every device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KernelOptions {
    /// The workgroup reduction.
    pub reduction: Reduction,
    /// Invocations per workgroup, a power of two. `None`: chosen by the plan.
    pub workgroup_size: Option<u32>,
    /// Whether the adapter runs compute shaders on the CPU (lavapipe, SwiftShader, WARP),
    /// where every barrier costs a switch between invocations: small workgroups then win by
    /// 20x. `None`: from the adapter's device type (browsers report SwiftShader as a GPU,
    /// so the JavaScript API sets this from the adapter's architecture).
    pub cpu_adapter: Option<bool>,
    /// Whether few long rows are each split across many workgroups (every kernel, forward
    /// and backward). `None`: for calls of at most 32 rows of at least 8192 loads
    /// each (hidden >= 32768 with vec4); `Some(true)`: every call, in at least 8 pieces where
    /// the row allows; `Some(false)`: never.
    pub split_rows: Option<bool>,
    /// Whether each invocation keeps its elements of a row between the statistics and the
    /// scaling, reading x once (RMSNorm, pRMSNorm and LayerNorm's forward). `None`: on GPUs
    /// where that is at most 32 f32 per invocation, growing the workgroup up to the device's
    /// limit (n <= 32768 with 1024 invocations); `Some(true)`: wherever it is at most 128 loads per invocation, else a
    /// typed error; `Some(false)`: never.
    pub read_once: Option<bool>,
    /// Whether f16 tensors use WGSL's `f16` type (needs `Features::SHADER_F16`) rather than
    /// f16 bits packed two per u32 word (every device). `None`: the f16 type where the device
    /// has it. Both round alike (to nearest, ties to even); bf16 is always packed.
    pub native_f16: Option<bool>,
    /// At most this many workgroups per dispatch, each looping over several rows (not for
    /// split rows). `None`: 1024 on CPU adapters that use the workgroup tree (SwiftShader in
    /// browsers, where each workgroup costs much: 3.5x faster on 16384 x 128) or one row per
    /// invocation, else one workgroup per row up to the device's limit (lavapipe's subgroup
    /// path measured slower with the cap).
    pub max_workgroups: Option<u32>,
}

impl KernelOptions {
    /// The given reduction, everything else by default.
    pub fn with_reduction(reduction: Reduction) -> Self {
        Self {
            reduction,
            ..Self::default()
        }
    }
}

/// A region of a buffer: the buffer and a byte offset (a multiple of the element size: 4 for
/// f32, 2 for f16 and bf16) where the data starts.
#[derive(Debug, Clone, Copy)]
pub struct BufferRegion<'a> {
    /// The buffer; it needs `BufferUsages::STORAGE`.
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset of the first element.
    pub offset: u64,
}

impl<'a> BufferRegion<'a> {
    /// The region that starts at the beginning of `buffer`.
    pub fn whole(buffer: &'a wgpu::Buffer) -> Self {
        Self { buffer, offset: 0 }
    }
}

impl<'a> From<&'a wgpu::Buffer> for BufferRegion<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        Self::whole(buffer)
    }
}

/// The buffers of one [`RmsNorm::encode`] call, each holding elements of the config's type
/// (`dtype` for activations, `weight_dtype` for gain and bias). A buffer the call writes
/// must be bound for nothing else (WebGPU forbids a dispatch writing a buffer it binds
/// twice); regions of 16-bit elements may start at any even byte offset and may share their
/// first and last 4-byte words with data around them, which is left intact.
#[derive(Debug, Clone, Copy)]
pub struct RmsNormBuffers<'a> {
    /// `rows * hidden` elements of x, read.
    pub input: BufferRegion<'a>,
    /// `rows * hidden` elements, written; nothing outside the region is touched.
    pub output: BufferRegion<'a>,
    /// `hidden` elements, exactly when the config has a gain.
    pub gain: Option<BufferRegion<'a>>,
    /// `hidden` elements, exactly when the config has a bias.
    pub bias: Option<BufferRegion<'a>>,
    /// `rows * hidden` elements of the residual r, exactly when the config has a residual
    /// add; written with the sum x + r when the residual is
    /// [`Residual::AddStoreSumInPlace`](crate::Residual::AddStoreSumInPlace).
    pub residual: Option<BufferRegion<'a>>,
    /// `rows * hidden` elements, written with the sum x + r, exactly when the residual is
    /// [`Residual::AddStoreSum`](crate::Residual::AddStoreSum).
    pub sum: Option<BufferRegion<'a>>,
    /// `rows * stats_per_row` f32, written with each row's statistics for the backward,
    /// exactly when the config's `save_stats` is set (see [`NormKernel::stats_len`]).
    pub stats: Option<BufferRegion<'a>>,
}

impl<'a> RmsNormBuffers<'a> {
    /// Input and output alone: no gain, bias or residual.
    pub fn new(input: BufferRegion<'a>, output: BufferRegion<'a>) -> Self {
        Self {
            input,
            output,
            gain: None,
            bias: None,
            residual: None,
            sum: None,
            stats: None,
        }
    }
}

/// The buffers of one backward call ([`NormBackward::encode`]), each holding elements of
/// the config's type except the statistics, dgain and dbias (f32). The forward's config
/// decides which are passed: see each field.
#[derive(Debug, Clone, Copy)]
pub struct BackwardBuffers<'a> {
    /// `rows * hidden` elements: the forward's x; where the forward stored the sum
    /// (`Residual::AddStoreSum`, `AddStoreSumInPlace`), that sum h.
    pub input: BufferRegion<'a>,
    /// The forward's residual r, exactly when its residual is `Residual::Add` (h = x + r is
    /// recomputed, as the forward did).
    pub residual: Option<BufferRegion<'a>>,
    /// `rows * hidden` elements: dy, the gradient of the forward's output.
    pub grad_output: BufferRegion<'a>,
    /// The gradient of the stored sum h, exactly when the forward stored it (its use
    /// downstream); added to dx. Pass zeros where nothing used h.
    pub grad_sum: Option<BufferRegion<'a>>,
    /// `hidden` elements, exactly when the config has a gain.
    pub gain: Option<BufferRegion<'a>>,
    /// The forward's saved statistics, exactly when the config's `save_stats` is set.
    pub stats: Option<BufferRegion<'a>>,
    /// `rows * hidden` elements, written: dx, which is also the gradient of r (and of x)
    /// where the forward added a residual.
    pub grad_input: BufferRegion<'a>,
    /// `hidden` f32, written with the sum over rows of dy x^, exactly when the config has a
    /// gain.
    pub grad_gain: Option<BufferRegion<'a>>,
    /// `hidden` f32, written with the sum over rows of dy, exactly when the config has a
    /// bias.
    pub grad_bias: Option<BufferRegion<'a>>,
}

impl<'a> BackwardBuffers<'a> {
    /// x, dy and dx alone: no gain, bias, residual or saved statistics.
    pub fn new(
        input: BufferRegion<'a>,
        grad_output: BufferRegion<'a>,
        grad_input: BufferRegion<'a>,
    ) -> Self {
        Self {
            input,
            residual: None,
            grad_output,
            grad_sum: None,
            gain: None,
            stats: None,
            grad_input,
            grad_gain: None,
            grad_bias: None,
        }
    }
}

/// Which normalization a kernel computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Norm {
    /// RMSNorm and pRMSNorm (`shaders/rmsnorm.wgsl`).
    Rms,
    /// LayerNorm (`shaders/layernorm.wgsl`).
    Layer,
}

/// What distinguishes the faces of [`NormKernel`]: the config type and the kernel file.
pub trait NormKind: std::fmt::Debug + Send + Sync + 'static {
    /// The config the face takes.
    type Config: std::fmt::Debug + Clone + Copy + Send + Sync;
    /// The kernel file.
    const NORM: Norm;
    /// The config in the core's terms.
    fn core_config(config: &Self::Config) -> RmsNormConfig;
    /// The config with `save_stats` off.
    fn without_saved_stats(config: &Self::Config) -> Self::Config;
}

/// RMSNorm and pRMSNorm: see [`RmsNorm`].
#[derive(Debug)]
pub enum Rms {}
/// LayerNorm: see [`LayerNorm`].
#[derive(Debug)]
pub enum Layer {}

impl NormKind for Rms {
    type Config = RmsNormConfig;
    const NORM: Norm = Norm::Rms;
    fn core_config(config: &RmsNormConfig) -> RmsNormConfig {
        *config
    }
    fn without_saved_stats(config: &RmsNormConfig) -> RmsNormConfig {
        config.with_saved_stats(false)
    }
}

impl NormKind for Layer {
    type Config = LayerNormConfig;
    const NORM: Norm = Norm::Layer;
    fn core_config(config: &LayerNormConfig) -> RmsNormConfig {
        config.as_rms_config()
    }
    fn without_saved_stats(config: &LayerNormConfig) -> LayerNormConfig {
        config.with_saved_stats(false)
    }
}

/// RMSNorm or pRMSNorm for one [`RmsNormConfig`] on one device: the plan and pipelines are
/// made once by [`RmsNorm::new`]; [`NormKernel::encode`] only records work.
///
/// ```no_run
/// # async fn demo(device: &wgpu::Device, queue: &wgpu::Queue, x: &wgpu::Buffer, y: &wgpu::Buffer)
/// # -> wgpu_rmsnorm::Result<()> {
/// use wgpu_rmsnorm::{KernelOptions, RmsNorm, RmsNormBuffers, RmsNormConfig};
/// let kernel = RmsNorm::new(device, &RmsNormConfig::new(4096), &KernelOptions::default())?;
/// let mut encoder = device.create_command_encoder(&Default::default());
/// let buffers = RmsNormBuffers { input: x.into(), output: y.into(), gain: None, bias: None, residual: None, sum: None, stats: None };
/// kernel.encode(device, &mut encoder, &buffers, 64)?;
/// queue.submit([encoder.finish()]);
/// # Ok(()) }
/// ```
pub type RmsNorm = NormKernel<Rms>;

/// LayerNorm for one [`LayerNormConfig`] on one device, built and recorded exactly like
/// [`RmsNorm`] (same buffers, offsets, checks, plan): the baseline of the paper's claim.
pub type LayerNorm = NormKernel<Layer>;

/// A normalization kernel: its plan, its pipelines, and the calls recorded with them.
#[derive(Debug)]
pub struct NormKernel<N: NormKind> {
    config: N::Config,
    core: Arc<KernelCore>,
    kind: PhantomData<N>,
}

/// What every face shares: the core config, the plan and its pipelines.
#[derive(Debug)]
pub(crate) struct KernelCore {
    device: wgpu::Device,
    /// Unique per kernel: a prepared dispatch records only with the kernel that made it.
    id: u64,
    config: RmsNormConfig,
    plan: Plan,
    layouts: Arc<Layouts>,
    pipelines: HashMap<StagePlan, Arc<wgpu::ComputePipeline>>,
}

impl KernelCore {
    /// Plans `config` for the cache's device and takes the plan's pipelines from the cache.
    pub(crate) fn new(
        cache: &PipelineCache,
        norm: Norm,
        pass: Pass,
        config: &RmsNormConfig,
        options: &KernelOptions,
    ) -> Result<Self> {
        let caps = DeviceCaps::from_device(cache.device());
        let plan = Plan::for_pass(&caps, norm, pass, config, options)?;
        let pipelines = plan
            .stages()
            .into_iter()
            .map(|stage| (stage, cache.get(PipelineKey::new(norm, stage, config))))
            .collect();
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Ok(Self {
            device: cache.device().clone(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            config: *config,
            plan,
            layouts: cache.layouts().clone(),
            pipelines,
        })
    }

    /// Unique per kernel, for checking what a prepared dispatch belongs to.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The tensors of a forward call, its buffers checked against the config.
    pub(crate) fn forward_tensors<'a>(
        &self,
        buffers: &RmsNormBuffers<'a>,
    ) -> Result<Vec<Tensor<'a>>> {
        dispatch::check_forward_buffers(&self.config, buffers)?;
        Ok(dispatch::tensors(self.plan.norm, &self.config, buffers))
    }

    /// The tensors of a backward call, its buffers checked against the config.
    fn backward_tensors<'a>(&self, buffers: &BackwardBuffers<'a>) -> Result<Vec<Tensor<'a>>> {
        check_backward_buffers(&self.config, buffers)?;
        Ok(dispatch::backward_tensors(
            self.plan.norm,
            &self.config,
            buffers,
        ))
    }

    /// The launch of a call of `rows` rows with these tensors.
    fn launch(&self, tensors: &[Tensor<'_>], rows: u32) -> Result<plan::Launch> {
        self.plan
            .launch(rows, dispatch::wide_offsets(tensors, rows))
    }

    pub(crate) fn prepare(
        &self,
        device: &wgpu::Device,
        tensors: &[Tensor<'_>],
        rows: u32,
    ) -> Result<PreparedDispatch> {
        if *device != self.device {
            return Err(Error::WrongDevice);
        }
        dispatch::check_tensors(tensors, rows)?;
        let launch = self.launch(tensors, rows)?;
        // A buffer wgpu refuses (one of another device) is a validation error: caught here
        // and returned, natively. In the browser a scope resolves only later, so none is
        // pushed: the error goes to the device's uncaptured-error handler.
        #[cfg(not(target_arch = "wasm32"))]
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let bind_groups = dispatch::bind_groups(
            device,
            &self.layouts,
            &self.plan,
            &self.config,
            &launch,
            tensors,
        );
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(Some(error)) = crate::platform::ready_now(scope.pop()) {
            return Err(Error::BufferRefused(error.to_string()));
        }
        let (bind_groups, weight_grads, buffers) = bind_groups?;
        Ok(PreparedDispatch {
            kernel_id: self.id,
            launch,
            bind_groups,
            weight_grads,
            buffers,
        })
    }

    pub(crate) fn record(
        &self,
        prepared: &PreparedDispatch,
        encoder: &mut wgpu::CommandEncoder,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        if prepared.kernel_id != self.id {
            return Err(Error::ForeignPreparedDispatch);
        }
        let launch = &prepared.launch;
        if launch.chunks.is_empty() {
            return Ok(());
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("rmsnorm"),
            timestamp_writes,
        });
        // Split rows: every piece's partial sums, then every piece's scaling; dispatches in
        // one pass see each other's storage writes.
        for (chunk, bind_group) in launch.chunks.iter().zip(&prepared.bind_groups) {
            pass.set_bind_group(0, bind_group, &[]);
            for stage in &launch.stages {
                pass.set_pipeline(&self.pipelines[stage]);
                pass.dispatch_workgroups(chunk.workgroups, 1, 1);
            }
        }
        // The backward's dgain and dbias, once every chunk's partial sums are written.
        if let (Some((stage, workgroups)), Some(bind_group)) =
            (launch.weight_grads, &prepared.weight_grads)
        {
            pass.set_bind_group(0, bind_group, &[]);
            pass.set_pipeline(&self.pipelines[&stage]);
            pass.dispatch_workgroups(workgroups, 1, 1);
        }
        Ok(())
    }
}

/// A backward call's buffers are those its config's forward implies, as typed errors.
fn check_backward_buffers(config: &RmsNormConfig, buffers: &BackwardBuffers<'_>) -> Result<()> {
    let hidden = config.hidden as usize;
    config.check_weights(buffers.gain.map(|_| hidden), config.bias.then_some(hidden))?;
    dispatch::check_stats_buffer(config.save_stats, buffers.stats.is_some())?;
    let mismatch = |which, fix| Err(Error::BackwardMismatch { which, fix });
    let has_gain = config.gain != crate::config::Gain::None;
    let stores_sum = config.residual.stores_sum();
    let rules = [
        (
            has_gain,
            buffers.grad_gain.is_some(),
            "grad_gain: the config has a gain, so the backward writes its gradient",
            "pass a grad_gain buffer of hidden f32",
            "grad_gain: the config has no gain",
            "pass no grad_gain, or set a gain",
        ),
        (
            config.bias,
            buffers.grad_bias.is_some(),
            "grad_bias: the config has a bias, so the backward writes its gradient",
            "pass a grad_bias buffer of hidden f32",
            "grad_bias: the config has no bias",
            "pass no grad_bias, or set bias to true",
        ),
        (
            config.residual == crate::config::Residual::Add,
            buffers.residual.is_some(),
            "residual: the forward added r without storing h, so the backward recomputes h from x and r",
            "pass the forward's residual r",
            "residual: only a forward with Residual::Add needs r (where h was stored, pass h as the input)",
            "pass no residual",
        ),
        (
            stores_sum,
            buffers.grad_sum.is_some(),
            "grad_sum: the forward stored the sum h, whose gradient dx adds",
            "pass grad_sum (zeros where nothing used h), and h as the input",
            "grad_sum: the forward stored no sum",
            "pass no grad_sum, or set residual to AddStoreSum or AddStoreSumInPlace",
        ),
    ];
    for (wanted, passed, missing, missing_fix, unexpected, unexpected_fix) in rules {
        match (wanted, passed) {
            (true, false) => return mismatch(missing, missing_fix),
            (false, true) => return mismatch(unexpected, unexpected_fix),
            _ => {}
        }
    }
    Ok(())
}

impl NormKernel<Rms> {
    /// The number of leading elements the RMS is taken over.
    pub fn rms_count(&self) -> u32 {
        self.core.plan.k
    }
}

impl<N: NormKind> NormKernel<N> {
    // (`with_cache`: wgpu's device is not Send in the browser, where everything runs on one
    // thread; natively kernels are Send and Sync, tested.)

    /// Validates `config`, plans it for the device ([`plan::Plan::new`]: the reduction,
    /// workgroup size, element layouts, read-once and split rows; the same rules for every
    /// normalization) and builds the pipelines.
    pub fn new(device: &wgpu::Device, config: &N::Config, options: &KernelOptions) -> Result<Self> {
        Self::with_cache(&PipelineCache::new(device), config, options)
    }

    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    pub(crate) fn with_cache(
        cache: &PipelineCache,
        config: &N::Config,
        options: &KernelOptions,
    ) -> Result<Self> {
        let core = KernelCore::new(
            cache,
            N::NORM,
            Pass::Forward,
            &N::core_config(config),
            options,
        )?;
        Ok(Self {
            config: *config,
            core: Arc::new(core),
            kind: PhantomData,
        })
    }

    /// The config this kernel computes.
    pub fn config(&self) -> &N::Config {
        &self.config
    }

    /// The launch plan: what runs for each element layout and how calls are dispatched.
    pub fn plan(&self) -> &Plan {
        &self.core.plan
    }

    /// The reduction of the plan's primary stage: whole rows with scalar loads where the
    /// device can run them (never [`Reduction::Auto`]).
    pub fn reduction(&self) -> Reduction {
        plan::public_reduction(self.core.plan.primary_stage().shape.reduction)
    }

    /// Invocations per workgroup of the plan's primary stage (see [`NormKernel::reduction`]).
    pub fn workgroup_size(&self) -> u32 {
        self.core.plan.primary_stage().shape.workgroup_size
    }

    /// The loads a call of `rows` rows with these buffers would use: vec4 (hidden size and
    /// every offset a multiple of 4 elements), vec4 with masked row edges (the forward, rows
    /// at any element: x, y, the residual and the sum at one element of an aligned group of
    /// four, i.e. one offset modulo 16 bytes for f32 and 8 for f16 and bf16, and every buffer
    /// reaching the end of the group that holds its last element), else scalar.
    pub fn elem_layout(&self, buffers: &RmsNormBuffers<'_>, rows: u32) -> Result<ElemLayout> {
        let tensors = dispatch::tensors(N::NORM, &self.core.config, buffers);
        Ok(self.core.launch(&tensors, rows)?.elem)
    }

    /// Whether a call of `rows` rows with these buffers splits its rows across workgroups.
    pub fn splits_rows(&self, buffers: &RmsNormBuffers<'_>, rows: u32) -> bool {
        let tensors = dispatch::tensors(N::NORM, &self.core.config, buffers);
        self.core
            .launch(&tensors, rows)
            .is_ok_and(|launch| launch.split_pieces.is_some())
    }

    /// f32 words of saved statistics for `rows` rows (2 per row for RMSNorm: the factors
    /// whose product is 1 / rms; 3 for LayerNorm: shift, mean, scale).
    pub fn stats_len(&self, rows: u32) -> u64 {
        u64::from(rows) * dispatch::stats_per_row(N::NORM)
    }

    /// What a call of `rows` rows with these buffers runs, e.g. "SingleSubgroup wg=8 vec4",
    /// "Subgroups wg=256 vec4 read-once" or "split x128 Subgroups wg=256 scalar": for reports.
    pub fn variant_name(&self, buffers: &RmsNormBuffers<'_>, rows: u32) -> String {
        let tensors = dispatch::tensors(N::NORM, &self.core.config, buffers);
        match self.core.launch(&tensors, rows) {
            Ok(launch) => self.core.plan.variant_name(&launch),
            Err(e) => format!("not launchable: {e}"),
        }
    }

    /// Records `rows` rows of normalization into `encoder`: one compute pass, never submitted.
    /// `rows = 0` records nothing.
    pub fn encode(
        &self,
        device: &wgpu::Device,
        encoder: &mut wgpu::CommandEncoder,
        buffers: &RmsNormBuffers<'_>,
        rows: u32,
    ) -> Result<()> {
        self.encode_with_timestamps(device, encoder, buffers, rows, None)
    }

    /// [`NormKernel::encode`], with the compute pass writing the given timestamps (needs
    /// `Features::TIMESTAMP_QUERY`).
    pub fn encode_with_timestamps(
        &self,
        device: &wgpu::Device,
        encoder: &mut wgpu::CommandEncoder,
        buffers: &RmsNormBuffers<'_>,
        rows: u32,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        let prepared = self.prepare(device, buffers, rows)?;
        self.record(&prepared, encoder, timestamp_writes)
    }

    /// Checks a call and builds its bind groups and parameters, to be recorded any number
    /// of times with [`NormKernel::record`]: a loop that normalizes the same buffers every
    /// step then creates nothing per step.
    pub fn prepare(
        &self,
        device: &wgpu::Device,
        buffers: &RmsNormBuffers<'_>,
        rows: u32,
    ) -> Result<PreparedDispatch> {
        let tensors = self.core.forward_tensors(buffers)?;
        self.core.prepare(device, &tensors, rows)
    }

    /// Records a prepared call: one compute pass, nothing created, never submitted. A call
    /// of 0 rows records nothing. A dispatch prepared by another kernel is refused
    /// ([`Error::ForeignPreparedDispatch`](crate::Error::ForeignPreparedDispatch)).
    pub fn record(
        &self,
        prepared: &PreparedDispatch,
        encoder: &mut wgpu::CommandEncoder,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        self.core.record(prepared, encoder, timestamp_writes)
    }
}

/// The backward of RMSNorm and pRMSNorm for one [`RmsNormConfig`] (the forward's): dx, dgain
/// and dbias from dy. See [`NormBackward`].
pub type RmsNormBackward = NormBackward<Rms>;

/// The backward of LayerNorm for one [`LayerNormConfig`] (the forward's).
pub type LayerNormBackward = NormBackward<Layer>;

/// A normalization's backward: the plan and pipelines made once by [`NormBackward::new`]
/// for the forward's config; [`NormBackward::encode`] records one compute pass: the row
/// kernel (dx, and each workgroup's partial sums of dgain and dbias), then the sum of the
/// partials in a fixed order, so that dgain and dbias are the same bits on every run.
///
/// ```no_run
/// # async fn demo(device: &wgpu::Device, queue: &wgpu::Queue, x: &wgpu::Buffer, dy: &wgpu::Buffer,
/// #     dx: &wgpu::Buffer, g: &wgpu::Buffer, dg: &wgpu::Buffer) -> wgpu_rmsnorm::Result<()> {
/// use wgpu_rmsnorm::{BackwardBuffers, Gain, KernelOptions, RmsNormBackward, RmsNormConfig};
/// let config = RmsNormConfig::new(4096).with_gain(Gain::Scale);
/// let backward = RmsNormBackward::new(device, &config, &KernelOptions::default())?;
/// let buffers = BackwardBuffers {
///     gain: Some(g.into()),
///     grad_gain: Some(dg.into()),
///     ..BackwardBuffers::new(x.into(), dy.into(), dx.into())
/// };
/// let mut encoder = device.create_command_encoder(&Default::default());
/// backward.encode(device, &mut encoder, &buffers, 64)?;
/// queue.submit([encoder.finish()]);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct NormBackward<N: NormKind> {
    config: N::Config,
    core: Arc<KernelCore>,
    kind: PhantomData<N>,
}

impl<N: NormKind> NormBackward<N> {
    /// Validates `config` (the forward's), plans its backward for the device and builds the
    /// pipelines. `options` apply as to the forward (`split_rows` for LayerNorm too), except
    /// `read_once`: the backward reads x and dy twice.
    pub fn new(device: &wgpu::Device, config: &N::Config, options: &KernelOptions) -> Result<Self> {
        Self::with_cache(&PipelineCache::new(device), config, options)
    }

    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    pub(crate) fn with_cache(
        cache: &PipelineCache,
        config: &N::Config,
        options: &KernelOptions,
    ) -> Result<Self> {
        let core = KernelCore::new(
            cache,
            N::NORM,
            Pass::Backward,
            &N::core_config(config),
            options,
        )?;
        Ok(Self {
            config: *config,
            core: Arc::new(core),
            kind: PhantomData,
        })
    }

    /// The config (the forward's).
    pub fn config(&self) -> &N::Config {
        &self.config
    }

    /// The launch plan.
    pub fn plan(&self) -> &Plan {
        &self.core.plan
    }

    /// What a call of `rows` rows with these buffers runs, e.g. "backward SingleSubgroup
    /// wg=8 vec4 saved stats": for reports.
    pub fn variant_name(&self, buffers: &BackwardBuffers<'_>, rows: u32) -> String {
        let tensors = dispatch::backward_tensors(N::NORM, &self.core.config, buffers);
        match self.core.launch(&tensors, rows) {
            Ok(launch) => self.core.plan.variant_name(&launch),
            Err(e) => format!("not launchable: {e}"),
        }
    }

    /// Records the backward of `rows` rows into `encoder`: one compute pass, never
    /// submitted. `rows = 0` records nothing (dgain and dbias are not written).
    pub fn encode(
        &self,
        device: &wgpu::Device,
        encoder: &mut wgpu::CommandEncoder,
        buffers: &BackwardBuffers<'_>,
        rows: u32,
    ) -> Result<()> {
        self.encode_with_timestamps(device, encoder, buffers, rows, None)
    }

    /// [`NormBackward::encode`], with the compute pass writing the given timestamps.
    pub fn encode_with_timestamps(
        &self,
        device: &wgpu::Device,
        encoder: &mut wgpu::CommandEncoder,
        buffers: &BackwardBuffers<'_>,
        rows: u32,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        let prepared = self.prepare(device, buffers, rows)?;
        self.record(&prepared, encoder, timestamp_writes)
    }

    /// Checks a call and builds its bind groups, parameters and the partial sums' buffer,
    /// to be recorded any number of times with [`NormBackward::record`].
    pub fn prepare(
        &self,
        device: &wgpu::Device,
        buffers: &BackwardBuffers<'_>,
        rows: u32,
    ) -> Result<PreparedDispatch> {
        let tensors = self.core.backward_tensors(buffers)?;
        self.core.prepare(device, &tensors, rows)
    }

    /// Records a prepared call: one compute pass, nothing created, never submitted.
    pub fn record(
        &self,
        prepared: &PreparedDispatch,
        encoder: &mut wgpu::CommandEncoder,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        self.core.record(prepared, encoder, timestamp_writes)
    }
}
