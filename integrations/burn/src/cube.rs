//! The kernels on burn's wgpu backend: each dispatch of the core's launch plan run by
//! cubecl as a WGSL source kernel, on the tensors' own buffers.

use crate::device::caps_of;
use crate::spec::NormSpec;
use burn::backend::wgpu::{
    into_contiguous, CubeTensor, KernelSource, SourceKernel, SourceTemplate, WgpuDevice,
};
use burn::backend::CubeDevice;
use burn::tensor::{DType, Shape};
use cubecl::prelude::KernelId;
use cubecl::server::KernelArguments;
use cubecl::{CubeCount, CubeDim};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use wgpu_rmsnorm::kernel::external::{external_module, pipeline_constants, ExternalCall};
use wgpu_rmsnorm::kernel::plan::{Pass, Plan, StagePlan};
use wgpu_rmsnorm::kernel::{KernelOptions, Norm};
use wgpu_rmsnorm::shaders::{
    ShaderTarget, BINDING_BIAS, BINDING_GAIN, BINDING_GRAD_BIAS, BINDING_GRAD_GAIN,
    BINDING_GRAD_OUTPUT, BINDING_PARAMS, BINDING_STATS, BINDING_WEIGHT_PARTIALS, BINDING_X,
    BINDING_Y,
};
use wgpu_rmsnorm::RmsNormConfig;

/// The name cubecl's wgpu runtime gives itself where it compiles WGSL: the only runtime
/// that runs WGSL text (a build that compiles SPIR-V refuses it).
const WGSL_RUNTIME: &str = "wgpu<wgsl>";

/// The wgpu device of `device`, where it is one on which cubecl runs WGSL.
pub(crate) fn wgsl_device(device: &CubeDevice) -> Option<WgpuDevice> {
    match device {
        CubeDevice::Wgpu(wgpu_device) if device.client().name() == WGSL_RUNTIME => {
            Some(wgpu_device.clone())
        }
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// The plan of `pass` for `spec` on `device` (made once per device, spec and pass), or why
/// the kernels cannot run it there.
pub(crate) fn plan_for(
    device: &CubeDevice,
    spec: &NormSpec,
    pass: Pass,
) -> wgpu_rmsnorm::Result<(Arc<Plan>, RmsNormConfig)> {
    type Plans = HashMap<(WgpuDevice, Pass, String), Arc<Plan>>;
    static PLANS: OnceLock<Mutex<Plans>> = OnceLock::new();
    let config = spec.core_config()?;
    let wgpu_device =
        wgsl_device(device).ok_or_else(|| wgpu_rmsnorm::Error::UnsupportedOption {
            option: "running WGSL",
            reason: "the tensor is not on burn's wgpu runtime compiling WGSL".into(),
        })?;
    let key = (wgpu_device.clone(), pass, format!("{spec:?}"));
    let plans = PLANS.get_or_init(Mutex::default);
    if let Some(plan) = plans
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
    {
        return Ok((plan.clone(), config));
    }
    let caps = caps_of(&wgpu_device, device.client().properties());
    let plan = Arc::new(Plan::for_pass(
        &caps,
        spec.norm(),
        pass,
        &config,
        &KernelOptions::default(),
    )?);
    plans
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key, plan.clone());
    Ok((plan, config))
}

/// Everything a stage's module is made of: the kernel, the stage (its module's shape) and
/// the pipeline constants the config sets.
type ModuleKey = (Norm, StagePlan, [(&'static str, bool); 2]);

fn module_key(norm: Norm, stage: &StagePlan, config: &RmsNormConfig) -> ModuleKey {
    (norm, *stage, pipeline_constants(config))
}

/// One stage's module as cubecl runs it, and the bindings of the core's layout it binds, in
/// order.
#[derive(Debug)]
struct StageModule {
    source: String,
    order: Vec<u32>,
}

/// The module of `stage`, composed once: the entry point's bindings are read off the WGSL
/// by naga, so that exactly those are bound (cubecl derives the layout from the module).
fn stage_module(norm: Norm, stage: &StagePlan, config: &RmsNormConfig) -> Arc<StageModule> {
    static MODULES: OnceLock<Mutex<HashMap<ModuleKey, Arc<StageModule>>>> = OnceLock::new();
    let modules = MODULES.get_or_init(Mutex::default);
    let key = module_key(norm, stage, config);
    if let Some(module) = modules
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
    {
        return module.clone();
    }
    let target = ShaderTarget::CURRENT;
    let all = external_module(norm, stage, config, target, &[]);
    let order = used_bindings(&all.source);
    let source = external_module(norm, stage, config, target, &order).source;
    let module = Arc::new(StageModule { source, order });
    modules
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key, module.clone());
    module
}

/// The bindings (group 0) the entry point `main` of `source` uses, ascending. The core
/// composes valid WGSL (its tests validate every module), so a parse failure is a bug.
pub(crate) fn used_bindings(source: &str) -> Vec<u32> {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("composed WGSL does not parse: {}", e.emit_to_string(source)));
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("composed WGSL does not validate: {e:?}"));
    let entry = module
        .entry_points
        .iter()
        .position(|e| e.name == "main")
        .expect("the composed module has an entry point main");
    let uses = info.get_entry_point(entry);
    let mut bindings: Vec<u32> = module
        .global_variables
        .iter()
        .filter(|(handle, _)| !uses[*handle].is_empty())
        .filter_map(|(_, var)| var.binding.as_ref().map(|b| b.binding))
        .collect();
    bindings.sort_unstable();
    bindings
}

/// A stage's WGSL as cubecl's source kernel.
#[derive(Debug)]
struct NormSource {
    module: Arc<StageModule>,
    key: ModuleKey,
}

impl KernelSource for NormSource {
    fn source(&self) -> SourceTemplate {
        SourceTemplate::new(self.module.source.clone())
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info(self.key)
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// The tensors of one call, by the core's bindings.
pub(crate) struct CallTensors<'a> {
    pub bound: Vec<(u32, &'a CubeTensor)>,
}

/// Runs `call`: every dispatch with its parameters, the call's tensors, and the scratch
/// buffers it asks for (made here, uninitialized: the kernels write before they read).
pub(crate) fn run(
    spec: &NormSpec,
    config: &RmsNormConfig,
    call: &ExternalCall,
    tensors: &CallTensors<'_>,
) {
    let Some(&(_, first)) = tensors.bound.first() else {
        return;
    };
    let client = &first.client;
    let scratch: Vec<_> = call
        .scratch_bytes
        .iter()
        .map(|&bytes| (bytes > 0).then(|| client.empty(bytes as usize)))
        .collect();
    let weight_partials =
        (call.weight_partial_bytes > 0).then(|| client.empty(call.weight_partial_bytes as usize));
    for dispatch in &call.dispatches {
        let module = stage_module(spec.norm(), &dispatch.stage, config);
        let params = client.create_from_slice(&dispatch.params);
        let buffers = module
            .order
            .iter()
            .map(|&binding| {
                let handle = match binding {
                    BINDING_PARAMS => Some(&params),
                    b if b == call.scratch_binding => scratch[dispatch.chunk].as_ref(),
                    BINDING_WEIGHT_PARTIALS => weight_partials.as_ref(),
                    b => tensors
                        .bound
                        .iter()
                        .find(|(at, _)| *at == b)
                        .map(|(_, t)| &t.handle),
                };
                handle
                    .unwrap_or_else(|| {
                        panic!("binding {binding} of {:?} has no buffer", dispatch.stage)
                    })
                    .clone()
                    .binding()
            })
            .collect();
        let kernel = NormSource {
            module,
            key: module_key(spec.norm(), &dispatch.stage, config),
        };
        let cube_dim = CubeDim::new_1d(dispatch.stage.shape.workgroup_size);
        client.launch(
            Box::new(SourceKernel::new(kernel, cube_dim)),
            CubeCount::Static(dispatch.workgroups, 1, 1),
            KernelArguments::new().with_buffers(buffers),
        );
    }
}

/// An f32 tensor of `shape` on `like`'s device, uninitialized.
pub(crate) fn empty_like(like: &CubeTensor, shape: Shape) -> CubeTensor {
    let bytes = shape.num_elements() * DType::F32.size();
    let handle = like.client.empty(bytes.max(4));
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        handle,
        DType::F32,
    )
}

/// An f32 tensor of `shape` on `like`'s device, all zeros.
fn zeros_like(like: &CubeTensor, shape: Shape) -> CubeTensor {
    let bytes = vec![0u8; shape.num_elements() * DType::F32.size()];
    let handle = like.client.create_from_slice(&bytes);
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        handle,
        DType::F32,
    )
}

/// The forward on the kernels: y and each row's statistics. `x` is [rows, hidden].
pub(crate) fn forward(
    x: CubeTensor,
    gain: CubeTensor,
    bias: Option<CubeTensor>,
    spec: &NormSpec,
) -> wgpu_rmsnorm::Result<(CubeTensor, CubeTensor)> {
    let (plan, config) = plan_for(&x.device, spec, Pass::Forward)?;
    let rows = rows_of(&x, spec)?;
    let call = plan.external_call(&config, rows)?;
    let (x, gain, bias) = (
        into_contiguous(x),
        into_contiguous(gain),
        bias.map(into_contiguous),
    );
    let y = empty_like(&x, x.meta.shape().clone());
    let stats = empty_like(&x, Shape::new([rows as usize, spec.stats_per_row()]));
    let mut bound = vec![
        (BINDING_X, &x),
        (BINDING_Y, &y),
        (BINDING_GAIN, &gain),
        (BINDING_STATS, &stats),
    ];
    if let Some(bias) = &bias {
        bound.push((BINDING_BIAS, bias));
    }
    run(spec, &config, &call, &CallTensors { bound });
    Ok((y, stats))
}

/// The backward on the kernels: dx, dgain and (LayerNorm) dbias.
pub(crate) fn backward(
    x: CubeTensor,
    gain: CubeTensor,
    stats: CubeTensor,
    grad_output: CubeTensor,
    spec: &NormSpec,
) -> wgpu_rmsnorm::Result<(CubeTensor, CubeTensor, Option<CubeTensor>)> {
    let (plan, config) = plan_for(&x.device, spec, Pass::Backward)?;
    let rows = rows_of(&x, spec)?;
    let call = plan.external_call(&config, rows)?;
    let (x, gain, stats, grad_output) = (
        into_contiguous(x),
        into_contiguous(gain),
        into_contiguous(stats),
        into_contiguous(grad_output),
    );
    let hidden = Shape::new([spec.hidden()]);
    let grad_input = empty_like(&x, x.meta.shape().clone());
    // No rows: no dispatch writes dgain and dbias, sums over no rows.
    let weight_grad = || match rows {
        0 => zeros_like(&x, hidden.clone()),
        _ => empty_like(&x, hidden.clone()),
    };
    let grad_gain = weight_grad();
    let grad_bias = spec.has_bias().then(weight_grad);
    let mut bound = vec![
        (BINDING_X, &x),
        (BINDING_Y, &grad_input),
        (BINDING_GRAD_OUTPUT, &grad_output),
        (BINDING_GAIN, &gain),
        (BINDING_STATS, &stats),
        (BINDING_GRAD_GAIN, &grad_gain),
    ];
    if let Some(grad_bias) = &grad_bias {
        bound.push((BINDING_GRAD_BIAS, grad_bias));
    }
    run(spec, &config, &call, &CallTensors { bound });
    Ok((grad_input, grad_gain, grad_bias))
}

/// Rows of `x`, a [rows, hidden] tensor.
fn rows_of(x: &CubeTensor, spec: &NormSpec) -> wgpu_rmsnorm::Result<u32> {
    let shape = x.meta.shape();
    let dims = shape.num_dims();
    let (rows, hidden) = (shape.num_elements() / spec.hidden().max(1), spec.hidden());
    if dims == 0 || shape[dims - 1] != hidden {
        return Err(wgpu_rmsnorm::Error::InputNotMultipleOfHidden {
            len: shape.num_elements(),
            hidden: hidden as u32,
        });
    }
    u32::try_from(rows).map_err(|_| wgpu_rmsnorm::Error::TooManyRows {
        rows: rows as u64,
        hidden: hidden as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wgpu_rmsnorm::shaders::BINDING_SUM;
    use wgpu_rmsnorm::wgpu;
    use wgpu_rmsnorm::DeviceCaps;

    fn caps(cpu: bool) -> DeviceCaps {
        DeviceCaps {
            device_type: if cpu {
                wgpu::DeviceType::Cpu
            } else {
                wgpu::DeviceType::DiscreteGpu
            },
            backend: wgpu::Backend::Vulkan,
            subgroups: true,
            shader_f16: false,
            subgroup_min_size: if cpu { 8 } else { 32 },
            subgroup_max_size: if cpu { 8 } else { 32 },
            max_invocations: 1024,
            max_workgroup_storage: 32768,
            max_storage_buffers_per_stage: 15,
            max_storage_binding: 2 << 30,
            max_buffer_size: 4 << 30,
            storage_offset_alignment: 256,
            max_workgroups_per_dimension: 65535,
            target: ShaderTarget::Native,
        }
    }

    /// Every stage of every plan the modules make, on a CPU adapter and a GPU, for rows that
    /// are and are not split and vec4 and scalar rows: the module for cubecl has one entry
    /// point, `main`, using exactly the bindings 0..n it is given in order, each one a
    /// buffer `run` binds; the parameters are storage and no `override` is left.
    #[test]
    fn every_stage_binds_exactly_what_its_entry_point_uses() {
        let specs = |hidden: usize| {
            [
                NormSpec::Rms {
                    hidden,
                    k: hidden,
                    eps: 1e-5,
                },
                NormSpec::Rms {
                    hidden,
                    k: hidden.div_ceil(16),
                    eps: 1e-5,
                },
                NormSpec::Layer { hidden, eps: 1e-5 },
            ]
        };
        let mut stages = 0;
        for cpu in [true, false] {
            for (rows, hidden) in [(1024, 128), (7, 130), (2, 65536), (3, 65537)] {
                for spec in specs(hidden) {
                    for pass in [Pass::Forward, Pass::Backward] {
                        let config = spec.core_config().unwrap();
                        let plan = Plan::for_pass(
                            &caps(cpu),
                            spec.norm(),
                            pass,
                            &config,
                            &KernelOptions::default(),
                        )
                        .unwrap();
                        let call = plan.external_call(&config, rows).unwrap();
                        for dispatch in &call.dispatches {
                            let module = stage_module(spec.norm(), &dispatch.stage, &config);
                            assert!(!module.source.contains("var<uniform>"));
                            assert!(!module.source.contains("override "));
                            assert!(!module.source.contains("{{"), "a template placeholder");
                            let used = used_bindings(&module.source);
                            let expected: Vec<u32> = (0..module.order.len() as u32).collect();
                            assert_eq!(used, expected, "{:?}", dispatch.stage);
                            for &binding in &module.order {
                                let known = [
                                    BINDING_PARAMS,
                                    BINDING_X,
                                    BINDING_Y,
                                    BINDING_GAIN,
                                    BINDING_BIAS,
                                    BINDING_STATS,
                                    BINDING_GRAD_OUTPUT,
                                    BINDING_GRAD_GAIN,
                                    BINDING_GRAD_BIAS,
                                    BINDING_WEIGHT_PARTIALS,
                                    call.scratch_binding,
                                ];
                                assert!(
                                    known.contains(&binding),
                                    "binding {binding} of {:?}",
                                    dispatch.stage
                                );
                                assert_ne!(binding, BINDING_SUM);
                            }
                            // `run` has a buffer for every binding.
                            for &binding in &module.order {
                                if binding == call.scratch_binding {
                                    assert!(call.scratch_bytes[dispatch.chunk] > 0);
                                } else if binding == BINDING_WEIGHT_PARTIALS {
                                    assert!(call.weight_partial_bytes > 0);
                                }
                                if binding == BINDING_BIAS || binding == BINDING_GRAD_BIAS {
                                    assert!(spec.has_bias());
                                }
                            }
                            stages += 1;
                        }
                    }
                }
            }
        }
        assert!(stages > 40, "{stages} stages checked");
    }

    /// A backward of many rows on a CPU adapter is cut into chunks (at most 64 workgroups per
    /// dispatch, each within the loop budget): each chunk's bases start at its first row,
    /// every chunk after the first adds to the partial rows of dgain, and the pass summing
    /// them comes last.
    #[test]
    fn a_call_of_many_rows_is_cut_into_chunks_whose_bases_follow_the_rows() {
        use wgpu_rmsnorm::kernel::plan::Entry;
        use wgpu_rmsnorm::kernel::PARAMS_FIELDS;
        let spec = NormSpec::Rms {
            hidden: 32,
            k: 32,
            eps: 1e-5,
        };
        let config = spec.core_config().unwrap();
        let plan = Plan::for_pass(
            &caps(true),
            Norm::Rms,
            Pass::Backward,
            &config,
            &KernelOptions::default(),
        )
        .unwrap();
        let rows = 400_000;
        let call = plan.external_call(&config, rows).unwrap();
        let field = |params: &[u8], name: &str| {
            let (_, at) = PARAMS_FIELDS.iter().find(|(n, _)| *n == name).unwrap();
            u32::from_le_bytes(params[*at..*at + 4].try_into().unwrap())
        };
        let (last, row_dispatches) = call.dispatches.split_last().unwrap();
        assert_eq!(last.stage.entry, Entry::WeightGrads);
        assert!(
            row_dispatches.len() > 1,
            "{} dispatches",
            row_dispatches.len()
        );
        let mut first_row = 0u32;
        for (i, dispatch) in row_dispatches.iter().enumerate() {
            let p = &dispatch.params;
            // vec4 rows: bases in vec4s of the whole tensors; the statistics in f32 words.
            assert_eq!(field(p, "x_base"), first_row * 8);
            assert_eq!(field(p, "y_base"), first_row * 8);
            assert_eq!(field(p, "dy_base"), first_row * 8);
            assert_eq!(field(p, "stats_base"), first_row * 2);
            assert_eq!(field(p, "partials_written"), u32::from(i > 0));
            assert_eq!(dispatch.chunk, i);
            first_row += field(p, "rows");
        }
        assert_eq!(first_row, rows);
        assert!(call.weight_partial_bytes > 0);
    }
}
