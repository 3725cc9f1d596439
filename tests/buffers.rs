//! The low-level API on the caller's buffers: offsets, guard words, chunking past the
//! binding limit, devices with low limits and no subgroups.
#![cfg(not(target_arch = "wasm32"))] // Native GPU tests; tests/web.rs runs in the browser.

mod common;

use common::*;
use wgpu_rmsnorm::shaders::ElemLayout;
use wgpu_rmsnorm::{
    bf16, block_on, BufferRegion, Error, Gain, GpuContext, KernelOptions, PartialRms, Reduction,
    RmsNorm, RmsNormBuffers, RmsNormConfig, Weights,
};

const GUARD: f32 = -12345.678;

/// Writes y at a non-zero offset inside a larger buffer and checks that the words around
/// the output keep their value.
/// `tail`: guard words after each buffer's data (0: the buffer ends with its data).
fn check_offsets(
    gpu: &GpuContext,
    n: u32,
    rows: u32,
    offsets: [u64; 4],
    tail: usize,
    expect: ElemLayout,
) {
    let device = gpu.device();
    let len = (n * rows) as usize;
    let x = data(len, u64::from(n));
    let g = data(n as usize, 5);
    let b = data(n as usize, 6);
    let config = RmsNormConfig::new(n)
        .with_gain(Gain::UnitOffset)
        .with_bias(true)
        .with_partial(PartialRms::Fraction(0.5));
    // Each buffer holds GUARD everywhere but its data, which starts at its offset.
    let placed = |data: &[f32], offset: u64| {
        let start = (offset / 4) as usize;
        let mut all = vec![GUARD; start + data.len() + tail];
        all[start..start + data.len()].copy_from_slice(data);
        storage_buffer(gpu, &all)
    };
    let [xo, yo, go, bo] = offsets;
    let x_buffer = placed(&x, xo);
    let y_buffer = placed(&vec![GUARD; len], yo);
    let g_buffer = placed(&g, go);
    let b_buffer = placed(&b, bo);
    let buffers = RmsNormBuffers {
        input: BufferRegion {
            buffer: &x_buffer,
            offset: xo,
        },
        output: BufferRegion {
            buffer: &y_buffer,
            offset: yo,
        },
        gain: Some(BufferRegion {
            buffer: &g_buffer,
            offset: go,
        }),
        bias: Some(BufferRegion {
            buffer: &b_buffer,
            offset: bo,
        }),
        residual: None,
        sum: None,
        stats: None,
    };
    let y_all = no_gpu_errors(device, || {
        let kernel = RmsNorm::new(device, &config, &KernelOptions::default()).unwrap();
        assert_eq!(
            kernel.elem_layout(&buffers, rows).unwrap(),
            expect,
            "{offsets:?}"
        );
        let mut encoder = device.create_command_encoder(&Default::default());
        kernel.encode(device, &mut encoder, &buffers, rows).unwrap();
        gpu.queue().submit([encoder.finish()]);
        read_back(gpu, &y_buffer)
    });
    let start = (yo / 4) as usize;
    let (before, rest) = y_all.split_at(start);
    let (y, after) = rest.split_at(len);
    assert!(
        before.iter().chain(after).all(|&v| v == GUARD),
        "guard words changed"
    );
    assert_matches_reference(y, &x, &config, Some(&g), Some(&b), &format!("{offsets:?}"));
}

#[test]
fn offsets_scalar_and_vec4_with_guard_words() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    use ElemLayout::{Scalar, Vec4, Vec4Masked};
    let check = |n, rows, offsets, tail, expect| check_offsets(gpu, n, rows, offsets, tail, expect);
    check(1024, 5, [0, 0, 0, 0], 67, Vec4);
    check(1024, 5, [16, 272, 48, 512], 67, Vec4);
    // x and y at different lanes of a vec4: scalar.
    check(1024, 5, [20, 0, 0, 0], 67, Scalar);
    check(1024, 5, [0, 4, 0, 0], 67, Scalar);
    check(257, 3, [12, 1028, 260, 4], 67, Scalar);
    check(3, 9, [4, 8, 12, 16], 67, Scalar);
    // x and y at one lane, the weights at any: vec4 with masked row edges, whatever the
    // hidden size, the guard words around every row's first and last Elem intact.
    check(1024, 5, [0, 0, 0, 8], 67, Vec4Masked);
    check(1024, 5, [4, 260, 8, 12], 67, Vec4Masked);
    check(257, 3, [0, 0, 0, 0], 67, Vec4Masked);
    check(257, 3, [12, 1036, 4, 8], 67, Vec4Masked);
    check(1023, 7, [8, 24, 12, 0], 67, Vec4Masked);
    check(4098, 3, [4, 4, 4, 4], 67, Vec4Masked);
    check(3, 9, [4, 20, 12, 16], 67, Vec4Masked);
    check(1, 37, [12, 12, 0, 4], 67, Vec4Masked);
    check(5, 40, [0, 0, 4, 8], 3, Vec4Masked);
    // A buffer that ends with its data short of a whole vec4 cannot be bound as vec4s.
    check(257, 3, [0, 0, 0, 0], 0, Scalar);
    check(5, 40, [0, 0, 12, 12], 0, Vec4Masked);
    check(5, 41, [0, 0, 12, 12], 0, Scalar);
    check(5, 40, [0, 0, 4, 12], 0, Scalar);
}

/// 16-bit tensors group four elements in 8 bytes: rows at any element where x and y lie at
/// one byte offset modulo 8 and each buffer reaches the end of its last group; vec4 where
/// every offset is a multiple of 8 bytes and n of 4.
#[test]
fn sixteen_bit_offsets_choose_the_layout_by_groups_of_eight_bytes() {
    let Some(turn) = gpu() else { return };
    let gpu: &GpuContext = &turn;
    use ElemLayout::{Scalar, Vec4, Vec4Masked};
    // (n, rows, x and y byte offsets, bytes after the data, expected), bf16 tensors.
    let cases: [(u32, u32, [u64; 2], u64, ElemLayout); 8] = [
        (4096, 2, [0, 8], 8, Vec4),
        (4096, 2, [2, 10], 8, Vec4Masked),
        (4097, 2, [0, 0], 8, Vec4Masked),
        (4097, 2, [2, 10], 8, Vec4Masked),
        (4097, 2, [6, 22], 8, Vec4Masked),
        (4097, 2, [2, 6], 8, Scalar),
        (4097, 2, [2, 4], 8, Scalar),
        // x ends 2 bytes into a group and its buffer with it.
        (4097, 1, [0, 0], 0, Scalar),
    ];
    for (n, rows, [xo, yo], tail, expect) in cases {
        let config = RmsNormConfig::new(n).with_dtype(wgpu_rmsnorm::DType::Bf16);
        let bytes = u64::from(n * rows) * 2;
        let buffer = |offset: u64| {
            gpu.device().create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: (offset + bytes + tail).next_multiple_of(4),
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        let (x, y) = (buffer(xo), buffer(yo));
        let buffers = RmsNormBuffers::new(
            BufferRegion {
                buffer: &x,
                offset: xo,
            },
            BufferRegion {
                buffer: &y,
                offset: yo,
            },
        );
        let kernel = RmsNorm::new(gpu.device(), &config, &KernelOptions::default()).unwrap();
        assert_eq!(
            kernel.elem_layout(&buffers, rows).unwrap(),
            expect,
            "n {n} x {rows}, offsets {xo} {yo}, {tail} bytes after"
        );
    }
}

#[test]
fn buffers_are_reused_between_calls() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    let gpu = GpuContext::from_device(
        gpu.device().clone(),
        gpu.queue().clone(),
        Default::default(),
    );
    let config = RmsNormConfig::new(256);
    gpu.rms_norm_blocking(&data(256 * 8, 1), &config, Weights::NONE)
        .unwrap();
    let held = gpu.scratch_bytes();
    gpu.rms_norm_blocking(&data(256 * 4, 2), &config, Weights::NONE)
        .unwrap();
    assert_eq!(
        gpu.scratch_bytes(),
        held,
        "a smaller call must reuse the buffers"
    );
    gpu.rms_norm_blocking(&data(256 * 64, 3), &config, Weights::NONE)
        .unwrap();
    assert!(gpu.scratch_bytes() > held, "a larger call grows them");
    let held = gpu.scratch_bytes();
    gpu.rms_norm_blocking(&data(256 * 8, 1), &config, Weights::NONE)
        .unwrap();
    assert_eq!(gpu.scratch_bytes(), held);
    // Input, output, staging: three tensors, plus O(hidden) for the weights.
    assert!(held <= 3 * 256 * 64 * 4 + 4096, "{held} bytes");
}

/// A second device on the same adapter with lower limits and no optional features.
/// The caller holds the GPU turn while it uses the device.
fn limited_device(
    limits: impl FnOnce(&mut wgpu::Limits),
) -> Option<(wgpu::Device, wgpu::Queue, GpuTurn)> {
    let turn = gpu()?;
    let info = turn.adapter_info();
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    descriptor.backends = info.backend.into();
    let instance = wgpu::Instance::new(descriptor);
    let adapter = block_on(instance.enumerate_adapters(info.backend.into()))
        .into_iter()
        .find(|a| a.get_info().name == info.name)
        .expect("the same adapter again");
    let mut required_limits = wgpu::Limits::downlevel_defaults().using_resolution(adapter.limits());
    required_limits.max_compute_workgroups_per_dimension = 65535;
    required_limits.max_compute_invocations_per_workgroup = 256;
    required_limits.max_compute_workgroup_size_x = 256;
    limits(&mut required_limits);
    let (device, queue) = block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits,
        ..Default::default()
    }))
    .expect("limited device");
    Some((device, queue, turn))
}

#[test]
fn rows_beyond_the_binding_limit_are_split_into_chunks() {
    let Some((device, queue, _turn)) = limited_device(|l| {
        l.max_storage_buffer_binding_size = 64 * 1024;
    }) else {
        return;
    };
    let gpu = GpuContext::from_device(device, queue, KernelOptions::default());
    // 1000-element rows: 15 rows per 64 KiB binding, so 100 rows take 7 dispatches. Odd
    // rows (vec4 loads with masked edges) start each chunk at another phase.
    for n in [1000u32, 1001, 1024] {
        let x = data(100 * n as usize, 9);
        let config = RmsNormConfig::new(n).with_partial(PartialRms::Fraction(0.1));
        let y = no_gpu_errors(gpu.device(), || {
            gpu.rms_norm_blocking(&x, &config, Weights::NONE)
        })
        .unwrap();
        assert_matches_reference(&y, &x, &config, None, None, &format!("chunked n={n}"));
    }
    // 16-bit rows of odd length in chunks: packed words shared at every row boundary,
    // including where one chunk ends and the next begins.
    for n in [2001u32, 2003] {
        let x: Vec<bf16> = data(100 * n as usize, 10)
            .iter()
            .map(|&v| bf16::from_f32(v))
            .collect();
        let widened: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        let config = RmsNormConfig::new(n).with_dtype(wgpu_rmsnorm::DType::Bf16);
        let y = no_gpu_errors(gpu.device(), || {
            gpu.rms_norm_blocking(&x, &config, Weights::<bf16>::default())
        })
        .unwrap();
        let y: Vec<f32> = y.iter().map(|v| v.to_f32()).collect();
        let expected = wgpu_rmsnorm::reference::rms_norm(&widened, &config, None, None).unwrap();
        let stats = wgpu_rmsnorm::reference::compare_rounded(
            &y,
            &expected,
            config.dtype,
            wgpu_rmsnorm::reference::F32_ABS_TOL,
            wgpu_rmsnorm::reference::F32_REL_TOL,
        );
        assert_eq!(stats.failures, 0, "chunked bf16 n={n}: {stats:?}");
    }
    // A row of 16385 elements cannot fit in one 64 KiB binding at all.
    let e = RmsNorm::new(
        gpu.device(),
        &RmsNormConfig::new(16385),
        &KernelOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::RowExceedsBindingLimit { limit: 65536, .. }),
        "{e:?}"
    );
    eprintln!("hidden 16385 with a 64 KiB binding limit: {e}");
}

#[test]
fn tensors_beyond_the_buffer_limit_are_refused() {
    let Some((device, queue, _turn)) = limited_device(|l| {
        l.max_buffer_size = 1 << 20;
    }) else {
        return;
    };
    let gpu = GpuContext::from_device(device, queue, KernelOptions::default());
    let x = vec![1.0f32; (1 << 18) + 1024];
    let e = no_gpu_errors(gpu.device(), || {
        gpu.rms_norm_blocking(&x, &RmsNormConfig::new(1024), Weights::NONE)
    })
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::TooManyRows {
                rows: 257,
                hidden: 1024
            }
        ),
        "{e:?}"
    );
    eprintln!("257 x 1024 with a 1 MiB buffer limit: {e}");
}

#[test]
fn devices_without_subgroups_use_the_tree() {
    let Some((device, queue, _turn)) = limited_device(|_| {}) else {
        return;
    };
    assert!(!device.features().contains(wgpu::Features::SUBGROUP));
    let config = RmsNormConfig::new(300);
    for reduction in [Reduction::Subgroups, Reduction::SingleSubgroup] {
        let options = KernelOptions::with_reduction(reduction);
        let e = RmsNorm::new(&device, &config, &options).unwrap_err();
        assert!(matches!(e, Error::SubgroupsUnsupported { .. }), "{e:?}");
        eprintln!("{reduction:?} without subgroups: {e}");
    }
    let gpu = GpuContext::from_device(device, queue, KernelOptions::default());
    assert_eq!(
        gpu.kernel(&config).unwrap().reduction(),
        Reduction::WorkgroupTree
    );
    let x = data(300 * 7, 8);
    let y = gpu.rms_norm_blocking(&x, &config, Weights::NONE).unwrap();
    assert_matches_reference(&y, &x, &config, None, None, "no subgroups");
}

/// `prepare` once, `record` every step: the same bind groups serve new data.
#[test]
fn a_prepared_dispatch_is_recorded_again_with_new_data() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    let device = gpu.device();
    let config = RmsNormConfig::new(1000).with_partial(PartialRms::Count(100));
    let kernel = RmsNorm::new(device, &config, &KernelOptions::default()).unwrap();
    let x_buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 5 * 1000 * 4,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let y_buffer = storage_buffer(gpu, &[0.0; 5 * 1000]);
    let buffers = RmsNormBuffers::new(
        BufferRegion::whole(&x_buffer),
        BufferRegion::whole(&y_buffer),
    );
    let prepared = kernel.prepare(device, &buffers, 5).unwrap();
    for step in 0..3 {
        let x = data(5 * 1000, 100 + step);
        let y = no_gpu_errors(device, || {
            gpu.queue()
                .write_buffer(&x_buffer, 0, bytemuck::cast_slice(&x));
            let mut encoder = device.create_command_encoder(&Default::default());
            kernel.record(&prepared, &mut encoder, None).unwrap();
            gpu.queue().submit([encoder.finish()]);
            read_back(gpu, &y_buffer)
        });
        assert_matches_reference(&y, &x, &config, None, None, &format!("step {step}"));
    }
}

/// eps and k travel in the uniform buffer: 200 distinct eps values (and pRMSNorm's k) compile
/// no pipeline after the first call, and the context keeps a bounded number of plans.
#[test]
fn new_eps_values_compile_no_pipelines() {
    let Some(turn) = gpu() else { return };
    let gpu: &GpuContext = &turn;
    let x = data(16 * 256, 5);
    let first = RmsNormConfig::new(256).with_eps(1e-6);
    gpu.rms_norm_blocking(&x, &first, Weights::NONE).unwrap();
    let pipelines = gpu.pipeline_count();
    let rss_before = resident_kib();
    for i in 0..200 {
        let eps = 1e-6 * (1.0 + i as f32 / 8.0);
        let config = first
            .with_eps(eps)
            .with_partial(PartialRms::Count(1 + i % 256));
        let y = gpu.rms_norm_blocking(&x, &config, Weights::NONE).unwrap();
        if i % 50 == 0 {
            let expected = wgpu_rmsnorm::reference::rms_norm(&x, &config, None, None).unwrap();
            assert_close(&y, &expected, &format!("eps {eps}"));
        }
    }
    assert_eq!(
        gpu.pipeline_count(),
        pipelines,
        "a new eps or k compiled pipelines"
    );
    eprintln!(
        "200 eps values: {pipelines} pipelines, resident memory {} -> {} KiB",
        rss_before,
        resident_kib()
    );
}
