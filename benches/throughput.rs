//! Throughput of RMSNorm, pRMSNorm and LayerNorm against the speed of light on the chosen
//! adapter, then of the element types (f32, f16, bf16) and of the fused residual add against
//! an add kernel followed by RMSNorm (see `wgpu_rmsnorm::bench` for what is measured and how).
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
    use wgpu_rmsnorm::bench::{self, BenchOptions, Measurement};
    use wgpu_rmsnorm::{block_on, GpuContext};

    /// The benchmark's shapes (rows, hidden): one row, a small batch, 4M and 16M elements as
    /// few long or many short rows, very short rows, and few very long rows.
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
    /// The quick run: a small batch, 64 MiB, short rows, one split row, and 16 MiB at hidden
    /// sizes 4096, 4097 and 4098 (rows at any element: vec4 loads with masked edges).
    const QUICK_SHAPES: [(u32, u32); 7] = [
        (64, 4096),
        (4096, 4096),
        (65536, 128),
        (1, 1048576),
        (1024, 4096),
        (1024, 4097),
        (1024, 4098),
    ];
    /// The element types and the residual add: small, 16 MiB, 64 MiB, short rows, one row,
    /// and rows at any element.
    const FORMAT_SHAPES: [(u32, u32); 6] = [
        (64, 4096),
        (1024, 4096),
        (4096, 4096),
        (65536, 128),
        (1, 1048576),
        (1024, 4097),
    ];
    const QUICK_FORMAT_SHAPES: [(u32, u32); 4] =
        [(64, 4096), (4096, 4096), (1, 1048576), (1024, 4097)];
    const ROUND_TRIPS: usize = 50;

    struct Record {
        rows: u32,
        hidden: u32,
        m: Measurement,
    }

    /// `--quick` and `--json PATH` (cargo's own `--bench` is ignored).
    fn parse_args() -> Result<(bool, Option<String>), String> {
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
        Ok((quick, json))
    }

    pub fn main() -> Result<(), String> {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
        let (quick, json) = parse_args()?;
        let gpu = GpuContext::new_blocking().map_err(|e| e.to_string())?;
        let info = gpu.adapter_info().clone();
        let timer = bench::timer(&gpu);
        let options = BenchOptions::default();
        println!(
            "adapter: {} ({:?}, {:?}); timing: {}; median of {} samples of >= {} ms",
            info.name,
            info.backend,
            info.device_type,
            if timer.uses_timestamps() {
                "timestamp queries"
            } else {
                "wall clock"
            },
            options.samples,
            options.min_sample_seconds * 1e3
        );
        println!(
            "{:>6} x {:<8} {:<8} {:<9} {:>6} {:<26} {:>9} {:>7} {:>8} {:>10} {:>10}",
            "rows",
            "hidden",
            "pass",
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
            let measured = block_on(bench::bench_shape(&gpu, &timer, rows, hidden, &options))
                .map_err(|e| e.to_string())?;
            for m in measured {
                println!(
                    "{rows:>6} x {hidden:<8} {:<8} {:<9} {:>6} {:<26} {:>9.3} {:>7.2} {:>8.2} {:>10.2} {:>10}",
                    m.pass,
                    m.kernel,
                    m.p.map_or(String::new(), |p| format!("{p}")),
                    m.variant,
                    m.seconds * 1e3,
                    m.gbps,
                    m.sol_copy,
                    m.sol_kernel,
                    if m.library_bytes == 0 { String::new() } else { m.library_bytes.to_string() }
                );
                records.push(Record { rows, hidden, m });
            }
        }
        print_ratios(&records);
        print_backward_ratios(&records);
        let format_shapes: &[(u32, u32)] = if quick {
            &QUICK_FORMAT_SHAPES
        } else {
            &FORMAT_SHAPES
        };
        let format_records = bench_formats(&gpu, &timer, format_shapes, &options)?;
        records.extend(format_records);
        let (call, empty) =
            block_on(bench::round_trips(&gpu, ROUND_TRIPS)).map_err(|e| e.to_string())?;
        println!(
            "round trip (wall clock, median of {ROUND_TRIPS}): 1 x 4096 RMSNorm call (upload, dispatch, \
             readback) {:.3} ms; empty dispatch with readback {:.3} ms; ratio {:.2}",
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

    /// The element types and the fused residual add on `shapes`, printed as they come, then
    /// their ratios.
    fn bench_formats(
        gpu: &GpuContext,
        timer: &wgpu_rmsnorm::timing::GpuTimer,
        shapes: &[(u32, u32)],
        options: &BenchOptions,
    ) -> Result<Vec<Record>, String> {
        println!(
            "\nelement types and the residual add (unfused: an add kernel, then RMSNorm; sol \
             against copies of a tensor of the same element size)"
        );
        println!(
            "{:>6} x {:<8} {:<8} {:<5} {:<8} {:<44} {:>9} {:>7} {:>8} {:>10}",
            "rows",
            "hidden",
            "kernel",
            "dtype",
            "residual",
            "variant",
            "ms",
            "GB/s",
            "sol_copy",
            "sol_kernel"
        );
        let mut records = Vec::new();
        for &(rows, hidden) in shapes {
            let measured = block_on(bench::bench_formats(gpu, timer, rows, hidden, options))
                .map_err(|e| e.to_string())?;
            for m in measured {
                println!(
                    "{rows:>6} x {hidden:<8} {:<8} {:<5} {:<8} {:<44} {:>9.3} {:>7.2} {:>8.2} {:>10.2}",
                    m.kernel,
                    m.dtype.name(),
                    m.residual,
                    m.variant,
                    m.seconds * 1e3,
                    m.gbps,
                    m.sol_copy,
                    m.sol_kernel
                );
                records.push(Record { rows, hidden, m });
            }
        }
        println!(
            "\n{:>6} x {:<8} {:<5} {:>22} {:>28}",
            "rows", "hidden", "dtype", "sol_kernel / f32's", "unfused time / fused time"
        );
        for &(rows, hidden) in shapes {
            let find = |dtype: &str, residual: &str| {
                records.iter().find(|r| {
                    (r.rows, r.hidden) == (rows, hidden)
                        && r.m.kernel == "RMSNorm"
                        && r.m.dtype.name() == dtype
                        && r.m.residual == residual
                })
            };
            let f32_sol = find("f32", "none").map_or(f64::NAN, |r| r.m.sol_kernel);
            for dtype in ["f32", "f16", "bf16"] {
                let sol = find(dtype, "none").map_or(f64::NAN, |r| r.m.sol_kernel);
                let seconds = |residual| find(dtype, residual).map_or(f64::NAN, |r| r.m.seconds);
                println!(
                    "{rows:>6} x {hidden:<8} {dtype:<5} {:>22.2} {:>28.2}",
                    sol / f32_sol,
                    seconds("unfused") / seconds("fused")
                );
            }
        }
        Ok(records)
    }

    /// Per shape: RMSNorm against LayerNorm and pRMSNorm, and RMSNorm's time per byte over
    /// that of the shape where it is least.
    fn print_ratios(records: &[Record]) {
        println!("\ntime ratios per shape (below 1: the first is faster)");
        println!(
            "{:>6} x {:<8} {:>18} {:>21} {:>20} {:>28}",
            "rows",
            "hidden",
            "RMSNorm/LayerNorm",
            "pRMSNorm(1/16)/RMSNorm",
            "pRMSNorm(1/2)/RMSNorm",
            "RMSNorm per byte / best's"
        );
        let mut shapes: Vec<(u32, u32)> = records.iter().map(|r| (r.rows, r.hidden)).collect();
        shapes.dedup();
        let rms_per_byte = |rows: u32, hidden: u32| {
            records
                .iter()
                .find(|r| {
                    (r.rows, r.hidden) == (rows, hidden)
                        && r.m.pass == "forward"
                        && r.m.kernel == "RMSNorm"
                })
                .map_or(f64::NAN, |r| r.m.seconds / r.m.bytes as f64)
        };
        let best = shapes
            .iter()
            .map(|&(rows, hidden)| rms_per_byte(rows, hidden))
            .fold(f64::INFINITY, f64::min);
        for (rows, hidden) in shapes {
            let time = |kernel: &str, p: Option<f64>| {
                records
                    .iter()
                    .find(|r| {
                        r.rows == rows
                            && r.hidden == hidden
                            && r.m.pass == "forward"
                            && r.m.kernel == kernel
                            && r.m.p == p
                    })
                    .map_or(f64::NAN, |r| r.m.seconds)
            };
            let rms = time("RMSNorm", None);
            println!(
                "{rows:>6} x {hidden:<8} {:>18.2} {:>21.2} {:>20.2} {:>28.2}",
                rms / time("LayerNorm", None),
                time("pRMSNorm", Some(1.0 / 16.0)) / rms,
                time("pRMSNorm", Some(0.5)) / rms,
                rms_per_byte(rows, hidden) / best
            );
        }
    }

    /// The backward against the forward: sol_kernel of each backward over its forward's
    /// (statistics recomputed, and saved for RMSNorm), and the share of RMSNorm's backward
    /// time that dgain and dbias take (1 - time without them / time with them).
    fn print_backward_ratios(records: &[Record]) {
        println!("\nbackward against forward (sol_kernel ratio: 1 = the same fraction of the copy's speed)");
        println!(
            "{:>6} x {:<8} {:>12} {:>18} {:>13} {:>14} {:>18}",
            "rows",
            "hidden",
            "RMSNorm",
            "RMSNorm (saved)",
            "pRMSNorm(1/16)",
            "LayerNorm",
            "dgain+dbias share"
        );
        let mut shapes: Vec<(u32, u32)> = records.iter().map(|r| (r.rows, r.hidden)).collect();
        shapes.dedup();
        for (rows, hidden) in shapes {
            let find =
                |pass: &str, kernel: &str, p: Option<f64>, variant: &dyn Fn(&str) -> bool| {
                    records.iter().find(|r| {
                        r.rows == rows
                            && r.hidden == hidden
                            && r.m.pass == pass
                            && r.m.kernel == kernel
                            && r.m.p == p
                            && r.m.residual == "none"
                            && r.m.dtype.name() == "f32"
                            && variant(&r.m.variant)
                    })
                };
            let recomputed = |v: &str| v.ends_with("recomputed stats");
            let saved = |v: &str| v.ends_with("saved stats");
            let any = |_: &str| true;
            let ratio = |kernel, p, variant: &dyn Fn(&str) -> bool| match (
                find("backward", kernel, p, variant),
                find("forward", kernel, p, &any),
            ) {
                (Some(b), Some(f)) => b.m.sol_kernel / f.m.sol_kernel,
                _ => f64::NAN,
            };
            let bare = find("backward", "RMSNorm", None, &|v: &str| {
                v.ends_with("no gain or bias")
            });
            let weighted = find("backward", "RMSNorm", None, &recomputed);
            let share = match (bare, weighted) {
                (Some(b), Some(w)) => 1.0 - b.m.seconds / w.m.seconds,
                _ => f64::NAN,
            };
            if weighted.is_none() {
                continue;
            }
            println!(
                "{rows:>6} x {hidden:<8} {:>12.2} {:>18.2} {:>13.2} {:>14.2} {:>18.2}",
                ratio("RMSNorm", None, &recomputed),
                ratio("RMSNorm", None, &saved),
                ratio("pRMSNorm", Some(1.0 / 16.0), &recomputed),
                ratio("LayerNorm", None, &recomputed),
                share
            );
        }
    }

    fn to_json(info: &wgpu::AdapterInfo, records: &[Record], call: f64, empty: f64) -> String {
        let text = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let mut out = String::from("{\n  \"records\": [\n");
        for (i, r) in records.iter().enumerate() {
            let m = &r.m;
            let _ = writeln!(
                out,
                "    {{\"adapter\": {}, \"backend\": {}, \"rows\": {}, \"hidden\": {}, \"kernel\": {}, \
                 \"p\": {}, \"variant\": {}, \"median_ms\": {:.6}, \"gbps\": {:.4}, \"sol_copy\": {:.4}, \
                 \"sol_kernel\": {:.4}, \"library_bytes\": {}, \"dtype\": {}, \"weight_dtype\": {}, \
                 \"residual\": {}, \"bytes\": {}, \"pass\": {}}}{}",
                text(&info.name),
                text(&format!("{:?}", info.backend)),
                r.rows,
                r.hidden,
                text(m.kernel),
                m.p.map_or("null".into(), |p| format!("{p}")),
                text(&m.variant),
                m.seconds * 1e3,
                m.gbps,
                m.sol_copy,
                m.sol_kernel,
                m.library_bytes,
                text(m.dtype.name()),
                text(m.weight_dtype.name()),
                text(m.residual),
                m.bytes,
                text(m.pass),
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
}
