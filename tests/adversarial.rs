//! The public API tried as a careless user and as an attacker would, by class of failure.
//! Every case must end in a right answer or a typed error: no panic, no wgpu validation error
//! escaping, no silently wrong output. Each test prints how many cases it tried.
#![cfg(not(target_arch = "wasm32"))] // Native GPU tests; tests/web.rs runs in the browser.

mod common;

use common::*;
use wgpu_rmsnorm::reference;
use wgpu_rmsnorm::{
    BufferRegion, EpsMode, Error, Gain, GpuContext, KernelOptions, LayerNorm, LayerNormConfig,
    PartialRms, Reduction, RmsNorm, RmsNormBuffers, RmsNormConfig, Weights,
};

/// The high-level call, inside error scopes that fail the test on any wgpu error.
fn rms(
    gpu: &GpuContext,
    x: &[f32],
    config: &RmsNormConfig,
    w: Weights<'_>,
) -> Result<Vec<f32>, Error> {
    no_gpu_errors(gpu.device(), || gpu.rms_norm_blocking(x, config, w))
}

fn report(class: &str, cases: usize) {
    eprintln!("adversarial {class}: {cases} cases, all handled");
}

/// Class 1: gain and bias after a slightly smaller hidden size on one context (the reused
/// weights buffer was sized for 8n bytes, the bias placed after an aligned gain).
#[test]
fn weights_after_a_smaller_hidden_size() {
    let Some(turn) = gpu() else { return };
    let gpu: &GpuContext = &turn;
    let mut cases = 0;
    for (small, large) in [(4096, 4097), (128, 129), (64, 65), (1, 63), (255, 256)] {
        for hidden in [small, large] {
            let config = RmsNormConfig::new(hidden)
                .with_gain(Gain::Scale)
                .with_bias(true);
            let x = data(3 * hidden as usize, 1);
            let (g, b) = (data(hidden as usize, 2), data(hidden as usize, 3));
            let w = Weights {
                gain: Some(&g),
                bias: Some(&b),
            };
            let y = rms(gpu, &x, &config, w).unwrap();
            assert_matches_reference(&y, &x, &config, Some(&g), Some(&b), "weights");
            cases += 1;
        }
    }
    report("weights buffer reuse", cases);
}

/// Class 4: buffers whose size is not a multiple of 4 bytes, regions past the end, and
/// split rows whose partial sums would exceed a binding.
#[test]
fn odd_buffer_sizes_and_regions() {
    let Some(turn) = gpu() else { return };
    let gpu: &GpuContext = &turn;
    let device = gpu.device();
    let config = RmsNormConfig::new(3);
    let kernel = RmsNorm::new(device, &config, &KernelOptions::default()).unwrap();
    let x = data(3, 4);
    let buffer = |size: u64| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    let mut cases = 0;
    // 14 bytes hold 3 f32 and a half word: the call binds the 12 it needs.
    for (x_size, y_size, rows, ok) in [(14, 14, 1, true), (14, 10, 1, false), (12, 12, 2, false)] {
        let (xb, yb) = (buffer(x_size), buffer(y_size));
        gpu.queue().write_buffer(&xb, 0, bytemuck::cast_slice(&x));
        let buffers = RmsNormBuffers::new(BufferRegion::whole(&xb), BufferRegion::whole(&yb));
        let result = no_gpu_errors(device, || {
            let mut encoder = device.create_command_encoder(&Default::default());
            let r = kernel.encode(device, &mut encoder, &buffers, rows);
            gpu.queue().submit([encoder.finish()]);
            r
        });
        match (result, ok) {
            (Ok(()), true) => {
                let y = read_back(gpu, &yb);
                assert_matches_reference(&y[..3], &x, &config, None, None, "14-byte buffers");
            }
            (Err(e), false) => assert!(matches!(e, Error::BufferTooSmall { .. }), "{e:?}"),
            (r, _) => panic!("{x_size}/{y_size} bytes, {rows} rows: {r:?}"),
        }
        cases += 1;
    }
    // Forced split rows on many short rows: the partial sums stay within every binding.
    for hidden in [2u32, 3] {
        let options = KernelOptions {
            split_rows: Some(true),
            ..KernelOptions::default()
        };
        let config = RmsNormConfig::new(hidden);
        let x = data(50_000 * hidden as usize, 5);
        let y = run_kernel(gpu, &config, &options, &x, None, None);
        assert_matches_reference(&y, &x, &config, None, None, "split short rows");
        cases += 1;
    }
    report("buffer sizes and regions", cases);
}

/// Class 3: a tensor of exactly the device's max_buffer_size works (the staging buffer is
/// the tensor, the timestamps have their own), and a context stays usable after a call that
/// cannot be made.
#[test]
fn tensor_of_exactly_max_buffer_size() {
    let Some(turn) = gpu() else { return };
    let info = turn.adapter_info().clone();
    let max = 64u64 << 20;
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    descriptor.backends = info.backend.into();
    let instance = wgpu::Instance::new(descriptor);
    let adapter = wgpu_rmsnorm::block_on(instance.enumerate_adapters(info.backend.into()))
        .into_iter()
        .find(|a| a.get_info().name == info.name)
        .expect("the same adapter");
    let mut limits = adapter.limits();
    limits.max_buffer_size = max;
    limits.max_storage_buffer_binding_size = max;
    let (device, queue) = wgpu_rmsnorm::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: limits,
        required_features: adapter.features() & wgpu::Features::TIMESTAMP_QUERY,
        ..Default::default()
    }))
    .unwrap();
    let gpu = GpuContext::from_device(device, queue, KernelOptions::default());
    let hidden = 4096u32;
    let rows = (max / 4 / u64::from(hidden)) as usize;
    let config = RmsNormConfig::new(hidden);
    let x = data(rows * hidden as usize, 6);
    let y = rms(&gpu, &x, &config, Weights::NONE).unwrap();
    assert_matches_reference(&y, &x, &config, None, None, "max_buffer_size tensor");
    let one_more = data((rows + 1) * hidden as usize, 7);
    let e = rms(&gpu, &one_more, &config, Weights::NONE).unwrap_err();
    assert!(matches!(e, Error::TooManyRows { .. }), "{e:?}");
    let y = rms(&gpu, &x[..hidden as usize], &config, Weights::NONE).unwrap();
    assert_matches_reference(&y, &x[..hidden as usize], &config, None, None, "after");
    report("max_buffer_size", 3);
}

/// Class 6: pRMSNorm rows whose first k elements are tiny or huge and the rest is not.
#[test]
fn partial_rms_with_a_tail_of_another_magnitude() {
    let Some(turn) = gpu() else { return };
    let gpu: &GpuContext = &turn;
    let mut cases = 0;
    // x0 = 1e-20, a tail of 1e15: y = 1e35, not inf.
    let mut x = vec![1e15f32; 64];
    x[0] = 1e-20;
    let config = RmsNormConfig::new(64)
        .with_partial(PartialRms::Count(1))
        .with_eps(0.0);
    let y = rms(gpu, &x, &config, Weights::NONE).unwrap();
    assert_matches_reference(&y, &x, &config, None, None, "tiny k, large tail");
    assert!(
        y[1].is_finite() && (y[1] / 1e35 - 1.0).abs() < 1e-5,
        "{}",
        y[1]
    );
    cases += 1;
    // A ramp of magnitudes from 1e-30 to 1e10 (signs alternating), p = 0.25: the first k
    // need the rescaled sum and the tail is 40 orders larger (outputs up to ~1e31); and its
    // mirror, whose tail is far below the first k.
    let ramp: Vec<f32> = (0..4096)
        .map(|i| 10f32.powf(-30.0 + 40.0 * i as f32 / 4095.0) * if i % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    let mirror: Vec<f32> = ramp.iter().rev().copied().collect();
    for x in [&ramp, &mirror] {
        for eps in [0.0, 1e-6] {
            for reduction in reductions(gpu) {
                for read_once in [Some(false), Some(true)] {
                    let config = RmsNormConfig::new(4096)
                        .with_partial(PartialRms::Fraction(0.25))
                        .with_eps(eps);
                    let options = KernelOptions {
                        reduction,
                        read_once,
                        workgroup_size: Some(64).filter(|_| reduction != Reduction::SingleSubgroup),
                        ..KernelOptions::default()
                    };
                    // A forced option the plan cannot honour is refused, and that is all.
                    if let Err(e) = RmsNorm::new(gpu.device(), &config, &options) {
                        assert!(matches!(e, Error::UnsupportedOption { .. }), "{e:?}");
                        continue;
                    }
                    let y = run_kernel(gpu, &config, &options, x, None, None);
                    assert_matches_reference(&y, x, &config, None, None, "ramp");
                    cases += 1;
                }
            }
        }
    }
    report("pRMSNorm tails", cases);
}

/// Class 7: subnormal eps is refused (GPUs may flush it); the smallest normal eps works on
/// zero rows in both conventions.
#[test]
fn subnormal_eps() {
    let Some(turn) = gpu() else { return };
    let gpu: &GpuContext = &turn;
    let x = vec![0.0f32; 16];
    let b = data(16, 8);
    let mut cases = 0;
    for mode in [EpsMode::InsideRoot, EpsMode::AddedToRms] {
        for eps in [1e-40f32, 1e-45] {
            let config = RmsNormConfig::new(16).with_eps(eps).with_eps_mode(mode);
            let e = rms(gpu, &x, &config, Weights::NONE).unwrap_err();
            assert!(matches!(e, Error::SubnormalEps { .. }), "{e:?}");
            assert!(e.to_string().contains("MIN_POSITIVE"), "{e}");
            cases += 1;
        }
        let config = RmsNormConfig::new(16)
            .with_eps(f32::MIN_POSITIVE)
            .with_eps_mode(mode)
            .with_bias(true);
        let w = Weights {
            gain: None,
            bias: Some(&b),
        };
        let y = rms(gpu, &x, &config, w).unwrap();
        assert_eq!(y, b, "a zero row gives the bias");
        cases += 1;
    }
    // eps near the smallest normal f32 on tiny rows: eps dominates the scaled mean, which a
    // device may flush; the answer must not depend on that.
    for (x, k, mode) in [
        (vec![1e-19f32], 1, EpsMode::InsideRoot),
        (
            vec![f32::MIN_POSITIVE, 0.0, 0.0, 0.0],
            4,
            EpsMode::AddedToRms,
        ),
    ] {
        let config = RmsNormConfig::new(x.len() as u32)
            .with_partial(PartialRms::Count(k))
            .with_eps(1.2e-38)
            .with_eps_mode(mode);
        let y = rms(gpu, &x, &config, Weights::NONE).unwrap();
        assert_matches_reference(&y, &x, &config, None, None, &format!("{x:?} {mode:?}"));
        cases += 1;
    }
    report("subnormal eps", cases);
}

/// Class 8: LayerNorm with an outlier anywhere in the row keeps the f32 tolerance.
#[test]
fn layer_norm_outliers() {
    let Some(turn) = gpu() else { return };
    let gpu: &GpuContext = &turn;
    let mut cases = 0;
    for hidden in [64u32, 1000, 4096] {
        for position in [0, 1, hidden as usize / 2, hidden as usize - 1] {
            for outlier in [1000.0f32, -1e6, 3e4, 7.77e5] {
                // Not whole numbers: x - outlier is then inexact in f32.
                let mut x: Vec<f32> = (0..hidden as usize)
                    .map(|i| if i % 2 == 0 { 0.53 } else { -0.47 })
                    .collect();
                x[position] = outlier;
                let config = LayerNormConfig::new(hidden);
                for options in [
                    KernelOptions::default(),
                    KernelOptions::with_reduction(Reduction::WorkgroupTree),
                ] {
                    let kernel = LayerNorm::new(gpu.device(), &config, &options).unwrap();
                    let y = run_made_kernel(gpu, &kernel, hidden, &x, None, None);
                    let expected = reference::layer_norm(&x, &config, None, None).unwrap();
                    assert_close(&y, &expected, &format!("n={hidden} outlier at {position}"));
                    cases += 1;
                }
            }
        }
    }
    report("LayerNorm outliers", cases);
}

/// Class 9: a dispatch prepared by one kernel is refused by another.
#[test]
fn prepared_dispatch_of_another_kernel() {
    let Some(turn) = gpu() else { return };
    let gpu: &GpuContext = &turn;
    let device = gpu.device();
    let a_config = RmsNormConfig::new(4096).with_gain(Gain::Scale);
    let a = RmsNorm::new(device, &a_config, &KernelOptions::default()).unwrap();
    let b = RmsNorm::new(device, &RmsNormConfig::new(1024), &KernelOptions::default()).unwrap();
    let x = storage_buffer(gpu, &data(4096, 9));
    let y = storage_buffer(gpu, &data(4096, 10));
    let g = storage_buffer(gpu, &data(4096, 11));
    let buffers = RmsNormBuffers {
        input: BufferRegion::whole(&x),
        output: BufferRegion::whole(&y),
        gain: Some(BufferRegion::whole(&g)),
        bias: None,
        residual: None,
        sum: None,
        stats: None,
    };
    let prepared = a.prepare(device, &buffers, 1).unwrap();
    let mut encoder = device.create_command_encoder(&Default::default());
    let e = b.record(&prepared, &mut encoder, None).unwrap_err();
    assert!(matches!(e, Error::ForeignPreparedDispatch), "{e:?}");
    // The same config built twice is still two kernels.
    let a2 = RmsNorm::new(device, &a_config, &KernelOptions::default()).unwrap();
    assert!(a2.record(&prepared, &mut encoder, None).is_err());
    a.record(&prepared, &mut encoder, None).unwrap();
    gpu.queue().submit([encoder.finish()]);
    report("foreign prepared dispatch", 3);
}

/// Class 11: the public f64 reference takes any k and any row without panicking.
#[test]
fn reference_edges() {
    let row = data(8, 12);
    assert_eq!(reference::row_scale(&[], 3, 1e-6, EpsMode::InsideRoot), 0.0);
    assert_eq!(
        reference::row_scale(&row, 0, 1e-6, EpsMode::InsideRoot),
        0.0
    );
    assert_eq!(
        reference::row_scale(&row, 100, 1e-6, EpsMode::AddedToRms),
        reference::row_scale(&row, 8, 1e-6, EpsMode::AddedToRms)
    );
    let bad = RmsNormConfig::new(8).with_partial(PartialRms::Count(9));
    assert!(reference::rms_norm(&row, &bad, None, None).is_err());
    report("reference", 4);
}

/// Magnitudes at the edges of f32 in every position, through the default kernel.
#[test]
fn magnitudes_at_the_edges() {
    let Some(turn) = gpu() else { return };
    let gpu: &GpuContext = &turn;
    let specials = [
        f32::MAX,
        -f32::MAX,
        f32::MIN_POSITIVE,
        1e30,
        -1e-30,
        1.0,
        0.0,
        // Squares subnormal (below 2^-63): summed again rescaled, not lost to flushing.
        -7.7e-20,
        8.9e-16,
        // Subnormal: a first k of these alone counts as zero.
        1e-40,
    ];
    let mut cases = 0;
    let mut overflowing = 0;
    for hidden in [7u32, 64, 4097, 40_000] {
        for &a in &specials {
            for &b in &specials {
                let x: Vec<f32> = (0..hidden as usize)
                    .map(|i| if i % 3 == 0 { a } else { b })
                    .collect();
                for (partial, eps) in [
                    (PartialRms::Full, 1e-6),
                    (PartialRms::Count(1), 1e-6),
                    (PartialRms::Full, 0.0),
                ] {
                    let config = RmsNormConfig::new(hidden)
                        .with_partial(partial)
                        .with_eps(eps);
                    let y = rms(gpu, &x, &config, Weights::NONE).unwrap();
                    let expected = reference::rms_norm(&x, &config, None, None).unwrap();
                    if expected.iter().any(|v| v.abs() > f64::from(f32::MAX)) {
                        // The exact output is beyond f32: WGSL leaves overflow indeterminate
                        // (README, "Semantics"); only the call's success is promised.
                        overflowing += 1;
                        continue;
                    }
                    let what = format!("{a} {b} {partial:?} eps {eps}");
                    assert!(y.iter().all(|v| v.is_finite()), "{what}: not finite");
                    let subnormal = |v: &f32| *v != 0.0 && v.abs() < f32::MIN_POSITIVE;
                    if x.iter().any(subnormal) {
                        // Subnormal input: each output is exact, or as if the device flushed
                        // subnormals in the sum (llvmpipe's GL driver does, its Vulkan
                        // driver does not), or in the element too. WGSL allows either.
                        let k = config.rms_count().unwrap() as usize;
                        let flushed: Vec<f32> = x
                            .iter()
                            .map(|&v| if subnormal(&v) { 0.0 } else { v })
                            .collect();
                        let scale = reference::row_scale(&flushed, k, eps, EpsMode::InsideRoot);
                        let close = |got: f32, want: f64| {
                            (f64::from(got) - want).abs() <= 1e-6 + 1e-5 * want.abs()
                        };
                        for (i, &got) in y.iter().enumerate() {
                            let ok = close(got, expected[i])
                                || close(got, f64::from(x[i]) * scale)
                                || close(got, f64::from(flushed[i]) * scale);
                            assert!(ok, "{what}: element {i} is {got}, not {}", expected[i]);
                        }
                    } else {
                        assert_close(&y, &expected, &what);
                    }
                    cases += 1;
                }
            }
        }
    }
    eprintln!("magnitudes: {overflowing} cases whose exact output is beyond f32");
    report("magnitudes", cases);
}

/// Rows at the dispatch limits: 65,535, 65,536 and 65,537 rows, one row per workgroup.
#[test]
fn rows_at_the_dispatch_limit() {
    let Some(turn) = gpu() else { return };
    let gpu: &GpuContext = &turn;
    let config = RmsNormConfig::new(4);
    for rows in [65_535usize, 65_536, 65_537] {
        let x = data(rows * 4, rows as u64);
        let y = rms(gpu, &x, &config, Weights::NONE).unwrap();
        assert_matches_reference(&y, &x, &config, None, None, &format!("{rows} rows"));
    }
    report("dispatch limits", 3);
}

/// Eight threads on one context, mixed shapes, each checked.
#[test]
fn eight_threads_on_one_context() {
    let Some(turn) = gpu() else { return };
    let gpu: &GpuContext = &turn;
    std::thread::scope(|scope| {
        for t in 0..8u32 {
            scope.spawn(move || {
                for i in 0..6u32 {
                    let hidden = 1 + (t * 37 + i * 101) % 700;
                    let config =
                        RmsNormConfig::new(hidden).with_partial(PartialRms::Count(1 + hidden / 3));
                    let x = data(5 * hidden as usize, u64::from(t * 10 + i));
                    let y = gpu.rms_norm_blocking(&x, &config, Weights::NONE).unwrap();
                    assert_matches_reference(&y, &x, &config, None, None, "thread");
                }
            });
        }
    });
    report("threads", 48);
}

/// Memory stays flat: resident memory grows by less than 1 MiB from call 200 to call 2000
/// of mixed shapes.
#[test]
fn memory_flat_over_mixed_calls() {
    let Some(turn) = gpu() else { return };
    let gpu: &GpuContext = &turn;
    let call = |i: u32| {
        let hidden = [64u32, 100, 256, 1000][i as usize % 4];
        let config = RmsNormConfig::new(hidden)
            .with_eps(1e-6 * (1 + i % 7) as f32)
            .with_partial(PartialRms::Count(1 + i % hidden));
        let x = data(((i % 5) + 1) as usize * hidden as usize, u64::from(i));
        gpu.rms_norm_blocking(&x, &config, Weights::NONE).unwrap();
    };
    (0..200).for_each(call);
    let before = resident_kib();
    (200..2000).for_each(call);
    let after = resident_kib();
    eprintln!("resident memory, call 200: {before} KiB, call 2000: {after} KiB");
    assert!(after < before + 1024, "{before} -> {after} KiB");
    report("memory", 2000);
}

/// Another device on the shared context's adapter, from `instance` (one per test: wgpu's
/// buffers compare by id, and ids are only unique within an instance).
fn second_device(gpu: &GpuContext, instance: &wgpu::Instance) -> (wgpu::Device, wgpu::Queue) {
    let info = gpu.adapter_info();
    let adapter = wgpu_rmsnorm::block_on(instance.enumerate_adapters(info.backend.into()))
        .into_iter()
        .find(|a| a.get_info().name == info.name)
        .expect("the same adapter");
    wgpu_rmsnorm::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: adapter.features() & wgpu::Features::SUBGROUP,
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .expect("a second device")
}

fn instance_for(gpu: &GpuContext) -> wgpu::Instance {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    descriptor.backends = gpu.adapter_info().backend.into();
    wgpu::Instance::new(descriptor)
}

/// Class 4: buffers of another device, and another device passed to a call: typed errors,
/// no wgpu validation error escaping.
#[test]
fn foreign_devices() {
    let Some(turn) = gpu() else { return };
    let instance = instance_for(&turn);
    let (device, _queue) = second_device(&turn, &instance);
    let device = &device;
    let (other, _queue) = second_device(&turn, &instance);
    let config = RmsNormConfig::new(64);
    let kernel = RmsNorm::new(device, &config, &KernelOptions::default()).unwrap();
    let foreign = |d: &wgpu::Device| {
        d.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 64 * 4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    let (x, y) = (foreign(device), foreign(device));
    let (fx, fy) = (foreign(&other), foreign(&other));
    let mut cases = 0;
    for (input, output) in [(&fx, &y), (&x, &fy), (&fx, &fy)] {
        let buffers = RmsNormBuffers::new(BufferRegion::whole(input), BufferRegion::whole(output));
        let e = no_gpu_errors(device, || kernel.prepare(device, &buffers, 1)).unwrap_err();
        assert!(matches!(e, Error::BufferRefused(_)), "{e:?}");
        cases += 1;
    }
    let buffers = RmsNormBuffers::new(BufferRegion::whole(&x), BufferRegion::whole(&y));
    let mut encoder = other.create_command_encoder(&Default::default());
    let e = kernel
        .encode(&other, &mut encoder, &buffers, 1)
        .unwrap_err();
    assert!(matches!(e, Error::WrongDevice), "{e:?}");
    report("foreign devices", cases + 1);
}

/// Class 2: after the device is destroyed every entry returns DeviceLost (or another typed
/// error), never panics; a new context works again.
#[test]
fn device_loss_at_every_entry() {
    let Some(turn) = gpu() else { return };
    let shared: &GpuContext = &turn;
    let config = RmsNormConfig::new(256).with_gain(Gain::Scale);
    let x = data(4 * 256, 13);
    let g = data(256, 14);
    let w = Weights {
        gain: Some(&g),
        bias: None,
    };
    let instance = instance_for(shared);
    let (device, queue) = second_device(shared, &instance);
    let gpu = GpuContext::from_device(device.clone(), queue, KernelOptions::default());
    gpu.rms_norm_blocking(&x, &config, w).unwrap();
    let kernel = RmsNorm::new(&device, &config, &KernelOptions::default()).unwrap();
    let buffer = |contents: &[f32]| {
        use wgpu::util::DeviceExt;
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(contents),
            usage: wgpu::BufferUsages::STORAGE,
        })
    };
    let (xb, yb, gb) = (buffer(&x), buffer(&x), buffer(&g));
    let buffers = RmsNormBuffers {
        input: BufferRegion::whole(&xb),
        output: BufferRegion::whole(&yb),
        gain: Some(BufferRegion::whole(&gb)),
        bias: None,
        residual: None,
        sum: None,
        stats: None,
    };
    let prepared = kernel.prepare(&device, &buffers, 4).unwrap();

    device.destroy();
    let mut cases = 0;
    // The high-level call: the repeated call (bind groups kept) and a new shape.
    for rows in [4usize, 3] {
        let e = gpu
            .rms_norm_blocking(&x[..rows * 256], &config, w)
            .unwrap_err();
        assert!(matches!(e, Error::DeviceLost(_)), "{e:?}");
        cases += 1;
    }
    let e = gpu.layer_norm_blocking(&x, &LayerNormConfig::new(256), Weights::NONE);
    assert!(matches!(e, Err(Error::DeviceLost(_))), "{e:?}");
    // The low-level calls.
    let mut encoder = device.create_command_encoder(&Default::default());
    let e = kernel
        .encode(&device, &mut encoder, &buffers, 4)
        .unwrap_err();
    assert!(matches!(e, Error::DeviceLost(_)), "{e:?}");
    let e = kernel.prepare(&device, &buffers, 2).unwrap_err();
    assert!(matches!(e, Error::DeviceLost(_)), "{e:?}");
    // Recording what was prepared before the loss records into a dead encoder: no panic.
    kernel.record(&prepared, &mut encoder, None).unwrap();
    drop(encoder.finish());
    // A kernel made after the loss: made (its pipelines are invalid) or refused, never a
    // panic; its calls are refused.
    if let Ok(late) = RmsNorm::new(&device, &config, &KernelOptions::default()) {
        let mut encoder = device.create_command_encoder(&Default::default());
        assert!(late.encode(&device, &mut encoder, &buffers, 4).is_err());
    }
    cases += 6;
    // A context the crate opened learns of the loss from its callback.
    let own = GpuContext::new_blocking().unwrap();
    own.rms_norm_blocking(&x, &config, w).unwrap();
    own.device().destroy();
    let e = own.rms_norm_blocking(&x, &config, w).unwrap_err();
    assert!(matches!(e, Error::DeviceLost(_)), "{e:?}");
    cases += 1;
    // A new context works.
    let (device, queue) = second_device(shared, &instance);
    let fresh = GpuContext::from_device(device, queue, KernelOptions::default());
    let y = fresh.rms_norm_blocking(&x, &config, w).unwrap();
    assert_matches_reference(&y, &x, &config, Some(&g), None, "after a loss");
    report("device loss", cases + 1);
}

/// Limits at their edges on a device whose storage bindings hold 64 KiB: the longest row
/// that fits one binding (with its alignment slack) and one element more, and calls of
/// exactly one binding's rows and one row more (one dispatch chunk, then two).
#[test]
fn binding_limit_edges() {
    let Some(turn) = gpu() else { return };
    let shared: &GpuContext = &turn;
    let limit = 64u32 << 10;
    let instance = instance_for(shared);
    let info = shared.adapter_info();
    let adapter = wgpu_rmsnorm::block_on(instance.enumerate_adapters(info.backend.into()))
        .into_iter()
        .find(|a| a.get_info().name == info.name)
        .expect("the same adapter");
    let mut limits = adapter.limits();
    limits.max_storage_buffer_binding_size = u64::from(limit);
    let (device, queue) = wgpu_rmsnorm::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: limits.clone(),
        ..Default::default()
    }))
    .unwrap();
    let gpu = GpuContext::from_device(device, queue, KernelOptions::default());
    let slack = u64::from(limits.min_storage_buffer_offset_alignment) + 16;
    let longest = ((u64::from(limit) - slack) / 4) as u32;
    let mut cases = 0;
    for (hidden, fits) in [(longest, true), (longest + 1, false)] {
        let config = RmsNormConfig::new(hidden);
        let x = data(2 * hidden as usize, 15);
        match rms(&gpu, &x, &config, Weights::NONE) {
            Ok(y) if fits => assert_matches_reference(&y, &x, &config, None, None, "longest"),
            Err(Error::RowExceedsBindingLimit { .. }) if !fits => {}
            other => panic!("hidden {hidden}: {other:?}"),
        }
        cases += 1;
    }
    let hidden = 1000u32;
    let rows_per_binding = ((u64::from(limit) - slack) / (4 * u64::from(hidden))) as usize;
    for rows in [rows_per_binding - 1, rows_per_binding, rows_per_binding + 1] {
        let config = RmsNormConfig::new(hidden).with_partial(PartialRms::Count(7));
        let x = data(rows * hidden as usize, rows as u64);
        let y = rms(&gpu, &x, &config, Weights::NONE).unwrap();
        assert_matches_reference(&y, &x, &config, None, None, &format!("{rows} rows"));
        cases += 1;
    }
    report("binding limit edges", cases);
}
