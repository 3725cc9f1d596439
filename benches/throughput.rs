//! Throughput of RMSNorm, pRMSNorm and LayerNorm against the speed of light on the chosen
//! adapter: `copy_buffer_to_buffer` of the same bytes (sol_copy) and the fastest of a few
//! vec4 copy compute shaders (sol_kernel), all timed the same way in the same run. Every
//! kernel's output is checked against the f64 reference before it is timed.
//!
//!   cargo xtask bench [--quick] [--json PATH]
//!   (= cargo bench --bench throughput -- [--quick] [--json PATH])

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    match native::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::fmt::Write as _;
    use wgpu::util::DeviceExt;
    use wgpu_rmsnorm::reference::{self, F32_ABS_TOL, F32_REL_TOL};
    use wgpu_rmsnorm::shaders::COPY_VEC4;
    use wgpu_rmsnorm::timing::{GpuTimer, PassTimestamps};
    use wgpu_rmsnorm::{
        block_on, BufferRegion, GpuContext, LayerNormConfig, PartialRms, RmsNormBuffers,
        RmsNormConfig, Weights,
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
    const QUICK_SHAPES: [(u32, u32); 4] = [(64, 4096), (4096, 4096), (65536, 128), (1, 1048576)];
    const COPY_WORKGROUP_SIZES: [u32; 3] = [8, 64, 256];
    const SAMPLES: usize = 10;
    const MIN_SAMPLE_SECONDS: f64 = 0.01;
    const ROUND_TRIPS: usize = 50;

    type BenchResult<T> = Result<T, String>;

    struct Record {
        rows: u32,
        hidden: u32,
        kernel: &'static str,
        p: Option<f64>,
        variant: String,
        seconds: f64,
        gbps: f64,
        sol_copy: f64,
        sol_kernel: f64,
        library_bytes: u64,
    }

    pub fn main() -> BenchResult<()> {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
        let mut quick = false;
        let mut json = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--json" => json = Some(args.next().ok_or("--json needs a path")?),
                "--bench" => {}
                other => {
                    return Err(format!(
                        "unknown argument {other}: use --quick, --json PATH"
                    ))
                }
            }
        }
        let gpu = GpuContext::new_blocking().map_err(|e| e.to_string())?;
        let info = gpu.adapter_info().clone();
        let timestamps = GpuTimer::new(gpu.device(), gpu.queue());
        // Copies have no compute pass: where timestamps cannot bracket them, everything is
        // timed by the wall clock so that all numbers are measured the same way.
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
        println!(
            "{:>6} x {:<8} {:<9} {:>5} {:<26} {:>9} {:>7} {:>8} {:>10} {:>9}",
            "rows",
            "hidden",
            "kernel",
            "p",
            "variant",
            "ms",
            "GB/s",
            "sol_copy",
            "sol_kernel",
            "lib bytes"
        );
        let shapes: &[(u32, u32)] = if quick { &QUICK_SHAPES } else { &SHAPES };
        let mut records = Vec::new();
        for &(rows, hidden) in shapes {
            records.extend(bench_shape(&gpu, &timer, rows, hidden)?);
        }
        print_ratios(&records);
        let (call, empty) = round_trips(&gpu)?;
        println!(
            "round trip, 1 x 4096 RMSNorm call (upload, dispatch, readback): {:.3} ms; \
             empty dispatch round trip: {:.3} ms; ratio {:.2}",
            call * 1e3,
            empty * 1e3,
            call / empty
        );
        if let Some(path) = json {
            std::fs::write(&path, to_json(&info, &records, call, empty))
                .map_err(|e| format!("writing {path}: {e}"))?;
            println!("wrote {} records to {path}", records.len());
        }
        Ok(())
    }

    fn bench_shape(
        gpu: &GpuContext,
        timer: &GpuTimer,
        rows: u32,
        hidden: u32,
    ) -> BenchResult<Vec<Record>> {
        let device = gpu.device();
        let queue = gpu.queue();
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
            PassTimestamps<'_>,
        ) -> wgpu_rmsnorm::Result<()>| {
            block_on(timer.median(device, queue, SAMPLES, MIN_SAMPLE_SECONDS, record))
                .map_err(|e| e.to_string())
        };
        let gbps = |seconds: f64| 2.0 * bytes as f64 / seconds / 1e9;

        let copy_engine = median(&mut |encoder, _| {
            encoder.copy_buffer_to_buffer(&x_buffer, 0, &y_buffer, 0, bytes);
            Ok(())
        })?;
        let (mut copy_kernel, mut best_wg) = (f64::INFINITY, 0);
        for wg in COPY_WORKGROUP_SIZES {
            let pipeline = copy_pipeline(device, wg);
            let bind_group = copy_bind_group(device, &pipeline, &x_buffer, &y_buffer);
            let groups = (len as u32 / 4).div_ceil(wg).clamp(1, 65535);
            let seconds = median(&mut |encoder, timestamp_writes| {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("copy"),
                    timestamp_writes,
                });
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(groups, 1, 1);
                Ok(())
            })?;
            if seconds < copy_kernel {
                (copy_kernel, best_wg) = (seconds, wg);
            }
        }
        let mut records = Vec::new();
        let mut record = |kernel: &'static str,
                          p: Option<f64>,
                          variant: String,
                          seconds: f64,
                          library_bytes: u64| {
            let r = Record {
                rows,
                hidden,
                kernel,
                p,
                variant,
                seconds,
                gbps: gbps(seconds),
                sol_copy: copy_engine / seconds,
                sol_kernel: copy_kernel / seconds,
                library_bytes,
            };
            println!(
                "{:>6} x {:<8} {:<9} {:>5} {:<26} {:>9.3} {:>7.2} {:>8.2} {:>10.2} {:>9}",
                r.rows,
                r.hidden,
                r.kernel,
                r.p.map_or(String::new(), |p| format!("{p}")),
                r.variant,
                r.seconds * 1e3,
                r.gbps,
                r.sol_copy,
                r.sol_kernel,
                if library_bytes == 0 {
                    String::new()
                } else {
                    library_bytes.to_string()
                }
            );
            records.push(r);
        };
        record("copy", None, "copy_buffer_to_buffer".into(), copy_engine, 0);
        record(
            "copy",
            None,
            format!("vec4 kernel wg={best_wg}"),
            copy_kernel,
            0,
        );

        let buffers = RmsNormBuffers {
            input: BufferRegion::whole(&x_buffer),
            output: BufferRegion::whole(&y_buffer),
            gain: None,
            bias: None,
        };
        let cases = [
            ("RMSNorm", None, PartialRms::Full),
            (
                "pRMSNorm",
                Some(1.0 / 16.0),
                PartialRms::Fraction(1.0 / 16.0),
            ),
            ("pRMSNorm", Some(0.5), PartialRms::Fraction(0.5)),
        ];
        for (name, p, partial) in cases {
            let config = RmsNormConfig::new(hidden).with_partial(partial);
            // A fresh context per kernel, so that its allocation is this shape's alone.
            let fresh = GpuContext::from_device(device.clone(), queue.clone(), Default::default());
            let y =
                block_on(fresh.rms_norm(&x, &config, Weights::NONE)).map_err(|e| e.to_string())?;
            let expected =
                reference::rms_norm(&x, &config, None, None).map_err(|e| e.to_string())?;
            verify(&y, &expected, name, rows, hidden)?;
            let kernel = gpu.kernel(&config).map_err(|e| e.to_string())?;
            let seconds = median(&mut |encoder, ts| {
                kernel.encode_with_timestamps(device, encoder, &buffers, rows, ts)
            })?;
            let variant = variant_name(
                kernel.reduction(),
                kernel.workgroup_size(),
                kernel.uses_vec4(&buffers),
            );
            record(name, p, variant, seconds, fresh.scratch_bytes());
        }
        let config = LayerNormConfig::new(hidden);
        let fresh = GpuContext::from_device(device.clone(), queue.clone(), Default::default());
        let y =
            block_on(fresh.layer_norm(&x, &config, Weights::NONE)).map_err(|e| e.to_string())?;
        let expected = reference::layer_norm(&x, &config, None, None).map_err(|e| e.to_string())?;
        verify(&y, &expected, "LayerNorm", rows, hidden)?;
        let kernel = wgpu_rmsnorm::LayerNorm::new(device, &config, &Default::default())
            .map_err(|e| e.to_string())?;
        let seconds = median(&mut |encoder, ts| {
            kernel.encode_with_timestamps(device, encoder, &buffers, rows, ts)
        })?;
        let variant = variant_name(
            kernel.reduction(),
            kernel.workgroup_size(),
            kernel.uses_vec4(&buffers),
        );
        record("LayerNorm", None, variant, seconds, fresh.scratch_bytes());
        Ok(records)
    }

    fn verify(y: &[f32], expected: &[f64], name: &str, rows: u32, hidden: u32) -> BenchResult<()> {
        let stats = reference::compare(y, expected, F32_ABS_TOL, F32_REL_TOL);
        if stats.failures == 0 {
            Ok(())
        } else {
            Err(format!(
                "{name} {rows}x{hidden} is wrong, not timing it: {stats:?}"
            ))
        }
    }

    fn variant_name(reduction: wgpu_rmsnorm::Reduction, workgroup_size: u32, vec4: bool) -> String {
        format!(
            "{reduction:?} wg={workgroup_size}{}",
            if vec4 { " vec4" } else { "" }
        )
    }

    fn print_ratios(records: &[Record]) {
        println!("\ntime ratios per shape (below 1: the first is faster)");
        println!(
            "{:>6} x {:<8} {:>18} {:>20} {:>18}",
            "rows", "hidden", "RMSNorm/LayerNorm", "pRMSNorm1/16/RMSNorm", "pRMSNorm1/2/RMSNorm"
        );
        let mut shapes: Vec<(u32, u32)> = records.iter().map(|r| (r.rows, r.hidden)).collect();
        shapes.dedup();
        for (rows, hidden) in shapes {
            let time = |kernel: &str, p: Option<f64>| {
                records
                    .iter()
                    .find(|r| {
                        r.rows == rows && r.hidden == hidden && r.kernel == kernel && r.p == p
                    })
                    .map_or(f64::NAN, |r| r.seconds)
            };
            let rms = time("RMSNorm", None);
            println!(
                "{rows:>6} x {hidden:<8} {:>18.2} {:>20.2} {:>18.2}",
                rms / time("LayerNorm", None),
                time("pRMSNorm", Some(1.0 / 16.0)) / rms,
                time("pRMSNorm", Some(0.5)) / rms
            );
        }
    }

    /// Wall-clock medians of a whole 1 x 4096 call through the high-level API and of an
    /// empty dispatch with a 16-byte readback.
    fn round_trips(gpu: &GpuContext) -> BenchResult<(f64, f64)> {
        let device = gpu.device();
        let x = reference::sample_data(4096, 5, 4.0);
        let config = RmsNormConfig::new(4096);
        let median = |f: &mut dyn FnMut() -> BenchResult<()>| -> BenchResult<f64> {
            f()?;
            let mut times = Vec::with_capacity(ROUND_TRIPS);
            for _ in 0..ROUND_TRIPS {
                let start = std::time::Instant::now();
                f()?;
                times.push(start.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            Ok(times[times.len() / 2])
        };
        let call = median(&mut || {
            gpu.rms_norm_blocking(&x, &config, Weights::NONE)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })?;
        let pipeline = copy_pipeline(device, 64);
        let make = |usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: 16,
                usage,
                mapped_at_creation: false,
            })
        };
        let src = make(wgpu::BufferUsages::STORAGE);
        let dst = make(wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC);
        let staging = make(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        let bind_group = copy_bind_group(device, &pipeline, &src, &dst);
        let empty = median(&mut || {
            let mut encoder = device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(1, 1, 1);
            }
            encoder.copy_buffer_to_buffer(&dst, 0, &staging, 0, 16);
            gpu.queue().submit([encoder.finish()]);
            let slice = staging.slice(..);
            slice.map_async(wgpu::MapMode::Read, |_| {});
            device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| e.to_string())?;
            drop(slice.get_mapped_range().map_err(|e| e.to_string())?);
            staging.unmap();
            Ok(())
        })?;
        Ok((call, empty))
    }

    fn to_json(info: &wgpu::AdapterInfo, records: &[Record], call: f64, empty: f64) -> String {
        let text = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let mut out = String::from("{\n  \"records\": [\n");
        for (i, r) in records.iter().enumerate() {
            let _ = writeln!(
                out,
                "    {{\"adapter\": {}, \"backend\": {}, \"rows\": {}, \"hidden\": {}, \"kernel\": {}, \
                 \"p\": {}, \"variant\": {}, \"median_ms\": {:.6}, \"gbps\": {:.4}, \"sol_copy\": {:.4}, \
                 \"sol_kernel\": {:.4}, \"library_bytes\": {}}}{}",
                text(&info.name),
                text(&format!("{:?}", info.backend)),
                r.rows,
                r.hidden,
                text(r.kernel),
                r.p.map_or("null".into(), |p| format!("{p}")),
                text(&r.variant),
                r.seconds * 1e3,
                r.gbps,
                r.sol_copy,
                r.sol_kernel,
                r.library_bytes,
                if i + 1 < records.len() { "," } else { "" }
            );
        }
        let _ = write!(
            out,
            "  ],\n  \"round_trip_ms\": {{\"call_1x4096\": {:.6}, \"empty_dispatch\": {:.6}}}\n}}\n",
            call * 1e3,
            empty * 1e3
        );
        out
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
