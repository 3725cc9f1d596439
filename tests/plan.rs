//! The launch plan for devices we do not have: capability sets written by hand, a sweep of
//! shapes and options, and the invariants every plan must keep. Then every planned pipeline
//! is built on wgpu's noop backend with each device's limits and features, so that wgpu
//! itself validates what the plan produces. No GPU needed.
#![cfg(not(target_arch = "wasm32"))] // Native; tests/web.rs runs in the browser.

use wgpu_rmsnorm::kernel::plan::StagePlan;
use wgpu_rmsnorm::kernel::plan::{
    DeviceCaps, Entry, Launch, Pass, Plan, WideOffsets, BACKWARD_ROW_BLOCK, LOOP_ITERATION_BUDGET,
};
use wgpu_rmsnorm::kernel::Norm;
use wgpu_rmsnorm::shaders::{ElemLayout, ReductionKind, ShaderTarget, Storage};
use wgpu_rmsnorm::{
    BufferRegion, DType, Error, Gain, GpuContext, KernelOptions, LayerNorm, PartialRms, Reduction,
    Residual, RmsNorm, RmsNormBuffers, RmsNormConfig,
};

/// A simulated device: a name, its capabilities, and the subgroup sizes it may really run.
struct Simulated {
    name: &'static str,
    caps: DeviceCaps,
    runs_subgroups: &'static [u32],
}

fn gpu(subgroup_min: u32, subgroup_max: u32) -> DeviceCaps {
    DeviceCaps {
        device_type: wgpu::DeviceType::DiscreteGpu,
        backend: wgpu::Backend::Vulkan,
        subgroups: true,
        shader_f16: true,
        subgroup_min_size: subgroup_min,
        subgroup_max_size: subgroup_max,
        max_invocations: 1024,
        max_workgroup_storage: 32768,
        max_storage_buffers_per_stage: 16,
        max_storage_binding: 2 << 30,
        max_buffer_size: (4 << 30) - 4,
        storage_offset_alignment: 256,
        max_workgroups_per_dimension: 65535,
        target: ShaderTarget::Native,
    }
}

/// RMSNorm over rows of `hidden` planned for `caps`.
fn rms_plan(caps: &DeviceCaps, hidden: u32, options: &KernelOptions) -> Result<Plan, Error> {
    Plan::new(caps, Norm::Rms, &RmsNormConfig::new(hidden), options)
}

/// The simulated device whose name starts with `prefix`.
fn simulated(prefix: &str) -> Simulated {
    devices()
        .into_iter()
        .find(|d| d.name.starts_with(prefix))
        .expect("a simulated device of that name")
}

fn devices() -> Vec<Simulated> {
    let webgpu_default = wgpu::Limits::defaults();
    let downlevel = wgpu::Limits::downlevel_defaults();
    let from_limits = |limits: &wgpu::Limits, backend, subgroups| DeviceCaps {
        backend,
        subgroups,
        target: ShaderTarget::Browser,
        ..DeviceCaps::new(
            &wgpu::AdapterInfo::new(wgpu::DeviceType::IntegratedGpu, backend),
            wgpu::Features::empty(),
            limits,
        )
    };
    vec![
        Simulated {
            name: "NVIDIA (Vulkan, subgroup 32)",
            caps: gpu(32, 32),
            runs_subgroups: &[32],
        },
        Simulated {
            name: "AMD RDNA (wave32 and wave64)",
            caps: gpu(32, 64),
            runs_subgroups: &[32, 64],
        },
        Simulated {
            name: "AMD GCN (wave64)",
            caps: gpu(64, 64),
            runs_subgroups: &[64],
        },
        Simulated {
            name: "Intel (D3D12, reports 16, runs 8 to 32)",
            caps: DeviceCaps {
                backend: wgpu::Backend::Dx12,
                device_type: wgpu::DeviceType::IntegratedGpu,
                ..gpu(16, 16)
            },
            runs_subgroups: &[8, 16, 32],
        },
        Simulated {
            name: "Apple (Metal, reports 4, runs 32)",
            caps: DeviceCaps {
                backend: wgpu::Backend::Metal,
                max_workgroup_storage: 32768,
                ..gpu(4, 64)
            },
            runs_subgroups: &[32],
        },
        Simulated {
            name: "Qualcomm / Mali (64 and 128, 16 KiB workgroup memory)",
            caps: DeviceCaps {
                max_workgroup_storage: 16384,
                max_invocations: 512,
                ..gpu(64, 128)
            },
            runs_subgroups: &[64, 128],
        },
        Simulated {
            name: "GL backend (llvmpipe, no subgroups)",
            caps: DeviceCaps {
                device_type: wgpu::DeviceType::Cpu,
                backend: wgpu::Backend::Gl,
                subgroups: false,
                ..gpu(4, 128)
            },
            runs_subgroups: &[],
        },
        Simulated {
            name: "WebGPU defaults (256 invocations, 16 KiB, 8 storage buffers)",
            caps: from_limits(&webgpu_default, wgpu::Backend::BrowserWebGpu, false),
            runs_subgroups: &[],
        },
        Simulated {
            name: "WebGPU compatibility / downlevel (4 storage buffers)",
            caps: from_limits(&downlevel, wgpu::Backend::Gl, false),
            runs_subgroups: &[],
        },
        Simulated {
            name: "lavapipe (Vulkan, CPU, subgroup 8)",
            caps: DeviceCaps {
                device_type: wgpu::DeviceType::Cpu,
                ..gpu(8, 8)
            },
            runs_subgroups: &[8],
        },
        Simulated {
            name: "SwiftShader (browser, CPU, no subgroups through wgpu)",
            caps: DeviceCaps {
                device_type: wgpu::DeviceType::Cpu,
                ..from_limits(&webgpu_default, wgpu::Backend::BrowserWebGpu, false)
            },
            runs_subgroups: &[],
        },
    ]
}

const HIDDEN: [u32; 17] = [
    1,
    3,
    4,
    64,
    100,
    1000,
    2048,
    4096,
    4097,
    8192,
    16384,
    65536,
    262147,
    1 << 20,
    2_795_777,
    11_183_105,
    1 << 24,
];
const ROWS: [u32; 7] = [1, 7, 32, 33, 43_690, 65536, 1_000_000];

fn option_sets() -> Vec<KernelOptions> {
    let mut sets = vec![KernelOptions::default()];
    for reduction in [
        Reduction::WorkgroupTree,
        Reduction::Subgroups,
        Reduction::SingleSubgroup,
        Reduction::PerInvocation,
    ] {
        sets.push(KernelOptions::with_reduction(reduction));
    }
    for workgroup_size in [1, 4, 64, 1024] {
        sets.push(KernelOptions {
            workgroup_size: Some(workgroup_size),
            ..KernelOptions::default()
        });
    }
    for split_rows in [Some(true), Some(false)] {
        sets.push(KernelOptions {
            split_rows,
            ..KernelOptions::default()
        });
    }
    sets.push(KernelOptions {
        read_once: Some(true),
        ..KernelOptions::default()
    });
    sets.push(KernelOptions {
        max_workgroups: Some(4),
        ..KernelOptions::default()
    });
    sets.push(KernelOptions {
        cpu_adapter: Some(true),
        ..KernelOptions::default()
    });
    // Few workgroups, each looping over many rows, with a subgroup reduction whose loop over
    // the partials is long.
    sets.push(KernelOptions {
        reduction: Reduction::Subgroups,
        workgroup_size: Some(64),
        max_workgroups: Some(4),
        ..KernelOptions::default()
    });
    sets
}

/// The workgroup sum each invocation gets from `reduction` (the algorithms of
/// `shaders/reduce_*.wgsl`, step by step) when the device runs subgroups of `width`: lanes
/// are cut into subgroups of `width`, the last one partly filled where `width` does not
/// divide the workgroup, and `subgroupAdd` adds over a lane's own subgroup only.
fn emulate_reduction(reduction: ReductionKind, values: &[f32], width: usize) -> Vec<f32> {
    let wg = values.len();
    let subgroup_of = |lane: usize| lane / width;
    let members =
        |lane: usize| (subgroup_of(lane) * width)..((subgroup_of(lane) + 1) * width).min(wg);
    let subgroup_add = |lane: usize, v: &dyn Fn(usize) -> f32| members(lane).map(v).sum::<f32>();
    match reduction {
        ReductionKind::WorkgroupTree => {
            let mut tree = values.to_vec();
            let mut half = wg / 2;
            while half > 0 {
                for lane in 0..half {
                    tree[lane] += tree[lane + half];
                }
                half /= 2;
            }
            vec![tree[0]; wg]
        }
        // No reduction: each invocation keeps its own (a row is one invocation's).
        ReductionKind::PerInvocation => values.to_vec(),
        ReductionKind::SingleSubgroup => (0..wg)
            .map(|lane| subgroup_add(lane, &|i| values[i]))
            .collect(),
        ReductionKind::Subgroups => {
            let lane_in = |lane: usize| lane - subgroup_of(lane) * width;
            let active = |lane: usize| members(lane).len();
            let partials: Vec<f32> = (0..wg)
                .map(|lane| {
                    if lane_in(lane) == 0 {
                        subgroup_add(lane, &|i| values[i])
                    } else {
                        0.0
                    }
                })
                .collect();
            let s = |lane: usize| {
                (lane_in(lane)..wg)
                    .step_by(active(lane))
                    .map(|i| partials[i])
                    .sum::<f32>()
            };
            let total = subgroup_add(0, &s);
            vec![total; wg]
        }
    }
}

/// Whether `reduction` with `workgroup_size` invocations sums right (every lane, within f32
/// rounding) on subgroups of `width`.
fn reduction_correct(reduction: ReductionKind, workgroup_size: u32, width: u32) -> bool {
    let values: Vec<f32> = (0..workgroup_size).map(|i| 1.0 + (i % 7) as f32).collect();
    let exact: f64 = values.iter().map(|&v| f64::from(v)).sum();
    emulate_reduction(reduction, &values, width as usize)
        .iter()
        .all(|&got| (f64::from(got) - exact).abs() <= exact * 1e-6)
}

#[test]
fn the_emulated_reductions_catch_a_wrong_subgroup_assumption() {
    // The general subgroup reduction is right at any width, even above the workgroup size.
    for wg in [1, 8, 64, 256] {
        for width in [4, 8, 16, 32, 64, 128] {
            assert!(reduction_correct(ReductionKind::Subgroups, wg, width));
            assert!(reduction_correct(ReductionKind::WorkgroupTree, wg, width));
        }
    }
    // A single subgroup is right only where the workgroup fits one subgroup: a workgroup of
    // 16 on an adapter that reports 16 and runs 8 (Intel on D3D12) sums half the values.
    assert!(reduction_correct(ReductionKind::SingleSubgroup, 16, 16));
    assert!(!reduction_correct(ReductionKind::SingleSubgroup, 16, 8));
    // No reduction sums a workgroup of one only: the plan pairs it with the entry points
    // that take a row per invocation (check_plan).
    assert!(reduction_correct(ReductionKind::PerInvocation, 1, 8));
    assert!(!reduction_correct(ReductionKind::PerInvocation, 8, 8));
}

/// Loop iterations of one invocation for one work item, counted from the shaders' loops
/// (shaders/rmsnorm.wgsl, layernorm.wgsl, reduce_*.wgsl) at the smallest subgroup width the
/// device may run, written out here apart from the plan's own count.
fn loops_of(device: &Simulated, stage: &StagePlan, row_len: u32, pieces: Option<u32>) -> u64 {
    let wg = stage.shape.workgroup_size;
    let p = pieces.unwrap_or(1);
    let piece = u64::from(row_len.div_ceil(p).div_ceil(wg));
    let row = u64::from(row_len.div_ceil(wg));
    let narrowest = device
        .runs_subgroups
        .iter()
        .copied()
        .min()
        .unwrap_or(device.caps.subgroup_min_size)
        .min(device.caps.subgroup_min_size)
        .max(1);
    // reduce_subgroup.wgsl walks the partials in steps of the subgroup width; the tree has
    // one loop iteration per level.
    let reduce = match stage.shape.reduction {
        ReductionKind::Subgroups => u64::from(wg.div_ceil(narrowest)),
        ReductionKind::WorkgroupTree => u64::from(wg.ilog2()),
        ReductionKind::SingleSubgroup | ReductionKind::PerInvocation => 0,
    };
    let (passes, reductions) = match stage.entry {
        // rms_norm: the sum, the rescaled sum, the scaling; two reductions at most.
        Entry::RmsNorm => (3 * row, 2),
        // The same three and LayerNorm's two over a whole row, in one invocation.
        Entry::RmsNormPerInvocation => (3 * u64::from(row_len), 0),
        Entry::LayerNormPerInvocation => (2 * u64::from(row_len), 0),
        Entry::RmsNormCached | Entry::LayerNormCached => (0, 2),
        Entry::LayerNorm => (2 * row, 2),
        // split_partials: the sum over the piece; out of range, the max and the scaled sum.
        Entry::SplitPartials => (3 * piece, 3),
        // split_scale: two passes over the pieces, then the piece's scaling.
        Entry::SplitScale => (2 * u64::from(p.div_ceil(wg)) + piece, 2),
        // The backward, per row at most: one pass with two reductions (the statistics and the
        // correction's sums), for a row out of range the forward's two passes and
        // reductions and the correction's own, dx's pass.
        // Per block of 8 rows, with the block's own loops.
        Entry::RmsNormBackward | Entry::LayerNormBackward => (8 * (5 * row + 2), 8 * 5),
        // Planned apart: one pass over the partial rows per Elem.
        Entry::WeightGrads => (row, 0),
        // The backward's split rows: the piece's statistics as split_partials; two passes
        // over the row's pieces and the piece; four and the piece.
        Entry::BackwardSplitStatistics => (3 * piece, 3),
        Entry::BackwardSplitSums => (2 * u64::from(p.div_ceil(wg)) + piece, 4),
        Entry::BackwardSplitDx => (4 * u64::from(p.div_ceil(wg)) + piece, 4),
    };
    // The row loop itself, the rescaling loop's turns.
    passes + reductions * reduce + 3
}

/// Whether a call of `rows` rows with offsets that allow every layout splits its rows.
fn splits(plan: &Plan, rows: u32) -> bool {
    plan.launch(rows, WideOffsets::ANY)
        .unwrap()
        .split_pieces
        .is_some()
}

/// Offsets that allow the wide layouts, or scalar loads only.
fn offsets(wide: bool) -> WideOffsets {
    if wide {
        WideOffsets::ANY
    } else {
        WideOffsets::NONE
    }
}

fn check_launch(device: &Simulated, plan: &Plan, launch: &Launch, rows: u32, what: &str) {
    let caps = &device.caps;
    let mut covered = 0u64;
    let row_len = match launch.elem {
        ElemLayout::Vec4 => plan.hidden / 4,
        // A row at any element may start at an Elem's last lane.
        ElemLayout::Vec4Masked => (plan.hidden + 3).div_ceil(4),
        ElemLayout::Scalar => plan.hidden,
    };
    for chunk in &launch.chunks {
        assert_eq!(chunk.first_row, covered, "{what}: chunks in order");
        covered += u64::from(chunk.rows);
        assert!(
            chunk.workgroups >= 1 && chunk.workgroups <= caps.max_workgroups_per_dimension,
            "{what}: {} workgroups",
            chunk.workgroups
        );
        let bytes = u64::from(chunk.rows) * u64::from(plan.hidden) * 4;
        assert!(
            bytes + caps.storage_offset_alignment + 16 <= caps.max_storage_binding.max(16),
            "{what}: binding of {bytes} bytes"
        );
        assert!(
            chunk.scratch_bytes <= caps.max_storage_binding,
            "{what}: scratch"
        );
        // The backward's work item is a block of rows; one row per invocation's a row for
        // each invocation of a workgroup.
        let first = launch.stages[0];
        let rows_per_item = match (plan.pass, launch.split_pieces) {
            (Pass::Backward, None) => u64::from(BACKWARD_ROW_BLOCK),
            _ if first.shape.reduction == ReductionKind::PerInvocation => {
                u64::from(first.shape.workgroup_size)
            }
            _ => 1,
        };
        let items = u64::from(chunk.rows).div_ceil(rows_per_item)
            * u64::from(launch.split_pieces.unwrap_or(1));
        for stage in &launch.stages {
            let per_item = loops_of(device, stage, row_len, launch.split_pieces);
            let per_invocation = items.div_ceil(u64::from(chunk.workgroups)) * per_item;
            assert!(
                per_invocation <= LOOP_ITERATION_BUDGET,
                "{what}: {per_invocation} iterations per invocation"
            );
        }
    }
    assert_eq!(covered, u64::from(rows), "{what}: every row once");
    // The backward: partial rows of dgain and dbias in one binding, the pass over them
    // within the budget, and no chunk with more workgroups than the first (whose
    // workgroups write the partial rows every later chunk adds into).
    if let Some((stage, groups)) = launch.weight_grads {
        let partial_rows = launch.partial_rows();
        assert!(
            partial_rows * 2 * u64::from(plan.hidden) * 4 <= caps.max_storage_binding,
            "{what}"
        );
        let wg = u64::from(stage.shape.workgroup_size);
        let per_invocation =
            u64::from(row_len).div_ceil(u64::from(groups) * wg) * (partial_rows + 1);
        assert!(
            per_invocation <= LOOP_ITERATION_BUDGET,
            "{what}: weight grads {per_invocation}"
        );
        assert!(
            launch.chunks.iter().all(|c| match launch.split_pieces {
                Some(_) => u64::from(c.rows) <= partial_rows,
                None => u64::from(c.workgroups) <= partial_rows,
            }),
            "{what}"
        );
    }
}

fn check_plan(device: &Simulated, plan: &Plan, what: &str) {
    let caps = &device.caps;
    for stage in plan.stages() {
        let shape = stage.shape;
        let wg = shape.workgroup_size;
        assert!(
            wg.is_power_of_two() && wg <= caps.max_invocations,
            "{what}: wg {wg}"
        );
        assert!(
            4 * wg + 16 <= caps.max_workgroup_storage,
            "{what}: workgroup memory"
        );
        if shape.reduction.uses_subgroups() {
            assert!(caps.subgroups, "{what}: subgroups without the feature");
        }
        // No reduction: exactly the entry points that take a row per invocation.
        let alone = stage.entry.per_invocation() == Some(stage.entry);
        assert_eq!(
            alone,
            shape.reduction == ReductionKind::PerInvocation,
            "{what}: {:?} with {:?}",
            stage.entry,
            shape.reduction
        );
        if alone {
            assert!(plan.pass == Pass::Forward, "{what}");
            continue;
        }
        for &width in device.runs_subgroups {
            assert!(
                reduction_correct(shape.reduction, wg, width),
                "{what}: {:?} wg={wg} is wrong at subgroup width {width}",
                shape.reduction
            );
        }
        let split = matches!(stage.entry, Entry::SplitPartials | Entry::SplitScale);
        let buffers = if stage.entry.is_backward() {
            shape.io.backward_storage_buffers() + u32::from(stage.entry.is_backward_split())
        } else {
            shape.io.storage_buffers() + u32::from(split)
        };
        assert!(
            buffers <= caps.max_storage_buffers_per_stage,
            "{what}: {buffers} storage buffers"
        );
    }
}

#[test]
fn every_plan_keeps_the_device_limits_and_the_iteration_budget() {
    let mut planned = 0;
    let mut refused = 0;
    for device in devices() {
        for options in option_sets() {
            for hidden in HIDDEN {
                let passes = [
                    (Norm::Rms, Pass::Forward),
                    (Norm::Layer, Pass::Forward),
                    (Norm::Rms, Pass::Backward),
                    (Norm::Layer, Pass::Backward),
                ];
                for (norm, pass) in passes {
                    let config =
                        RmsNormConfig::new(hidden).with_partial(PartialRms::Fraction(0.0625));
                    // The backward with its widest binding set.
                    let config = match pass {
                        Pass::Forward => config,
                        Pass::Backward => config.with_gain(Gain::Scale).with_bias(true),
                    };
                    let what = format!("{} {norm:?} {pass:?} n={hidden} {options:?}", device.name);
                    let plan = match Plan::for_pass(&device.caps, norm, pass, &config, &options) {
                        Ok(plan) => plan,
                        Err(e) => {
                            // Refusals are typed and say what to change; defaults refuse only
                            // rows too long for any workgroup that cannot be split.
                            let defaults = options == KernelOptions::default();
                            let long_row = matches!(e, Error::RowTooLong { .. });
                            // The backward's gain and its partial sums: 5 storage buffers.
                            let buffers = matches!(e, Error::TooManyStorageBuffers { .. })
                                && pass == Pass::Backward
                                && device.caps.max_storage_buffers_per_stage < 5;
                            assert!(!defaults || long_row || buffers, "{what}: {e}");
                            assert!(
                                long_row
                                    || buffers
                                    || matches!(
                                        e,
                                        Error::UnsupportedOption { .. }
                                            | Error::InvalidWorkgroupSize { .. }
                                            | Error::SubgroupsUnsupported { .. }
                                    ),
                                "{what}: {e:?}"
                            );
                            refused += 1;
                            continue;
                        }
                    };
                    check_plan(&device, &plan, &what);
                    // At most 2^32 elements a call, so that huge rows stay few.
                    let rows = ROWS
                        .into_iter()
                        .filter(|&r| u64::from(r) * u64::from(hidden) <= 1 << 32);
                    for rows in rows {
                        let same_phase = WideOffsets {
                            aligned: false,
                            same_phase: true,
                        };
                        for offsets in [WideOffsets::ANY, same_phase, WideOffsets::NONE] {
                            match plan.launch(rows, offsets) {
                                Ok(launch) => check_launch(&device, &plan, &launch, rows, &what),
                                // Only calls that fall back to a scalar layout that cannot run.
                                Err(e) => {
                                    let vec4 = offsets.aligned && plan.vec4.is_some();
                                    let masked = offsets.same_phase && plan.masked.is_some();
                                    assert!(!vec4 && !masked, "{what}: {e:?}");
                                }
                            }
                        }
                    }
                    planned += 1;
                }
            }
        }
    }
    eprintln!("{planned} plans checked, {refused} forced options refused");
    assert!(planned > 1000 && refused > 0);
}

#[test]
fn single_subgroup_only_where_provable() {
    for device in devices() {
        let options = KernelOptions::with_reduction(Reduction::SingleSubgroup);
        let result = rms_plan(&device.caps, 256, &options);
        match device.caps.fixed_subgroup_width() {
            Some(_) => assert!(result.is_ok(), "{}", device.name),
            None => assert!(result.is_err(), "{}", device.name),
        }
    }
}

#[test]
fn forced_options_are_honoured_or_refused() {
    let lavapipe = &simulated("lavapipe");
    // A workgroup of 1 cannot cover a row of 262147 within the iteration budget.
    let tiny = KernelOptions {
        workgroup_size: Some(1),
        ..KernelOptions::default()
    };
    let e = rms_plan(&lavapipe.caps, 262147, &tiny).unwrap_err();
    assert!(e.to_string().contains("at least 32 invocations"), "{e}");
    // Split rows bind their partial sums besides x, y, gain and bias: 5 storage buffers.
    let downlevel = &simulated("WebGPU compatibility");
    let split = KernelOptions {
        split_rows: Some(true),
        ..KernelOptions::default()
    };
    let weighted = RmsNormConfig::new(4096)
        .with_gain(Gain::Scale)
        .with_bias(true);
    let e = Plan::new(&downlevel.caps, Norm::Rms, &weighted, &split).unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnsupportedOption {
                option: "split_rows",
                ..
            }
        ),
        "{e}"
    );
    // ... and by default are simply not planned there; without weights (3 buffers) they are.
    let long = RmsNormConfig {
        hidden: 1 << 20,
        ..weighted
    };
    let plan = Plan::new(&downlevel.caps, Norm::Rms, &long, &KernelOptions::default()).unwrap();
    assert!(!splits(&plan, 1));
    let plan = rms_plan(&downlevel.caps, 1 << 20, &KernelOptions::default()).unwrap();
    assert!(splits(&plan, 1));
}

/// f16 is WGSL's type where the device has SHADER_F16 and packed words elsewhere; forcing
/// the type without the feature is refused. A residual add with gain, bias and the stored
/// sum binds 6 storage buffers: more than downlevel devices allow, a typed error there.
#[test]
fn formats_and_residual_are_planned_by_the_device() {
    let f16 = RmsNormConfig::new(4096).with_dtype(DType::F16);
    let default = KernelOptions::default();
    let nvidia = simulated("NVIDIA (Vulkan, subgroup 32)");
    let plan = Plan::new(&nvidia.caps, Norm::Rms, &f16, &default).unwrap();
    assert_eq!(plan.io.activations, Storage::F16);
    assert_eq!(plan.io(ElemLayout::Vec4).activations, Storage::F16);
    let webgpu = simulated("WebGPU defaults");
    assert!(!webgpu.caps.shader_f16);
    let plan = Plan::new(&webgpu.caps, Norm::Rms, &f16, &default).unwrap();
    assert_eq!(plan.io.activations, Storage::PackedF16);
    let forced = KernelOptions {
        native_f16: Some(true),
        ..default
    };
    let e = Plan::new(&webgpu.caps, Norm::Rms, &f16, &forced).unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnsupportedOption {
                option: "native_f16",
                ..
            }
        ),
        "{e}"
    );
    // lavapipe: packed words in vec4 rows, aligned or with masked edges (its vec4<f16>
    // conversions are slow), the type in scalar rows (no atomics).
    let lavapipe = simulated("lavapipe");
    let plan = Plan::new(&lavapipe.caps, Norm::Rms, &f16, &default).unwrap();
    assert_eq!(plan.io(ElemLayout::Vec4).activations, Storage::PackedF16);
    assert_eq!(
        plan.io(ElemLayout::Vec4Masked).activations,
        Storage::PackedF16
    );
    assert_eq!(plan.io(ElemLayout::Scalar).activations, Storage::F16);
    let launch = plan.launch(4, WideOffsets::ANY).unwrap();
    assert!(plan.variant_name(&launch).ends_with("vec4 packed-f16"));
    let launch = plan.launch(4, WideOffsets::NONE).unwrap();
    assert!(plan.variant_name(&launch).ends_with("scalar f16"));
    // 16-bit rows at any element take vec4 loads with masked edges on every device.
    let odd = RmsNormConfig::new(4097).with_dtype(DType::F16);
    let same_phase = WideOffsets {
        aligned: false,
        same_phase: true,
    };
    for (device, storage) in [
        (&lavapipe, " packed-f16"),
        (&nvidia, " f16"),
        (&webgpu, " packed-f16"),
    ] {
        let plan = Plan::new(&device.caps, Norm::Rms, &odd, &default).unwrap();
        let launch = plan.launch(4, same_phase).unwrap();
        let name = plan.variant_name(&launch);
        assert_eq!(launch.elem, ElemLayout::Vec4Masked, "{}", device.name);
        assert!(
            name.contains("vec4 masked edges") && name.ends_with(storage),
            "{}: {name}",
            device.name
        );
    }
    let bf16 = f16.with_dtype(DType::Bf16);
    let plan = Plan::new(&nvidia.caps, Norm::Rms, &bf16, &default).unwrap();
    assert_eq!(plan.io.activations, Storage::PackedBf16);
    let plan = Plan::new(
        &nvidia.caps,
        Norm::Rms,
        &odd.with_dtype(DType::Bf16),
        &default,
    )
    .unwrap();
    assert_eq!(
        plan.launch(4, WideOffsets::ANY).unwrap().elem,
        ElemLayout::Vec4Masked
    );

    let fused = f16
        .with_gain(Gain::Scale)
        .with_bias(true)
        .with_residual(Residual::AddStoreSum);
    let downlevel = simulated("WebGPU compatibility");
    let e = Plan::new(&downlevel.caps, Norm::Layer, &fused, &default).unwrap_err();
    assert!(
        matches!(
            e,
            Error::TooManyStorageBuffers {
                needed: 6,
                limit: 4,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("drop the bias"), "{e}");
    // The backward: x, dy, dx, the gain and the partial sums of dgain and dbias are 5.
    let weighted = RmsNormConfig::new(64).with_gain(Gain::Scale);
    let e = Plan::for_pass(
        &downlevel.caps,
        Norm::Rms,
        Pass::Backward,
        &weighted,
        &default,
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::TooManyStorageBuffers { needed: 5, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("partial sums of dgain"), "{e}");
    let bare = RmsNormConfig::new(64);
    Plan::for_pass(&downlevel.caps, Norm::Rms, Pass::Backward, &bare, &default).unwrap();
    // In place, without a bias: x, r, y and the gain fit.
    let in_place = fused
        .with_bias(false)
        .with_residual(Residual::AddStoreSumInPlace);
    let plan = Plan::new(&downlevel.caps, Norm::Rms, &in_place, &default).unwrap();
    check_plan(&downlevel, &plan, "in place on downlevel");
    let plan = Plan::new(&nvidia.caps, Norm::Rms, &fused, &default).unwrap();
    check_plan(&nvidia, &plan, "fused on NVIDIA");
    let launch = plan.launch(1, WideOffsets::ANY).unwrap();
    assert!(
        plan.variant_name(&launch).ends_with("f16 +residual"),
        "{}",
        plan.variant_name(&launch)
    );
}

/// What the plan picks for a few shapes on each simulated device (the README's table).
#[test]
fn plan_table() {
    for device in devices() {
        let mut line = format!("| {} |", device.name);
        for (rows, hidden) in [(4096, 128), (4096, 4096), (64, 4097), (1, 1 << 20)] {
            let plan = rms_plan(&device.caps, hidden, &KernelOptions::default()).unwrap();
            let launch = plan.launch(rows, WideOffsets::ANY).unwrap();
            line.push_str(&format!(" {} |", plan.variant_name(&launch)));
        }
        println!("{line}");
    }
}

/// Every pipeline each simulated device's plans use, built by wgpu on its noop backend with
/// that device's limits and features: wgpu validates shaders, limits and layouts.
#[test]
fn planned_pipelines_build_on_each_simulated_device() {
    for device in devices()
        .into_iter()
        .filter(|d| d.caps.target == ShaderTarget::Native)
    {
        let caps = &device.caps;
        let limits = wgpu::Limits {
            max_compute_invocations_per_workgroup: caps.max_invocations,
            max_compute_workgroup_size_x: caps.max_invocations,
            max_compute_workgroup_storage_size: caps.max_workgroup_storage,
            max_storage_buffers_per_shader_stage: caps.max_storage_buffers_per_stage,
            max_storage_buffer_binding_size: caps.max_storage_binding,
            max_buffer_size: caps.max_buffer_size,
            min_storage_buffer_offset_alignment: caps.storage_offset_alignment as u32,
            max_compute_workgroups_per_dimension: caps.max_workgroups_per_dimension,
            ..wgpu::Limits::defaults()
        };
        let features = if caps.subgroups {
            wgpu::Features::SUBGROUP
        } else {
            wgpu::Features::empty()
        };
        let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
        descriptor.backends = wgpu::Backends::NOOP;
        descriptor.backend_options.noop = wgpu::NoopBackendOptions {
            enable: true,
            limits: Some(limits.clone()),
            features: Some(features),
            device_type: Some(caps.device_type),
            subgroup_min_size: Some(caps.subgroup_min_size),
            subgroup_max_size: Some(caps.subgroup_max_size),
        };
        let instance = wgpu::Instance::new(descriptor);
        let adapter =
            pollster::block_on(instance.request_adapter(&Default::default())).expect("noop");
        let (device_handle, queue) =
            pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
                required_features: features,
                required_limits: limits,
                ..Default::default()
            }))
            .expect("noop device");
        let oom = device_handle.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device_handle.push_error_scope(wgpu::ErrorFilter::Validation);
        let context = GpuContext::from_device(device_handle.clone(), queue, Default::default());
        for hidden in [3, 100, 4096, 16384, 1 << 20] {
            for options in option_sets() {
                let config = RmsNormConfig::new(hidden);
                // The same caps wgpu reports for this device, so the plan is the simulated one.
                if let Ok(kernel) = RmsNorm::new(&device_handle, &config, &options) {
                    assert_eq!(kernel.plan().caps.subgroups, caps.subgroups);
                    encode_one(&device_handle, &kernel, hidden);
                }
                let layer = wgpu_rmsnorm::LayerNormConfig::new(hidden);
                if let Ok(kernel) = LayerNorm::new(&device_handle, &layer, &options) {
                    encode_one(&device_handle, &kernel, hidden);
                }
                // The backward, with a gain and a bias (its widest binding set).
                let weighted = config.with_gain(Gain::Scale).with_bias(true);
                let backward =
                    wgpu_rmsnorm::RmsNormBackward::new(&device_handle, &weighted, &options);
                if let Ok(kernel) = backward {
                    encode_backward(&device_handle, &kernel, hidden);
                }
                let layer = layer.with_gain(Gain::Scale).with_bias(true);
                let backward =
                    wgpu_rmsnorm::LayerNormBackward::new(&device_handle, &layer, &options);
                if let Ok(kernel) = backward {
                    encode_backward(&device_handle, &kernel, hidden);
                }
            }
        }
        drop(context);
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        assert!(v.is_none(), "{}: {v:?}", device.name);
        assert!(o.is_none(), "{}: {o:?}", device.name);
    }
}

fn encode_one<N: wgpu_rmsnorm::kernel::NormKind>(
    device: &wgpu::Device,
    kernel: &wgpu_rmsnorm::NormKernel<N>,
    hidden: u32,
) {
    let buffer = |len: u64| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: len * 4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    let rows = 3;
    let (x, y) = (
        buffer(u64::from(hidden) * rows),
        buffer(u64::from(hidden) * rows),
    );
    let buffers = RmsNormBuffers::new(BufferRegion::whole(&x), BufferRegion::whole(&y));
    let mut encoder = device.create_command_encoder(&Default::default());
    kernel
        .encode(device, &mut encoder, &buffers, rows as u32)
        .expect("encode");
    drop(encoder.finish());
}

fn encode_backward<N: wgpu_rmsnorm::kernel::NormKind>(
    device: &wgpu::Device,
    kernel: &wgpu_rmsnorm::NormBackward<N>,
    hidden: u32,
) {
    let buffer = |len: u64| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: len * 4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    // 21 rows: two blocks of 8 and a short one.
    let rows = 21;
    let tensor = || buffer(u64::from(hidden) * rows);
    let vector = || buffer(u64::from(hidden));
    let (x, dy, dx) = (tensor(), tensor(), tensor());
    let (gain, grad_gain, grad_bias) = (vector(), vector(), vector());
    let buffers = wgpu_rmsnorm::BackwardBuffers {
        gain: Some((&gain).into()),
        grad_gain: Some((&grad_gain).into()),
        grad_bias: Some((&grad_bias).into()),
        ..wgpu_rmsnorm::BackwardBuffers::new((&x).into(), (&dy).into(), (&dx).into())
    };
    let mut encoder = device.create_command_encoder(&Default::default());
    kernel
        .encode(device, &mut encoder, &buffers, rows as u32)
        .expect("encode backward");
    drop(encoder.finish());
}

/// Rows of millions of elements plan with the default options on every device that can
/// split: the whole-row stage is left out where no workgroup keeps a row within the
/// iteration budget, and every call splits.
#[test]
fn long_rows_plan_by_default() {
    for device in devices() {
        let splits = device.caps.max_storage_buffers_per_stage >= 5;
        for hidden in [2_795_777u32, 11_183_105, 1 << 24] {
            let config = RmsNormConfig::new(hidden);
            let result = Plan::new(&device.caps, Norm::Rms, &config, &KernelOptions::default());
            let what = format!("{} n={hidden}", device.name);
            match (result, splits) {
                (Ok(plan), _) => {
                    for (rows, vec4) in [(1, true), (3, false)] {
                        if let Ok(launch) = plan.launch(rows, offsets(vec4)) {
                            check_launch(&device, &plan, &launch, rows, &what);
                        }
                    }
                }
                (Err(e), false) => assert!(matches!(e, Error::RowTooLong { .. }), "{what}: {e}"),
                (Err(e), true) => panic!("{what}: {e}"),
            }
        }
    }
}

/// One row per invocation: by default only on CPU adapters (lavapipe, llvmpipe, SwiftShader),
/// for the forward of calls of at least 32 rows of at most 256 elements (4096 where the
/// workgroup stage is the tree), for RMSNorm and LayerNorm, never the backward; forced, it
/// runs on any device, and what it cannot do is refused by name.
#[test]
fn one_row_per_invocation_where_it_pays_and_refused_where_it_cannot_run() {
    let cpu_devices = ["lavapipe", "GL backend", "SwiftShader"];
    for device in devices() {
        let cpu = cpu_devices.iter().any(|p| device.name.starts_with(p));
        let options = KernelOptions {
            cpu_adapter: Some(cpu),
            ..KernelOptions::default()
        };
        for norm in [Norm::Rms, Norm::Layer] {
            for hidden in [1u32, 128, 256, 257, 4096, 4097, 8192] {
                let config = RmsNormConfig::new(hidden);
                let plan =
                    Plan::for_pass(&device.caps, norm, Pass::Forward, &config, &options).unwrap();
                let tree = plan.primary_stage().shape.reduction == ReductionKind::WorkgroupTree;
                let longest = if tree { 4096 } else { 256 };
                let what = format!("{} {norm:?} n={hidden}", device.name);
                let vec4 = hidden % 4 == 0;
                let alone = |rows: u32| {
                    let launch = plan.launch(rows, offsets(vec4)).unwrap();
                    check_launch(&device, &plan, &launch, rows, &what);
                    let stage = launch.stages[0];
                    if stage.shape.reduction == ReductionKind::PerInvocation {
                        // A SIMD width's rows per workgroup, at most 1024 workgroups.
                        assert!(stage.shape.workgroup_size >= 8, "{what}");
                        assert!(launch.chunks.iter().all(|c| c.workgroups <= 1024), "{what}");
                        assert_eq!(stage.entry.per_invocation(), Some(stage.entry), "{what}");
                    }
                    stage.shape.reduction == ReductionKind::PerInvocation
                };
                assert_eq!(alone(4096), cpu && hidden <= longest, "{what}");
                assert_eq!(alone(32), cpu && hidden <= longest, "{what}");
                assert!(!alone(31), "{what}");
                assert!(!alone(1), "{what}");
                let backward =
                    Plan::for_pass(&device.caps, norm, Pass::Backward, &config, &options).unwrap();
                assert!(
                    backward
                        .stages()
                        .iter()
                        .all(|s| s.shape.reduction != ReductionKind::PerInvocation),
                    "{what}"
                );
            }
        }
    }
    let lavapipe = &simulated("lavapipe").caps;
    let forced = KernelOptions::with_reduction(Reduction::PerInvocation);
    let refusal = |pass, options: &KernelOptions, hidden: u32| {
        Plan::for_pass(
            lavapipe,
            Norm::Rms,
            pass,
            &RmsNormConfig::new(hidden),
            options,
        )
        .unwrap_err()
    };
    let e = refusal(Pass::Backward, &forced, 128);
    assert!(
        matches!(
            e,
            Error::UnsupportedOption {
                option: "Reduction::PerInvocation",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("not the backward"), "{e}");
    let split = KernelOptions {
        split_rows: Some(true),
        ..forced
    };
    let e = refusal(Pass::Forward, &split, 128);
    assert!(e.to_string().contains("split rows"), "{e}");
    let read_once = KernelOptions {
        read_once: Some(true),
        ..forced
    };
    let e = refusal(Pass::Forward, &read_once, 128);
    assert!(
        matches!(
            e,
            Error::UnsupportedOption {
                option: "read_once",
                ..
            }
        ),
        "{e:?}"
    );
    // A row too long for one invocation within the loop budget (scalar: 3 passes of 12289).
    let e = refusal(Pass::Forward, &forced, 12289);
    assert!(matches!(e, Error::InvalidWorkgroupSize { .. }), "{e:?}");
    assert!(e.to_string().contains("one invocation"), "{e}");
    // Forced on a GPU it plans (it is correct anywhere), 64 rows per workgroup; never split.
    let nvidia = &simulated("NVIDIA").caps;
    let plan = rms_plan(nvidia, 4096, &forced).unwrap();
    assert_eq!(plan.primary_stage().entry, Entry::RmsNormPerInvocation);
    assert_eq!(plan.primary_stage().shape.workgroup_size, 64);
    assert!(!splits(&plan, 1));
}

/// LayerNorm's forward splits few long rows as RMSNorm's does: two stages, three words per
/// piece (mean, sum of squared deviations, the row's shift).
#[test]
fn layer_norm_splits_few_long_rows() {
    for device in devices() {
        let config = RmsNormConfig::new(1 << 20);
        let Ok(plan) = Plan::new(
            &device.caps,
            Norm::Layer,
            &config,
            &KernelOptions::default(),
        ) else {
            // Devices with too few storage buffers to split refuse such rows.
            assert!(
                device.caps.max_storage_buffers_per_stage < 4,
                "{}",
                device.name
            );
            continue;
        };
        let launch = plan.launch(1, WideOffsets::ANY).unwrap();
        let pieces = launch.split_pieces.expect("split");
        let entries: Vec<Entry> = launch.stages.iter().map(|s| s.entry).collect();
        assert_eq!(
            entries,
            [Entry::SplitPartials, Entry::SplitScale],
            "{}",
            device.name
        );
        assert_eq!(
            launch.chunks[0].scratch_bytes,
            12 * u64::from(pieces),
            "{}",
            device.name
        );
        check_launch(&device, &plan, &launch, 1, device.name);
        // Many rows do not split.
        assert!(!splits(&plan, 33));
    }
}

/// LayerNorm reads a row once where RMSNorm does, with the same workgroup and cache: on
/// every simulated GPU by default (rows of up to 32 f32 per invocation), never by default on
/// a CPU adapter, and forced anywhere a row fits 128 loads per invocation.
#[test]
fn layer_norm_reads_once_where_rms_norm_does() {
    let cpu_devices = ["lavapipe", "GL backend", "SwiftShader"];
    for device in devices() {
        let cpu = cpu_devices.iter().any(|p| device.name.starts_with(p));
        for hidden in [1024u32, 4096, 4097, 32768] {
            for read_once in [None, Some(true)] {
                let options = KernelOptions {
                    read_once,
                    ..KernelOptions::default()
                };
                let config = RmsNormConfig::new(hidden);
                let plans = [Norm::Rms, Norm::Layer]
                    .map(|norm| Plan::new(&device.caps, norm, &config, &options));
                let what = format!("{} n={hidden} {read_once:?}", device.name);
                let (rms, layer) = match plans {
                    [Ok(rms), Ok(layer)] => (rms, layer),
                    // Forced where a row does not fit: refused alike.
                    [Err(_), Err(e)] => {
                        assert!(read_once.is_some(), "{what}: {e}");
                        continue;
                    }
                    [rms, layer] => panic!("{what}: {:?} against {:?}", rms.err(), layer.err()),
                };
                let launch = |plan: &Plan| plan.launch(64, WideOffsets::ANY).unwrap().stages[0];
                let (r, l) = (launch(&rms), launch(&layer));
                let cached = l.entry == Entry::LayerNormCached;
                assert_eq!(r.entry == Entry::RmsNormCached, cached, "{what}");
                if cached {
                    assert_eq!(
                        (r.shape.workgroup_size, r.shape.cache_len),
                        (l.shape.workgroup_size, l.shape.cache_len),
                        "{what}"
                    );
                }
                // By default: never on a CPU adapter; on every GPU for these rows (32768 where
                // the device's workgroups are large enough).
                if read_once.is_none() && (cpu || hidden <= 4097) {
                    assert_eq!(cached, !cpu, "{what}");
                }
            }
        }
    }
}

/// With the reduction left to the plan, a forced workgroup size is honoured: on lavapipe
/// (one subgroup of 8) a workgroup of 64 takes the subgroup reduction, not a refusal.
#[test]
fn a_forced_workgroup_size_picks_a_reduction_that_fits() {
    let lavapipe = &simulated("lavapipe");
    let options = KernelOptions {
        workgroup_size: Some(64),
        ..KernelOptions::default()
    };
    let plan = rms_plan(&lavapipe.caps, 4096, &options).unwrap();
    let stage = plan.primary_stage();
    assert_eq!(stage.shape.reduction, ReductionKind::Subgroups);
    assert_eq!(stage.shape.workgroup_size, 64);
}

/// A split row too long for one dispatch's workgroups within the loop budget (a 4 GiB
/// binding, one scalar row of 2^30 - 73 elements: 2^19 pieces) is refused, not run past it.
#[test]
fn a_row_beyond_one_dispatch_is_refused() {
    let device = Simulated {
        name: "a GPU with 4 GiB bindings",
        caps: DeviceCaps {
            max_storage_binding: 4 << 30,
            max_buffer_size: 8 << 30,
            ..gpu(32, 32)
        },
        runs_subgroups: &[32],
    };
    let hidden = (1u32 << 30) - 73;
    let plan = rms_plan(&device.caps, hidden, &KernelOptions::default()).unwrap();
    match plan.launch(1, WideOffsets::NONE) {
        Ok(launch) => check_launch(&device, &plan, &launch, 1, device.name),
        Err(e) => assert!(matches!(e, Error::RowTooLong { .. }), "{e:?}"),
    }
}
