//! The main job: runs RMSNorm and pRMSNorm on the chosen adapter, checks them against the
//! f64 reference and prints GPU time and effective bandwidth. Native only: in the browser
//! the demo page in www/ does this job.
#![cfg_attr(target_arch = "wasm32", allow(unused))]

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod cli {

    use std::process::ExitCode;
    use wgpu_rmsnorm::reference::{self, F32_ABS_TOL, F32_REL_TOL};
    use wgpu_rmsnorm::timing::GpuTimer;
    use wgpu_rmsnorm::{
        block_on, AdapterChoice, BufferRegion, EpsMode, Gain, GpuContext, KernelOptions,
        PartialRms, Reduction, RmsNormBuffers, RmsNormConfig, Weights,
    };

    const USAGE: &str = "\
usage: wgpu-rmsnorm [options]
  --rows R             rows (tokens), default 4096
  --hidden N           hidden size (row length), default 4096
  --p P                pRMSNorm fraction, k = ceil(N * P), default 0.0625
  --k K                pRMSNorm count instead of --p
  --eps E              eps, default 1e-6
  --eps-mode MODE      inside (x / sqrt(mean + eps), default) or add (x / (rms + eps))
  --gain MODE          none (default), scale (y * g) or unit-offset (y * (1 + g))
  --bias               add a bias vector
  --reduction R        auto (default), tree, subgroups or single-subgroup
  --workgroup-size W   invocations per workgroup (power of two)
  --samples S          timing samples (median taken), default 10
Adapter: WGPU_BACKEND, WGPU_ADAPTER_NAME, WGPU_POWER_PREF.";

    struct Args {
        rows: u32,
        config: RmsNormConfig,
        partial: PartialRms,
        options: KernelOptions,
        samples: usize,
    }

    fn parse_args() -> Result<Args, String> {
        let mut args = Args {
            rows: 4096,
            config: RmsNormConfig::new(4096),
            partial: PartialRms::Fraction(0.0625),
            options: KernelOptions::default(),
            samples: 10,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "--help" || flag == "-h" {
                return Err(String::new());
            }
            if flag == "--bias" {
                args.config.bias = true;
                continue;
            }
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let bad = |what: &str| format!("{flag} {value}: {what}");
            let number = |v: &str| v.parse::<f64>().map_err(|_| bad("not a number"));
            let count = |v: &str| v.parse::<u32>().map_err(|_| bad("not a whole number >= 0"));
            match flag.as_str() {
                "--rows" => args.rows = count(&value)?,
                "--hidden" => args.config.hidden = count(&value)?,
                "--p" => args.partial = PartialRms::Fraction(number(&value)?),
                "--k" => args.partial = PartialRms::Count(count(&value)?),
                "--eps" => args.config.eps = number(&value)? as f32,
                "--eps-mode" => {
                    args.config.eps_mode = match value.as_str() {
                        "inside" => EpsMode::InsideRoot,
                        "add" => EpsMode::AddedToRms,
                        _ => return Err(bad("use inside or add")),
                    }
                }
                "--gain" => {
                    args.config.gain = match value.as_str() {
                        "none" => Gain::None,
                        "scale" => Gain::Scale,
                        "unit-offset" => Gain::UnitOffset,
                        _ => return Err(bad("use none, scale or unit-offset")),
                    }
                }
                "--reduction" => {
                    args.options.reduction = match value.as_str() {
                        "auto" => Reduction::Auto,
                        "tree" => Reduction::WorkgroupTree,
                        "subgroups" => Reduction::Subgroups,
                        "single-subgroup" => Reduction::SingleSubgroup,
                        _ => return Err(bad("use auto, tree, subgroups or single-subgroup")),
                    }
                }
                "--workgroup-size" => args.options.workgroup_size = Some(count(&value)?),
                "--samples" => args.samples = count(&value)?.max(1) as usize,
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        // Every value checked before any work: a bad --p fails here, not after a run.
        args.config
            .with_partial(args.partial)
            .validate()
            .map_err(|e| e.to_string())?;
        Ok(args)
    }

    pub fn main() -> ExitCode {
        let args = match parse_args() {
            Ok(args) => args,
            Err(message) => {
                if !message.is_empty() {
                    eprintln!("error: {message}");
                }
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        };
        match block_on(run(&args)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    }

    async fn run(args: &Args) -> wgpu_rmsnorm::Result<bool> {
        let gpu = GpuContext::with_adapter_choice(&AdapterChoice::from_env(), args.options).await?;
        let device = gpu.device();
        let timer = GpuTimer::new(device, gpu.queue());
        print_setup(&gpu, &timer, args);
        let (rows, n) = (args.rows, args.config.hidden);
        // Checked before any allocation: the tensor must fit one buffer of this device.
        if u64::from(rows) * u64::from(n) * 4 > device.limits().max_buffer_size {
            return Err(wgpu_rmsnorm::Error::TooManyRows {
                rows: u64::from(rows),
                hidden: n,
            });
        }
        let len = rows as usize * n as usize;
        let x = reference::sample_data(len, 1, 4.0);
        let gain =
            (args.config.gain != Gain::None).then(|| reference::sample_data(n as usize, 2, 4.0));
        let bias = args
            .config
            .bias
            .then(|| reference::sample_data(n as usize, 3, 4.0));
        let weights = Weights {
            gain: gain.as_deref(),
            bias: bias.as_deref(),
        };

        // Timing buffers, separate from the context's: x in, y out, weights.
        use wgpu::util::DeviceExt;
        let storage = |label, contents: &[f32]| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(contents),
                usage: wgpu::BufferUsages::STORAGE,
            })
        };
        let x_buffer = storage("x", &x);
        let y_buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("y"),
            size: (len as u64 * 4).max(4),
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let gain_buffer = gain.as_deref().map(|g| storage("gain", g));
        let bias_buffer = bias.as_deref().map(|b| storage("bias", b));
        let buffers = RmsNormBuffers {
            input: BufferRegion::whole(&x_buffer),
            output: BufferRegion::whole(&y_buffer),
            gain: gain_buffer.as_ref().map(BufferRegion::whole),
            bias: bias_buffer.as_ref().map(BufferRegion::whole),
        };

        println!(
            "{:<9} {:>8} {:<28} {:>11} {:>11} {:>6} {:>10} {:>8}",
            "kernel", "k", "variant", "max abs err", "max rel err", "check", "GPU ms", "GB/s"
        );
        let mut all_pass = true;
        for (name, partial) in [("RMSNorm", PartialRms::Full), ("pRMSNorm", args.partial)] {
            let config = args.config.with_partial(partial);
            all_pass &=
                check_and_time(&gpu, &timer, args, &x, &config, weights, &buffers, name).await?;
        }
        Ok(all_pass)
    }

    /// The adapter, timing method and shape, as the first lines of the report.
    fn print_setup(gpu: &GpuContext, timer: &GpuTimer, args: &Args) {
        let info = gpu.adapter_info();
        println!(
            "adapter: {} ({:?}, {:?}), subgroups: {}, timing: {}",
            info.name,
            info.backend,
            info.device_type,
            if gpu.device().features().contains(wgpu::Features::SUBGROUP) {
                format!("{}..{}", info.subgroup_min_size, info.subgroup_max_size)
            } else {
                "no".into()
            },
            if timer.uses_timestamps() {
                "timestamp queries"
            } else {
                "wall clock"
            }
        );
        let (rows, n) = (args.rows, args.config.hidden);
        let eps_mode = match args.config.eps_mode {
            EpsMode::InsideRoot => "inside the root",
            EpsMode::AddedToRms => "added to the RMS",
        };
        println!(
            "shape: {rows} x {n} f32 ({:.1} MiB), eps {:e} {eps_mode}, gain {:?}, bias {}",
            f64::from(rows) * f64::from(n) * 4.0 / (1 << 20) as f64,
            args.config.eps,
            args.config.gain,
            args.config.bias
        );
    }

    /// One kernel: checked against the reference through the high-level API, timed through
    /// the low-level one on `buffers`, reported as a table row. Returns whether it passed.
    #[allow(clippy::too_many_arguments)]
    async fn check_and_time(
        gpu: &GpuContext,
        timer: &GpuTimer,
        args: &Args,
        x: &[f32],
        config: &RmsNormConfig,
        weights: Weights<'_>,
        buffers: &RmsNormBuffers<'_>,
        name: &str,
    ) -> wgpu_rmsnorm::Result<bool> {
        let device = gpu.device();
        let rows = args.rows;
        let y = gpu.rms_norm(x, config, weights).await?;
        let expected = reference::rms_norm(x, config, weights.gain, weights.bias)?;
        let stats = reference::compare(&y, &expected, F32_ABS_TOL, F32_REL_TOL);
        let pass = stats.failures == 0;
        let kernel = gpu.kernel(config)?;
        let seconds = timer
            .median(device, gpu.queue(), args.samples, 0.01, |encoder, ts| {
                kernel.encode_with_timestamps(device, encoder, buffers, rows, ts)
            })
            .await?;
        // Bytes moved: x read (k elements twice where the row is re-read: counted once),
        // y written, gain and bias read once per call.
        let vectors = weights.gain.is_some() as u64 + weights.bias.is_some() as u64;
        let bytes = 2 * x.len() as u64 * 4 + 4 * u64::from(config.hidden) * vectors;
        println!(
            "{:<9} {:>8} {:<28} {:>11.3e} {:>11.3e} {:>6} {:>10.3} {:>8.2}",
            name,
            kernel.rms_count(),
            kernel.variant_name(buffers, rows),
            stats.max_abs,
            stats.max_rel,
            if pass { "PASS" } else { "FAIL" },
            seconds * 1e3,
            bytes as f64 / seconds / 1e9
        );
        Ok(pass)
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}
