//! Throughput of RMSNorm and pRMSNorm against the speed of light on the chosen adapter:
//! `copy_buffer_to_buffer` of the same bytes (sol_copy) and the fastest of a few vec4 copy
//! compute shaders (sol_kernel), all timed the same way in the same run. Every kernel's
//! output is checked against the f64 reference before it is timed.
//!
//!   cargo bench --bench throughput [-- --quick]

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> wgpu_rmsnorm::Result<()> {
    native::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod native {

    use wgpu::util::DeviceExt;
    use wgpu_rmsnorm::reference::{self, F32_ABS_TOL, F32_REL_TOL};
    use wgpu_rmsnorm::shaders::COPY_VEC4;
    use wgpu_rmsnorm::timing::GpuTimer;
    use wgpu_rmsnorm::{
        block_on, BufferRegion, GpuContext, PartialRms, RmsNormBuffers, RmsNormConfig, Weights,
    };

    /// The shapes of shared/docs/benchmarking.md (rows, hidden).
    const SHAPES: [(u32, u32); 9] = [
        (1, 4096),
        (64, 4096),
        (1024, 4096),
        (4096, 1024),
        (4096, 4096),
        (16384, 1024),
        (65536, 128),
        (8, 262144),
        (1, 1048576),
    ];
    const QUICK_SHAPES: [(u32, u32); 4] = [(1, 4096), (1024, 4096), (4096, 4096), (65536, 128)];
    const COPY_WORKGROUP_SIZES: [u32; 3] = [8, 64, 256];
    const SAMPLES: usize = 10;
    const MIN_SAMPLE_SECONDS: f64 = 0.01;

    pub fn main() -> wgpu_rmsnorm::Result<()> {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
        let quick = std::env::args().any(|a| a == "--quick");
        let gpu = GpuContext::new_blocking()?;
        let device = gpu.device();
        let queue = gpu.queue();
        let info = gpu.adapter_info();
        let timestamps = GpuTimer::new(device, queue);
        // Copies have no compute pass: where timestamps cannot bracket them, time everything
        // by the wall clock so that all numbers are measured the same way.
        let timer = if timestamps.times_copies() {
            timestamps
        } else {
            GpuTimer::wall_clock()
        };
        println!(
            "adapter: {} ({:?}, {:?}); timing: {}; median of {SAMPLES} samples of >= {} ms",
            info.name,
            info.backend,
            info.device_type,
            if timer.uses_timestamps() {
                "timestamp queries"
            } else {
                "wall clock"
            },
            MIN_SAMPLE_SECONDS * 1e3
        );
        let copy_kernels: Vec<_> = COPY_WORKGROUP_SIZES
            .iter()
            .map(|&wg| (wg, copy_pipeline(device, wg)))
            .collect();
        println!(
            "{:>6} x {:<8} {:<9} {:>6} {:<24} {:>9} {:>8} {:>8} {:>10}",
            "rows", "hidden", "kernel", "p", "variant", "ms", "GB/s", "sol_copy", "sol_kernel"
        );
        let shapes: &[(u32, u32)] = if quick { &QUICK_SHAPES } else { &SHAPES };
        for &(rows, hidden) in shapes {
            let len = rows as usize * hidden as usize;
            let bytes = len as u64 * 4;
            let x = reference::sample_data(len, u64::from(hidden), 4.0);
            let storage = |usage| {
                device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: None,
                    contents: bytemuck::cast_slice(&x),
                    usage: wgpu::BufferUsages::STORAGE | usage,
                })
            };
            let x_buffer = storage(wgpu::BufferUsages::COPY_SRC);
            let y_buffer = storage(wgpu::BufferUsages::COPY_DST);
            let median = |record: &mut dyn FnMut(
                &mut wgpu::CommandEncoder,
                Option<wgpu::ComputePassTimestampWrites<'_>>,
            ) -> wgpu_rmsnorm::Result<()>| {
                block_on(timer.median(device, queue, SAMPLES, MIN_SAMPLE_SECONDS, record))
            };
            let gbps = |seconds: f64| 2.0 * bytes as f64 / seconds / 1e9;

            let copy_engine = median(&mut |encoder, _| {
                encoder.copy_buffer_to_buffer(&x_buffer, 0, &y_buffer, 0, bytes);
                Ok(())
            })?;
            let mut copy_kernel = f64::INFINITY;
            let mut best_wg = 0;
            for (wg, pipeline) in &copy_kernels {
                let bind_group = copy_bind_group(device, pipeline, &x_buffer, &y_buffer);
                let groups = (len as u32 / 4).div_ceil(*wg).clamp(1, 65535);
                let seconds = median(&mut |encoder, timestamp_writes| {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("copy"),
                        timestamp_writes,
                    });
                    pass.set_pipeline(pipeline);
                    pass.set_bind_group(0, &bind_group, &[]);
                    pass.dispatch_workgroups(groups, 1, 1);
                    Ok(())
                })?;
                if seconds < copy_kernel {
                    copy_kernel = seconds;
                    best_wg = *wg;
                }
            }
            let row = |kernel: &str, p: &str, variant: &str, seconds: f64| {
                println!(
                "{rows:>6} x {hidden:<8} {kernel:<9} {p:>6} {variant:<24} {:>9.3} {:>8.2} {:>8.2} {:>10.2}",
                seconds * 1e3,
                gbps(seconds),
                copy_engine / seconds,
                copy_kernel / seconds
            )
            };
            row("copy", "", "copy_buffer_to_buffer", copy_engine);
            row(
                "copy",
                "",
                &format!("vec4 kernel wg={best_wg}"),
                copy_kernel,
            );

            let cases = [
                ("RMSNorm", "", PartialRms::Full),
                ("pRMSNorm", "1/16", PartialRms::Fraction(1.0 / 16.0)),
                ("pRMSNorm", "1/2", PartialRms::Fraction(0.5)),
            ];
            for (name, p, partial) in cases {
                let config = RmsNormConfig::new(hidden).with_partial(partial);
                let y = block_on(gpu.rms_norm(&x, &config, Weights::NONE))?;
                let expected = reference::rms_norm(&x, &config, None, None)?;
                let stats = reference::compare(&y, &expected, F32_ABS_TOL, F32_REL_TOL);
                assert_eq!(
                    stats.failures, 0,
                    "{name} {rows}x{hidden} is wrong: {stats:?}"
                );
                let kernel = gpu.kernel(&config)?;
                let buffers = RmsNormBuffers {
                    input: BufferRegion::whole(&x_buffer),
                    output: BufferRegion::whole(&y_buffer),
                    gain: None,
                    bias: None,
                };
                let seconds = median(&mut |encoder, ts| {
                    kernel.encode_with_timestamps(device, encoder, &buffers, rows, ts)
                })?;
                let variant = format!(
                    "{:?} wg={}{}",
                    kernel.reduction(),
                    kernel.workgroup_size(),
                    if kernel.uses_vec4(&buffers) {
                        " vec4"
                    } else {
                        ""
                    }
                );
                row(name, p, &variant, seconds);
            }
        }
        Ok(())
    }

    fn copy_pipeline(device: &wgpu::Device, workgroup_size: u32) -> wgpu::ComputePipeline {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(COPY_VEC4.path),
            source: wgpu::ShaderSource::Wgsl(COPY_VEC4.text.into()),
        });
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("copy"),
            layout: None,
            module: &module,
            entry_point: Some("copy"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[("WG", f64::from(workgroup_size))],
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        })
    }

    fn copy_bind_group(
        device: &wgpu::Device,
        pipeline: &wgpu::ComputePipeline,
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("copy"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: src.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: dst.as_entire_binding(),
                },
            ],
        })
    }
}
