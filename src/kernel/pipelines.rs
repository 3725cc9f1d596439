//! Pipelines keyed on exactly what is compiled into them, built once per device and shared
//! by every kernel of a context; the bind group layouts and binding indices.

use super::plan::{Entry, StagePlan};
use super::Norm;
use crate::config::{EpsMode, Gain, RmsNormConfig};
use crate::shaders::{self, ShaderTarget};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

/// `@binding` of `params` in `shaders/norm_common.wgsl`.
pub const BINDING_PARAMS: u32 = 0;
/// `@binding` of `x`.
pub const BINDING_X: u32 = 1;
/// `@binding` of `gain`.
pub const BINDING_GAIN: u32 = 2;
/// `@binding` of `bias`.
pub const BINDING_BIAS: u32 = 3;
/// `@binding` of `y`.
pub const BINDING_Y: u32 = 4;
/// `@binding` of `row_partials` in `shaders/rmsnorm.wgsl` (split rows only).
pub const BINDING_PARTIALS: u32 = 5;

/// Pipelines a cache keeps; the oldest beyond this are dropped (kernels that use them keep
/// theirs alive).
const CACHE_CAPACITY: usize = 64;

/// Everything compiled into one pipeline: eps, k and the shape of a call are not (they
/// travel in the uniform buffer), so a new eps or k compiles nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    norm: Norm,
    stage: StagePlan,
    gain: Gain,
    bias: bool,
    eps_inside_root: bool,
}

impl PipelineKey {
    pub fn new(norm: Norm, stage: StagePlan, config: &RmsNormConfig) -> Self {
        Self {
            norm,
            stage,
            gain: config.gain,
            bias: config.bias,
            eps_inside_root: config.eps_mode == EpsMode::InsideRoot,
        }
    }

    /// Whether the stage binds split rows' partial sums.
    pub fn is_split(&self) -> bool {
        matches!(self.stage.entry, Entry::SplitPartials | Entry::SplitScale)
    }
}

/// The two bind group layouts: bindings 0-4, and 0-5 for split rows where the device
/// allows 5 storage buffers per stage (the plan splits rows only there).
#[derive(Debug)]
pub struct Layouts {
    pub rows: wgpu::BindGroupLayout,
    pub split: Option<wgpu::BindGroupLayout>,
    rows_pipeline: wgpu::PipelineLayout,
    split_pipeline: Option<wgpu::PipelineLayout>,
}

impl Layouts {
    fn new(device: &wgpu::Device) -> Self {
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
        let mut entries = vec![
            entry(BINDING_PARAMS, Uniform),
            entry(BINDING_X, Storage { read_only: true }),
            entry(BINDING_GAIN, Storage { read_only: true }),
            entry(BINDING_BIAS, Storage { read_only: true }),
            entry(BINDING_Y, Storage { read_only: false }),
        ];
        let layout = |label, entries: &[wgpu::BindGroupLayoutEntry]| {
            let group = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(label),
                entries,
            });
            let pipeline = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(label),
                bind_group_layouts: &[Some(&group)],
                immediate_size: 0,
            });
            (group, pipeline)
        };
        let (rows, rows_pipeline) = layout("rmsnorm", &entries);
        entries.push(entry(BINDING_PARTIALS, Storage { read_only: false }));
        let (split, split_pipeline) = if device.limits().max_storage_buffers_per_shader_stage >= 5 {
            let (group, pipeline) = layout("rmsnorm split rows", &entries);
            (Some(group), Some(pipeline))
        } else {
            (None, None)
        };
        Self {
            rows,
            split,
            rows_pipeline,
            split_pipeline,
        }
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
            ("HAS_GAIN", flag(key.gain != Gain::None)),
            ("GAIN_PLUS_ONE", flag(key.gain == Gain::UnitOffset)),
            ("HAS_BIAS", flag(key.bias)),
            ("EPS_INSIDE_ROOT", flag(key.eps_inside_root)),
        ];
        let layout = match &self.layouts.split_pipeline {
            Some(split) if key.is_split() => split,
            _ => &self.layouts.rows_pipeline,
        };
        self.device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(key.stage.entry.name()),
                layout: Some(layout),
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
