//! The low-level API: pipelines built once, work recorded into the caller's encoder with the
//! caller's buffers.

use crate::config::{EpsMode, Gain, LayerNormConfig, RmsNormConfig};
use crate::error::{Error, Result};
use crate::shaders::{self, ElemLayout, ReductionKind, ShaderTarget};
use wgpu::util::DeviceExt;

/// Which workgroup reduction the kernel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Reduction {
    /// Chosen from the device and the row length by the rule of [`RmsNorm::new`].
    #[default]
    Auto,
    /// A tree in workgroup memory; works everywhere.
    WorkgroupTree,
    /// subgroupAdd, then one partial per subgroup through workgroup memory. Needs
    /// `Features::SUBGROUP`.
    Subgroups,
    /// One subgroup per workgroup (the workgroup size is the adapter's smallest subgroup
    /// size), no barriers. Needs `Features::SUBGROUP`.
    SingleSubgroup,
}

/// How the kernel is built; the defaults suit every device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KernelOptions {
    /// The workgroup reduction.
    pub reduction: Reduction,
    /// Invocations per workgroup, a power of two. `None`: chosen from the device and the row
    /// length (see [`RmsNorm::new`]).
    pub workgroup_size: Option<u32>,
    /// Whether the adapter runs compute shaders on the CPU (lavapipe, SwiftShader, WARP),
    /// where every barrier costs a switch between invocations: small workgroups then win by
    /// 20x. `None`: from the adapter's device type (browsers report SwiftShader as a GPU,
    /// so the JavaScript API sets this from the adapter's architecture).
    pub cpu_adapter: Option<bool>,
    /// Whether few long rows are each split across many workgroups (RMSNorm and pRMSNorm;
    /// LayerNorm never splits). `None`: for calls of at most 32 rows of at least 8192 loads
    /// each (hidden >= 32768 with vec4); `Some(true)`: every call, in at least 8 pieces where
    /// the row allows; `Some(false)`: never.
    pub split_rows: Option<bool>,
    /// Whether each invocation keeps its elements of a row between the sum and the scaling,
    /// reading x once (RMSNorm and pRMSNorm). `None`: on GPUs where that is at most 32 f32
    /// per invocation (n <= 8192 with 256 invocations); `Some(true)`: wherever it is at most
    /// 1024 f32 per invocation (for tests on CPU adapters); `Some(false)`: never.
    pub read_once: Option<bool>,
    /// At most this many workgroups per dispatch, each looping over several rows (not for
    /// split rows). `None`: 1024 on CPU adapters that use the workgroup tree (SwiftShader in
    /// browsers, where each workgroup costs much: 3.5x faster on 16384 x 128), else one
    /// workgroup per row up to the device's limit (lavapipe's subgroup path measured slower
    /// with the cap).
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

/// A region of a buffer: the buffer and a byte offset (a multiple of 4) where the data starts.
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

/// The buffers of one [`RmsNorm::encode`] call. `output` must be a different buffer from the
/// others (WebGPU forbids a dispatch writing a buffer it also reads).
#[derive(Debug, Clone, Copy)]
pub struct RmsNormBuffers<'a> {
    /// `rows * hidden` f32, read.
    pub input: BufferRegion<'a>,
    /// `rows * hidden` f32, written; nothing outside the region is touched.
    pub output: BufferRegion<'a>,
    /// `hidden` f32, exactly when the config has a gain.
    pub gain: Option<BufferRegion<'a>>,
    /// `hidden` f32, exactly when the config has a bias.
    pub bias: Option<BufferRegion<'a>>,
}

/// The uniform block of `shaders/norm_common.wgsl` (`struct Params`).
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
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

/// The device limits that encode checks against, read once.
#[derive(Debug, Clone, Copy)]
struct DeviceLimits {
    offset_alignment: u64,
    max_binding: u64,
    max_workgroups: u32,
}

/// RMSNorm or pRMSNorm for one [`RmsNormConfig`] on one device: the pipelines are built
/// once by [`RmsNorm::new`]; [`RmsNorm::encode`] only records work.
///
/// ```no_run
/// # async fn demo(device: &wgpu::Device, queue: &wgpu::Queue, x: &wgpu::Buffer, y: &wgpu::Buffer)
/// # -> wgpu_rmsnorm::Result<()> {
/// use wgpu_rmsnorm::{KernelOptions, RmsNorm, RmsNormBuffers, RmsNormConfig};
/// let kernel = RmsNorm::new(device, &RmsNormConfig::new(4096), &KernelOptions::default())?;
/// let mut encoder = device.create_command_encoder(&Default::default());
/// let buffers = RmsNormBuffers { input: x.into(), output: y.into(), gain: None, bias: None };
/// kernel.encode(device, &mut encoder, &buffers, 64)?;
/// queue.submit([encoder.finish()]);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RmsNorm {
    config: RmsNormConfig,
    k: u32,
    reduction: ReductionKind,
    workgroup_size: u32,
    limits: DeviceLimits,
    layout: wgpu::BindGroupLayout,
    /// Each with whether it reads x once (`rms_norm_cached`).
    vec4: Option<(wgpu::ComputePipeline, bool)>,
    scalar: (wgpu::ComputePipeline, bool),
    split: Option<SplitPipelines>,
    split_rows: Option<bool>,
    max_workgroups: Option<u32>,
}

/// The two dispatches of split rows, for each element layout.
#[derive(Debug)]
struct SplitPipelines {
    layout: wgpu::BindGroupLayout,
    variant: (ReductionKind, u32),
    vec4: Option<[wgpu::ComputePipeline; 2]>,
    scalar: [wgpu::ComputePipeline; 2],
}

impl RmsNorm {
    /// Validates `config` against the device and builds the pipelines.
    ///
    /// Unless `options` force them, the reduction and workgroup size follow from the device
    /// and the row length `n`:
    /// - with subgroups, on a CPU adapter: one subgroup per workgroup, no barrier at all;
    /// - with subgroups, on a GPU: about n / 16 invocations (a power of two from the smallest
    ///   subgroup size to 256): one subgroup and no barrier for short rows (n <= 16 x the
    ///   subgroup size, e.g. 512 on NVIDIA), [`Reduction::Subgroups`] above;
    /// - without subgroups: the tree, with about one SIMD width (the smallest subgroup size,
    ///   at least 4) per workgroup on CPU adapters and n / 16 (up to 256) on GPUs;
    /// - in every case the workgroup grows with `n` so that no invocation loops more than
    ///   8192 times over a row (llvmpipe stops loops past 65535 iterations).
    ///
    /// Loads and stores are vec4 where `n` and every offset of a call are multiples of 4.
    pub fn new(
        device: &wgpu::Device,
        config: &RmsNormConfig,
        options: &KernelOptions,
    ) -> Result<Self> {
        Self::build(device, Norm::Rms, config, options)
    }

    /// The pipelines of `norm`: both kernels share parameters, bindings and host path.
    pub(crate) fn build(
        device: &wgpu::Device,
        norm: Norm,
        config: &RmsNormConfig,
        options: &KernelOptions,
    ) -> Result<Self> {
        config.validate()?;
        let k = config.rms_count()?;
        let device_limits = device.limits();
        let limits = DeviceLimits {
            offset_alignment: u64::from(device_limits.min_storage_buffer_offset_alignment),
            // Element indices in the shader are u32: no binding above 4 GiB.
            max_binding: device_limits
                .max_storage_buffer_binding_size
                .min(u64::from(u32::MAX) & !15),
            max_workgroups: device_limits.max_compute_workgroups_per_dimension,
        };
        let row_bytes = u64::from(config.hidden) * 4 + binding_slack(&limits);
        if row_bytes > limits.max_binding {
            return Err(Error::RowExceedsBindingLimit {
                hidden: config.hidden,
                row_bytes,
                limit: limits.max_binding,
            });
        }
        let (reduction, workgroup_size) = choose_reduction(device, options, config.hidden)?;

        let base_entries = [
            layout_entry(0, wgpu::BufferBindingType::Uniform),
            layout_entry(1, wgpu::BufferBindingType::Storage { read_only: true }),
            layout_entry(2, wgpu::BufferBindingType::Storage { read_only: true }),
            layout_entry(3, wgpu::BufferBindingType::Storage { read_only: true }),
            layout_entry(4, wgpu::BufferBindingType::Storage { read_only: false }),
        ];
        let (layout, pipeline_layout) = layouts(device, "rmsnorm", &base_entries);
        let constants = |workgroup_size: u32| {
            [
                ("WG", f64::from(workgroup_size)),
                ("HAS_GAIN", bool_constant(config.gain != Gain::None)),
                (
                    "GAIN_PLUS_ONE",
                    bool_constant(config.gain == Gain::UnitOffset),
                ),
                ("HAS_BIAS", bool_constant(config.bias)),
                (
                    "EPS_INSIDE_ROOT",
                    bool_constant(config.eps_mode == EpsMode::InsideRoot),
                ),
            ]
        };
        let (file, entry_point) = match norm {
            Norm::Rms => (shaders::RMSNORM, "rms_norm"),
            Norm::Layer => (shaders::LAYERNORM, "layer_norm"),
        };
        let build_entry = |elem: ElemLayout,
                           (reduction, workgroup_size): (ReductionKind, u32),
                           layout: &wgpu::PipelineLayout,
                           entry_point: &str,
                           cache_len: u32| {
            let composed =
                shaders::compose(file, elem, reduction, ShaderTarget::CURRENT, cache_len);
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(file.path),
                source: wgpu::ShaderSource::Wgsl(composed.source.into()),
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry_point),
                layout: Some(layout),
                module: &module,
                entry_point: Some(entry_point),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants(workgroup_size),
                    // Every workgroup variable is written before it is read.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            })
        };
        // Read once where each invocation's share of a row fits its cache (RMSNorm only).
        let cpu = is_cpu_adapter(device, options);
        let cache_len = |elem: ElemLayout| {
            let loads = match elem {
                ElemLayout::Vec4 => config.hidden.div_ceil(4),
                ElemLayout::Scalar => config.hidden,
            };
            let len = loads.div_ceil(workgroup_size);
            let fits = match (options.read_once, elem) {
                (Some(false), _) => false,
                (Some(true), ElemLayout::Vec4) => len <= READ_ONCE_FORCED_MAX_VEC4,
                (Some(true), ElemLayout::Scalar) => len <= READ_ONCE_FORCED_MAX_VEC4 * 4,
                // GPUs keep up to 32 f32 per invocation in registers; CPU adapters re-read
                // from their own cache as fast as they read a private array.
                (None, ElemLayout::Vec4) => !cpu && len <= 8,
                (None, ElemLayout::Scalar) => !cpu && len <= 32,
            };
            (norm == Norm::Rms && fits).then_some(len)
        };
        let build = |elem| {
            let cached = cache_len(elem);
            let pipeline = build_entry(
                elem,
                (reduction, workgroup_size),
                &pipeline_layout,
                if cached.is_some() {
                    "rms_norm_cached"
                } else {
                    entry_point
                },
                cached.unwrap_or(1),
            );
            (pipeline, cached.is_some())
        };
        let vec4 = config
            .hidden
            .is_multiple_of(4)
            .then(|| build(ElemLayout::Vec4));
        let scalar = build(ElemLayout::Scalar);
        let wants_split = match options.split_rows {
            Some(split) => split,
            None => config.hidden >= SPLIT_MIN_ROW_LOADS * 4,
        };
        let split = (norm == Norm::Rms && wants_split).then(|| -> Result<SplitPipelines> {
            // Sized for one piece of a row, not for the row.
            let variant = choose_reduction(device, options, SPLIT_PIECE_LOADS * 4)?;
            let mut entries = base_entries.to_vec();
            entries.push(layout_entry(
                5,
                wgpu::BufferBindingType::Storage { read_only: false },
            ));
            let (layout, pipeline_layout) = layouts(device, "rmsnorm split", &entries);
            let pair = |elem| {
                [
                    build_entry(elem, variant, &pipeline_layout, "split_partials", 1),
                    build_entry(elem, variant, &pipeline_layout, "split_scale", 1),
                ]
            };
            Ok(SplitPipelines {
                vec4: config
                    .hidden
                    .is_multiple_of(4)
                    .then(|| pair(ElemLayout::Vec4)),
                scalar: pair(ElemLayout::Scalar),
                layout,
                variant,
            })
        });
        let split = split.transpose()?;
        Ok(Self {
            config: *config,
            k,
            reduction,
            workgroup_size,
            limits,
            layout,
            vec4,
            scalar,
            split,
            split_rows: options.split_rows,
            max_workgroups: options.max_workgroups.or(cpu.then_some(CPU_MAX_WORKGROUPS)),
        })
    }

    /// The config this kernel computes.
    pub fn config(&self) -> &RmsNormConfig {
        &self.config
    }

    /// The number of leading elements the RMS is taken over.
    pub fn rms_count(&self) -> u32 {
        self.k
    }

    /// The reduction in use (never [`Reduction::Auto`]).
    pub fn reduction(&self) -> Reduction {
        public_reduction(self.reduction)
    }

    /// Invocations per workgroup.
    pub fn workgroup_size(&self) -> u32 {
        self.workgroup_size
    }

    /// Whether a call with these buffers would use vec4 loads and stores (hidden size and
    /// every offset a multiple of 4 elements) rather than scalar ones.
    pub fn uses_vec4(&self, buffers: &RmsNormBuffers<'_>) -> bool {
        self.vec4.is_some() && regions(buffers).all(|(_, region)| region.offset % 16 == 0)
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

    /// [`RmsNorm::encode`], with the compute pass writing the given timestamps (needs
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
        self.record(&prepared, encoder, timestamp_writes);
        Ok(())
    }

    /// Checks a call and builds its bind groups and parameters, to be recorded any number
    /// of times with [`RmsNorm::record`]: a loop that normalizes the same buffers every step
    /// then creates nothing per step.
    pub fn prepare(
        &self,
        device: &wgpu::Device,
        buffers: &RmsNormBuffers<'_>,
        rows: u32,
    ) -> Result<PreparedDispatch> {
        self.check_buffers(buffers, rows)?;
        let vec4 = self.uses_vec4(buffers);
        let lanes = if vec4 { 4 } else { 1 };
        let row_len = self.config.hidden / lanes;
        let k_len = self.k.div_ceil(lanes);
        let split_chunks = self.split_chunks(rows, row_len);
        let row_bytes = u64::from(self.config.hidden) * 4;
        let vector_bytes = row_bytes;
        let rows_per_chunk = (self.limits.max_binding - binding_slack(&self.limits)) / row_bytes;
        // A bind group for each chunk of rows that fits in one binding (usually one chunk).
        let mut chunks = Vec::new();
        let mut first_row = 0u64;
        while first_row < u64::from(rows) {
            let chunk_rows = rows_per_chunk.min(u64::from(rows) - first_row);
            let x = self.bind_range(buffers.input, first_row * row_bytes, chunk_rows * row_bytes);
            let y = self.bind_range(
                buffers.output,
                first_row * row_bytes,
                chunk_rows * row_bytes,
            );
            let gain = buffers.gain.map(|g| self.bind_range(g, 0, vector_bytes));
            let bias = buffers.bias.map(|b| self.bind_range(b, 0, vector_bytes));
            let params = Params {
                rows: chunk_rows as u32,
                row_len,
                k: self.k,
                k_f32: self.k as f32,
                eps: self.config.eps,
                x_base: x.base_elements / lanes,
                y_base: y.base_elements / lanes,
                gain_base: gain.map_or(0, |g| g.base_elements / lanes),
                bias_base: bias.map_or(0, |b| b.base_elements / lanes),
                chunks: split_chunks.unwrap_or(0),
                k_chunk_len: split_chunks.map_or(0, |c| k_len.div_ceil(c)),
                chunk_len: split_chunks.map_or(0, |c| row_len.div_ceil(c)),
            };
            let params_buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("rmsnorm params"),
                contents: bytemuck::bytes_of(&params),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            // Without gain or bias, x is bound in their place: the shader never reads them.
            let (gain, bias) = (gain.unwrap_or(x), bias.unwrap_or(x));
            let mut entries = vec![
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: params_buffer.as_entire_binding(),
                },
                x.entry(1),
                gain.entry(2),
                bias.entry(3),
                y.entry(4),
            ];
            // Split rows: two f32 per (row, piece), made for the call.
            let partials = split_chunks.map(|chunks| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("rmsnorm split partials"),
                    size: chunk_rows * u64::from(chunks) * 8,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            });
            let layout = match (&self.split, &partials) {
                (Some(split), Some(partials)) => {
                    entries.push(wgpu::BindGroupEntry {
                        binding: 5,
                        resource: partials.as_entire_binding(),
                    });
                    &split.layout
                }
                _ => &self.layout,
            };
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("rmsnorm bind group"),
                layout,
                entries: &entries,
            });
            let items = chunk_rows as u32 * split_chunks.unwrap_or(1);
            let mut workgroups = items.min(self.limits.max_workgroups);
            if let (Some(cap), None) = (self.max_workgroups, split_chunks) {
                // Each workgroup then loops over several rows; enough workgroups stay for no
                // invocation to loop past the budget (llvmpipe stops loops at 65535).
                let per_row = 3 * row_len.div_ceil(self.workgroup_size) + 4;
                let needed =
                    (u64::from(items) * u64::from(per_row)).div_ceil(DISPATCH_ITERATION_BUDGET);
                workgroups = workgroups
                    .min(cap.max(needed.min(u64::from(u32::MAX)) as u32))
                    .max(1);
            }
            chunks.push((bind_group, workgroups));
            first_row += chunk_rows;
        }
        Ok(PreparedDispatch {
            vec4,
            split: split_chunks.is_some(),
            chunks,
        })
    }

    /// Pieces per row when this call splits its rows across workgroups (see
    /// [`KernelOptions::split_rows`]).
    fn split_chunks(&self, rows: u32, row_len: u32) -> Option<u32> {
        self.split.as_ref()?;
        let pieces = row_len.div_ceil(SPLIT_PIECE_LOADS);
        let chunks = match self.split_rows {
            Some(true) => pieces.max(8.min(row_len)),
            _ if rows <= SPLIT_MAX_ROWS && row_len >= SPLIT_MIN_ROW_LOADS => pieces,
            _ => return None,
        };
        // One workgroup per (row, piece) within a dispatch's limit of workgroups, looping
        // beyond it: keep rows * chunks in u32.
        (chunks >= 2 && u64::from(rows) * u64::from(chunks) <= u64::from(u32::MAX))
            .then_some(chunks)
    }

    /// What a call of `rows` rows with these buffers runs, e.g. "SingleSubgroup wg=8 vec4",
    /// "Subgroups wg=256 vec4 read-once" or "split x128 Subgroups wg=256 scalar": for reports.
    pub fn variant_name(&self, buffers: &RmsNormBuffers<'_>, rows: u32) -> String {
        let vec4 = self.uses_vec4(buffers);
        let lanes = if vec4 { 4 } else { 1 };
        let loads = if vec4 { " vec4" } else { " scalar" };
        match (
            &self.split,
            self.split_chunks(rows, self.config.hidden / lanes),
        ) {
            (Some(split), Some(chunks)) => format!(
                "split x{chunks} {:?} wg={}{loads}",
                public_reduction(split.variant.0),
                split.variant.1
            ),
            _ => {
                let reads_once = match (&self.vec4, vec4) {
                    (Some((_, cached)), true) => *cached,
                    _ => self.scalar.1,
                };
                format!(
                    "{:?} wg={}{loads}{}",
                    self.reduction(),
                    self.workgroup_size,
                    if reads_once { " read-once" } else { "" }
                )
            }
        }
    }

    /// Whether a call of `rows` rows with these buffers splits its rows across workgroups.
    pub fn splits_rows(&self, buffers: &RmsNormBuffers<'_>, rows: u32) -> bool {
        let lanes = if self.uses_vec4(buffers) { 4 } else { 1 };
        self.split_chunks(rows, self.config.hidden / lanes)
            .is_some()
    }

    /// Records a prepared call: one compute pass, nothing created, never submitted. A call
    /// of 0 rows records nothing.
    pub fn record(
        &self,
        prepared: &PreparedDispatch,
        encoder: &mut wgpu::CommandEncoder,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) {
        if prepared.chunks.is_empty() {
            return;
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("rmsnorm"),
            timestamp_writes,
        });
        let split = self.split.as_ref().filter(|_| prepared.split);
        let stages: &[wgpu::ComputePipeline] = match (split, &self.vec4, prepared.vec4) {
            (Some(split), _, true) => split.vec4.as_ref().unwrap_or(&split.scalar),
            (Some(split), _, false) => &split.scalar,
            (None, Some((pipeline, _)), true) => std::slice::from_ref(pipeline),
            (None, _, _) => std::slice::from_ref(&self.scalar.0),
        };
        // Split rows: every piece's partial sums, then every piece's scaling; dispatches in
        // one pass see each other's storage writes.
        for (bind_group, workgroups) in &prepared.chunks {
            pass.set_bind_group(0, bind_group, &[]);
            for pipeline in stages {
                pass.set_pipeline(pipeline);
                pass.dispatch_workgroups(*workgroups, 1, 1);
            }
        }
    }

    /// Everything wgpu would refuse, and what the config requires, as typed errors.
    fn check_buffers(&self, buffers: &RmsNormBuffers<'_>, rows: u32) -> Result<()> {
        let config = &self.config;
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
            let size = region.buffer.size();
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

    /// The binding for `len` bytes at `region.offset + start`: the binding starts at that
    /// offset aligned down to the device's alignment, the rest is a base index in elements.
    fn bind_range<'a>(&self, region: BufferRegion<'a>, start: u64, len: u64) -> Bound<'a> {
        let begin = region.offset + start;
        let aligned = begin - begin % self.limits.offset_alignment;
        // Rounded up to whole vec4s where the buffer allows: a vec4 array binding of a size
        // that is not a multiple of 16 would drop its last partial element.
        let end = (begin + len).next_multiple_of(16).min(region.buffer.size());
        Bound {
            buffer: region.buffer,
            offset: aligned,
            size: end - aligned,
            base_elements: ((begin - aligned) / 4) as u32,
        }
    }
}

/// Bytes a binding may need beyond its data: the offset aligned down, the end rounded up to 16.
fn binding_slack(limits: &DeviceLimits) -> u64 {
    limits.offset_alignment + 16
}

#[derive(Debug, Clone, Copy)]
struct Bound<'a> {
    buffer: &'a wgpu::Buffer,
    offset: u64,
    size: u64,
    base_elements: u32,
}

impl Bound<'_> {
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

/// A checked call with its bind groups and parameters, from [`RmsNorm::prepare`]. It keeps
/// the buffers alive; record it only with the kernel that prepared it.
#[derive(Debug)]
pub struct PreparedDispatch {
    vec4: bool,
    split: bool,
    chunks: Vec<(wgpu::BindGroup, u32)>,
}

/// Which normalization a kernel computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Norm {
    Rms,
    Layer,
}

/// LayerNorm for one [`LayerNormConfig`] on one device, built and recorded exactly like
/// [`RmsNorm`] (same buffers, offsets, checks, variants): the baseline of the paper's claim.
#[derive(Debug)]
pub struct LayerNorm {
    config: LayerNormConfig,
    kernel: RmsNorm,
}

impl LayerNorm {
    /// Validates `config` against the device and builds the pipelines (the same variant rule
    /// as [`RmsNorm::new`]).
    pub fn new(
        device: &wgpu::Device,
        config: &LayerNormConfig,
        options: &KernelOptions,
    ) -> Result<Self> {
        Ok(Self {
            config: *config,
            kernel: RmsNorm::build(device, Norm::Layer, &config.as_rms_config(), options)?,
        })
    }

    /// The config this kernel computes.
    pub fn config(&self) -> &LayerNormConfig {
        &self.config
    }

    /// The reduction in use.
    pub fn reduction(&self) -> Reduction {
        self.kernel.reduction()
    }

    /// Invocations per workgroup.
    pub fn workgroup_size(&self) -> u32 {
        self.kernel.workgroup_size()
    }

    /// See [`RmsNorm::variant_name`].
    pub fn variant_name(&self, buffers: &RmsNormBuffers<'_>, rows: u32) -> String {
        self.kernel.variant_name(buffers, rows)
    }

    /// See [`RmsNorm::uses_vec4`].
    pub fn uses_vec4(&self, buffers: &RmsNormBuffers<'_>) -> bool {
        self.kernel.uses_vec4(buffers)
    }

    /// See [`RmsNorm::encode`].
    pub fn encode(
        &self,
        device: &wgpu::Device,
        encoder: &mut wgpu::CommandEncoder,
        buffers: &RmsNormBuffers<'_>,
        rows: u32,
    ) -> Result<()> {
        self.kernel.encode(device, encoder, buffers, rows)
    }

    /// See [`RmsNorm::prepare`].
    pub fn prepare(
        &self,
        device: &wgpu::Device,
        buffers: &RmsNormBuffers<'_>,
        rows: u32,
    ) -> Result<PreparedDispatch> {
        self.kernel.prepare(device, buffers, rows)
    }

    /// See [`RmsNorm::record`].
    pub fn record(
        &self,
        prepared: &PreparedDispatch,
        encoder: &mut wgpu::CommandEncoder,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) {
        self.kernel.record(prepared, encoder, timestamp_writes)
    }

    /// See [`RmsNorm::encode_with_timestamps`].
    pub fn encode_with_timestamps(
        &self,
        device: &wgpu::Device,
        encoder: &mut wgpu::CommandEncoder,
        buffers: &RmsNormBuffers<'_>,
        rows: u32,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        self.kernel
            .encode_with_timestamps(device, encoder, buffers, rows, timestamp_writes)
    }
}

/// The buffers of a call with their names, input and output first.
fn regions<'a, 'b>(
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

fn public_reduction(kind: ReductionKind) -> Reduction {
    match kind {
        ReductionKind::WorkgroupTree => Reduction::WorkgroupTree,
        ReductionKind::Subgroups => Reduction::Subgroups,
        ReductionKind::SingleSubgroup => Reduction::SingleSubgroup,
    }
}

/// A bind group layout of `entries` and the pipeline layout of that one group.
fn layouts(
    device: &wgpu::Device,
    label: &str,
    entries: &[wgpu::BindGroupLayoutEntry],
) -> (wgpu::BindGroupLayout, wgpu::PipelineLayout) {
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(label),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    (layout, pipeline_layout)
}

fn layout_entry(binding: u32, ty: wgpu::BufferBindingType) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

fn bool_constant(value: bool) -> f64 {
    if value {
        1.0
    } else {
        0.0
    }
}

/// CPU adapters with the workgroup tree: workgroups per dispatch by default.
const CPU_MAX_WORKGROUPS: u32 = 1024;

/// Loop iterations one invocation may spend on all of its rows of a dispatch.
const DISPATCH_ITERATION_BUDGET: u64 = 32768;

/// The most vec4 loads per invocation that `read_once: Some(true)` caches.
const READ_ONCE_FORCED_MAX_VEC4: u32 = 256;

/// Split rows: loads (Elems) per piece of a row.
const SPLIT_PIECE_LOADS: u32 = 2048;
/// Split rows by default: calls of at most this many rows ...
const SPLIT_MAX_ROWS: u32 = 32;
/// ... of at least this many loads (Elems) per row.
const SPLIT_MIN_ROW_LOADS: u32 = 8192;

/// Loop iterations one invocation may spend on a row. llvmpipe (lavapipe) stops every loop
/// of an invocation after 65535 iterations in all, silently: a row takes up to four passes
/// (two, plus two on the rescaled path), so the default workgroup grows with the row to keep
/// each invocation well under that.
const ROW_ITERATION_BUDGET: u64 = 8192;

/// The fewest invocations per workgroup that keep a row of `hidden` within
/// [`ROW_ITERATION_BUDGET`] (scalar loads, the worst case).
fn min_workgroup_for_row(hidden: u32) -> u32 {
    let needed = (4 * u64::from(hidden)).div_ceil(ROW_ITERATION_BUDGET);
    needed.next_power_of_two().min(1024) as u32
}

/// Whether the kernels treat the adapter as a CPU implementation (see
/// [`KernelOptions::cpu_adapter`]).
fn is_cpu_adapter(device: &wgpu::Device, options: &KernelOptions) -> bool {
    options
        .cpu_adapter
        .unwrap_or(device.adapter_info().device_type == wgpu::DeviceType::Cpu)
}

/// Resolves [`Reduction::Auto`] and the workgroup size against the device and row length.
fn choose_reduction(
    device: &wgpu::Device,
    options: &KernelOptions,
    hidden: u32,
) -> Result<(ReductionKind, u32)> {
    let has_subgroups = device.features().contains(wgpu::Features::SUBGROUP);
    let info = device.adapter_info();
    let subgroup = info.subgroup_min_size.max(1);
    let row_minimum = min_workgroup_for_row(hidden);
    let cpu = is_cpu_adapter(device, options);
    // GPUs: about 16 elements per invocation (4 vec4 loads) up to 256 invocations, so that
    // short rows (attention heads) run on one subgroup, or few, and many workgroups share a
    // compute unit instead of leaving most of a 256-wide workgroup idle.
    let gpu_size = hidden.div_ceil(16).next_power_of_two().clamp(subgroup, 256);
    let reduction = match options.reduction {
        Reduction::Auto if !has_subgroups => ReductionKind::WorkgroupTree,
        Reduction::Auto if cpu && row_minimum <= subgroup => ReductionKind::SingleSubgroup,
        Reduction::Auto if !cpu && gpu_size <= subgroup => ReductionKind::SingleSubgroup,
        Reduction::Auto => ReductionKind::Subgroups,
        Reduction::WorkgroupTree => ReductionKind::WorkgroupTree,
        Reduction::Subgroups => ReductionKind::Subgroups,
        Reduction::SingleSubgroup => ReductionKind::SingleSubgroup,
    };
    if reduction.uses_subgroups() && !has_subgroups {
        let name = match reduction {
            ReductionKind::SingleSubgroup => "SingleSubgroup",
            _ => "Subgroups",
        };
        return Err(Error::SubgroupsUnsupported { reduction: name });
    }
    let limits = device.limits();
    let max = limits
        .max_compute_invocations_per_workgroup
        .min(limits.max_compute_workgroup_size_x)
        .min(1024);
    let size = match (reduction, options.workgroup_size) {
        (ReductionKind::SingleSubgroup, None) => subgroup,
        (_, Some(size)) => size,
        // CPU adapters: a workgroup of about one SIMD width keeps barriers cheap.
        (_, None) if cpu => subgroup.max(4).max(row_minimum).min(max),
        (_, None) => gpu_size.max(row_minimum).min(max),
    };
    let invalid = |reason: String| Err(Error::InvalidWorkgroupSize { size, reason });
    if size == 0 || !size.is_power_of_two() {
        return invalid("it must be a power of two, e.g. 64 or 256".into());
    }
    if size > max {
        return invalid(format!(
            "this device allows at most {max} invocations per workgroup \
             (max_compute_invocations_per_workgroup, max_compute_workgroup_size_x)"
        ));
    }
    if reduction == ReductionKind::SingleSubgroup && size > subgroup {
        return invalid(format!(
            "Reduction::SingleSubgroup needs the workgroup to fit in one subgroup, and this \
             adapter's subgroups may be as small as {subgroup}: pass at most {subgroup} or None"
        ));
    }
    Ok((reduction, size))
}
