//! Pipelines keyed on exactly what is compiled into them, built once per device and shared
//! by every kernel of a context; the bind group layouts and binding indices.

use super::plan::{Entry, StagePlan};
use super::Norm;
use crate::config::{EpsMode, Gain, RmsNormConfig};
use crate::shaders::{self, ResidualIo, ShaderTarget, TensorIo};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

pub use crate::shaders::{
    BINDING_BIAS, BINDING_GAIN, BINDING_PARAMS, BINDING_PARTIALS, BINDING_RESIDUAL, BINDING_SUM,
    BINDING_X, BINDING_Y,
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

    /// Whether the stage binds split rows' partial sums.
    pub fn is_split(&self) -> bool {
        stage_is_split(&self.stage)
    }
}

/// Whether a stage binds split rows' partial sums.
pub fn stage_is_split(stage: &StagePlan) -> bool {
    matches!(stage.entry, Entry::SplitPartials | Entry::SplitScale)
}

/// What a bind group holds: the bindings a module declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BindingSet {
    gain: bool,
    bias: bool,
    residual: ResidualIo,
    split: bool,
}

impl BindingSet {
    pub fn new(io: &TensorIo, split: bool) -> Self {
        Self {
            gain: io.gain,
            bias: io.bias,
            residual: io.residual,
            split,
        }
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
        let read = Storage { read_only: true };
        let write = Storage { read_only: false };
        let mut entries = vec![
            entry(BINDING_PARAMS, Uniform),
            entry(BINDING_X, read),
            entry(BINDING_Y, write),
        ];
        if set.gain {
            entries.push(entry(BINDING_GAIN, read));
        }
        if set.bias {
            entries.push(entry(BINDING_BIAS, read));
        }
        match set.residual {
            ResidualIo::None => {}
            ResidualIo::Add => entries.push(entry(BINDING_RESIDUAL, read)),
            ResidualIo::StoreSum => {
                entries.push(entry(BINDING_RESIDUAL, read));
                entries.push(entry(BINDING_SUM, write));
            }
            ResidualIo::StoreSumInPlace => entries.push(entry(BINDING_RESIDUAL, write)),
        }
        if set.split {
            entries.push(entry(BINDING_PARTIALS, write));
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
        let file = match key.norm {
            Norm::Rms => shaders::RMSNORM,
            Norm::Layer => shaders::LAYERNORM,
        };
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
        let layout = self
            .layouts
            .get(BindingSet::new(&key.stage.shape.io, key.is_split()));
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
