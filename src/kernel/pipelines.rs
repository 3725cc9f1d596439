//! Pipelines keyed on exactly what is compiled into them, built once per device and shared
//! by every kernel of a context; the bind group layouts and binding indices.

use super::plan::{Entry, StagePlan};
use super::Norm;
use crate::config::{EpsMode, Gain, RmsNormConfig};
use crate::shaders::{self, ResidualIo, ShaderTarget, StatsIo};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

pub use crate::shaders::{
    BINDING_BIAS, BINDING_GAIN, BINDING_GRAD_BIAS, BINDING_GRAD_GAIN, BINDING_GRAD_OUTPUT,
    BINDING_GRAD_SUM, BINDING_PARAMS, BINDING_PARTIALS, BINDING_PIECES, BINDING_RESIDUAL,
    BINDING_STATS, BINDING_SUM, BINDING_WEIGHT_PARTIALS, BINDING_X, BINDING_Y,
};

/// Pipelines a cache keeps; the oldest beyond this are dropped (kernels that use them keep
/// theirs alive).
const CACHE_CAPACITY: usize = 64;

/// Everything compiled into one pipeline: eps, k and the shape of a call are not (they
/// travel in the uniform buffer), so a new eps or k compiles nothing. The stage's module
/// shape holds the tensors (storage formats, gain, bias, residual).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    norm: Norm,
    stage: StagePlan,
    gain_plus_one: bool,
    eps_inside_root: bool,
}

impl PipelineKey {
    pub fn new(norm: Norm, stage: StagePlan, config: &RmsNormConfig) -> Self {
        Self {
            norm,
            stage,
            gain_plus_one: config.gain == Gain::UnitOffset,
            eps_inside_root: config.eps_mode == EpsMode::InsideRoot,
        }
    }
}

/// Whether a stage binds split rows' partial sums.
pub fn stage_is_split(stage: &StagePlan) -> bool {
    matches!(stage.entry, Entry::SplitPartials | Entry::SplitScale)
}

/// The kernel file whose module runs `stage` of `norm`.
pub fn kernel_file(norm: Norm, stage: &StagePlan) -> shaders::Kernel {
    match (norm, stage.entry.is_backward()) {
        (Norm::Rms, false) => shaders::RMSNORM,
        (Norm::Layer, false) => shaders::LAYERNORM,
        (Norm::Rms, true) => shaders::RMSNORM_BACKWARD,
        (Norm::Layer, true) => shaders::LAYERNORM_BACKWARD,
    }
}

/// The pipeline constants `config` sets (the `override`s of `shaders/norm_common.wgsl`).
pub fn pipeline_constants(config: &RmsNormConfig) -> [(&'static str, bool); 2] {
    [
        ("GAIN_PLUS_ONE", config.gain == Gain::UnitOffset),
        ("EPS_INSIDE_ROOT", config.eps_mode == EpsMode::InsideRoot),
    ]
}

/// What a stage's bind group holds: the storage bindings its entry point uses, read-only or
/// written (one bit per binding), besides the parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BindingSet {
    read: u32,
    write: u32,
}

impl BindingSet {
    /// Whether the set holds storage binding `binding`.
    pub fn has(&self, binding: u32) -> bool {
        (self.read | self.write) & (1 << binding) != 0
    }

    /// The bindings of `stage`.
    pub fn of(stage: &StagePlan) -> Self {
        let io = &stage.shape.io;
        let mut set = Self { read: 0, write: 0 };
        let mut add = |binding: u32, present: bool, written: bool| {
            if present {
                if written {
                    set.write |= 1 << binding;
                } else {
                    set.read |= 1 << binding;
                }
            }
        };
        match stage.entry {
            Entry::WeightGrads => {
                add(BINDING_WEIGHT_PARTIALS, true, true);
                add(BINDING_GRAD_GAIN, io.gain, true);
                add(BINDING_GRAD_BIAS, io.bias, true);
            }
            // Every stage of the backward's rows binds the same set (split rows' stages share
            // one bind group), the pieces' values with split rows.
            Entry::RmsNormBackward
            | Entry::LayerNormBackward
            | Entry::BackwardSplitStatistics
            | Entry::BackwardSplitSums
            | Entry::BackwardSplitDx => {
                add(BINDING_X, true, false);
                add(BINDING_Y, true, true);
                add(BINDING_GRAD_OUTPUT, true, false);
                add(BINDING_GAIN, io.gain, false);
                add(BINDING_RESIDUAL, io.residual == ResidualIo::Add, false);
                add(BINDING_GRAD_SUM, io.grad_sum, false);
                add(BINDING_STATS, io.stats == StatsIo::Load, false);
                add(BINDING_WEIGHT_PARTIALS, io.gain || io.bias, true);
                add(BINDING_PIECES, stage.entry.is_backward_split(), true);
            }
            _ => {
                add(BINDING_X, true, false);
                add(BINDING_Y, true, true);
                add(BINDING_GAIN, io.gain, false);
                add(BINDING_BIAS, io.bias, false);
                let (r, r_written, sum) = match io.residual {
                    ResidualIo::None => (false, false, false),
                    ResidualIo::Add => (true, false, false),
                    ResidualIo::StoreSum => (true, false, true),
                    ResidualIo::StoreSumInPlace => (true, true, false),
                };
                add(BINDING_RESIDUAL, r, r_written);
                add(BINDING_SUM, sum, true);
                add(BINDING_STATS, io.stats == StatsIo::Store, true);
                add(BINDING_PARTIALS, stage_is_split(stage), true);
            }
        }
        set
    }
}

/// A bind group layout and the pipeline layout made of it.
#[derive(Debug)]
pub struct Layout {
    pub group: wgpu::BindGroupLayout,
    pipeline: wgpu::PipelineLayout,
}

/// The layouts of one device by [`BindingSet`], made on first use (a handful per device).
#[derive(Debug)]
pub struct Layouts {
    device: wgpu::Device,
    layouts: Mutex<HashMap<BindingSet, Arc<Layout>>>,
}

impl Layouts {
    fn new(device: &wgpu::Device) -> Self {
        Self {
            device: device.clone(),
            layouts: Mutex::default(),
        }
    }

    /// The layout for `set`.
    // (wgpu's device is not Send in the browser, where everything runs on one thread.)
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    pub fn get(&self, set: BindingSet) -> Arc<Layout> {
        let mut layouts = self.layouts.lock().unwrap_or_else(PoisonError::into_inner);
        layouts
            .entry(set)
            .or_insert_with(|| Arc::new(self.build(set)))
            .clone()
    }

    fn build(&self, set: BindingSet) -> Layout {
        use wgpu::BufferBindingType::{Storage, Uniform};
        let entry = |binding, ty| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let mut entries = vec![entry(BINDING_PARAMS, Uniform)];
        for binding in 0..32 {
            if set.read & (1 << binding) != 0 {
                entries.push(entry(binding, Storage { read_only: true }));
            }
            if set.write & (1 << binding) != 0 {
                entries.push(entry(binding, Storage { read_only: false }));
            }
        }
        let group = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("rmsnorm"),
                entries: &entries,
            });
        let pipeline = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some("rmsnorm"),
                bind_group_layouts: &[Some(&group)],
                immediate_size: 0,
            });
        Layout { group, pipeline }
    }
}

/// Compiled pipelines of one device by [`PipelineKey`], at most [`CACHE_CAPACITY`].
#[derive(Debug)]
pub struct PipelineCache {
    device: wgpu::Device,
    layouts: Arc<Layouts>,
    pipelines: Mutex<Pipelines>,
}

/// The pipelines by key, and the keys oldest first.
type Pipelines = (
    HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>,
    VecDeque<PipelineKey>,
);

impl PipelineCache {
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    pub fn new(device: &wgpu::Device) -> Self {
        Self {
            device: device.clone(),
            layouts: Arc::new(Layouts::new(device)),
            pipelines: Mutex::default(),
        }
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    pub fn layouts(&self) -> &Arc<Layouts> {
        &self.layouts
    }

    /// Pipelines held now.
    pub fn len(&self) -> usize {
        self.lock().0.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pipelines> {
        self.pipelines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The pipeline for `key`, compiled on first use.
    pub fn get(&self, key: PipelineKey) -> Arc<wgpu::ComputePipeline> {
        if let Some(pipeline) = self.lock().0.get(&key) {
            return pipeline.clone();
        }
        let pipeline = Arc::new(self.build(&key));
        let (map, order) = &mut *self.lock();
        // Another thread may have built it meanwhile: keep one.
        if let Some(existing) = map.get(&key) {
            return existing.clone();
        }
        map.insert(key, pipeline.clone());
        order.push_back(key);
        while order.len() > CACHE_CAPACITY {
            if let Some(oldest) = order.pop_front() {
                map.remove(&oldest);
            }
        }
        pipeline
    }

    fn build(&self, key: &PipelineKey) -> wgpu::ComputePipeline {
        let file = kernel_file(key.norm, &key.stage);
        let composed = shaders::compose(file, &key.stage.shape, ShaderTarget::CURRENT);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(file.path),
                source: wgpu::ShaderSource::Wgsl(composed.source.into()),
            });
        let flag = |on: bool| if on { 1.0 } else { 0.0 };
        let constants = [
            ("GAIN_PLUS_ONE", flag(key.gain_plus_one)),
            ("EPS_INSIDE_ROOT", flag(key.eps_inside_root)),
        ];
        let layout = self.layouts.get(BindingSet::of(&key.stage));
        self.device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(key.stage.entry.name()),
                layout: Some(&layout.pipeline),
                module: &module,
                entry_point: Some(key.stage.entry.name()),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    // Every workgroup variable is written before it is read.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            })
    }
}
