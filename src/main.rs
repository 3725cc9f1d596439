//! The main job: runs RMSNorm and pRMSNorm on the chosen adapter, checks them against the
//! f64 reference and prints GPU time and effective bandwidth. Native only: in the browser
//! the demo page in www/ does this job.
#![cfg_attr(target_arch = "wasm32", allow(unused))]

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    mod backward;

    use std::process::ExitCode;
    use wgpu_rmsnorm::reference::{self, F32_ABS_TOL, F32_REL_TOL};
    use wgpu_rmsnorm::timing::GpuTimer;
    use wgpu_rmsnorm::{
        bf16, block_on, f16, AdapterChoice, BufferRegion, DType, Element, EpsMode, Gain,
        GpuContext, KernelOptions, PartialRms, Reduction, Residual, RmsNormBuffers, RmsNormConfig,
        Weights,
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
  --dtype T            element type of x, y and the residual: f32 (default), f16 or bf16
  --weight-dtype T     element type of gain and bias, default: the --dtype
  --residual           fuse the residual add: y = norm(x + r), the sum stored too
  --backward           run the backward instead: dx, dgain and dbias of RMSNorm, pRMSNorm
                       and LayerNorm against the f64 reference, timed with statistics
                       recomputed and saved; the gain defaults to scale, and a bias is added
  --f16 IMPL           f16 as WGSL's f16 type (native, needs SHADER_F16) or packed u32
                       words (packed); default: the plan's choice
  --reduction R        auto (default), tree, subgroups, single-subgroup or per-invocation
  --workgroup-size W   invocations per workgroup (power of two)
  --samples S          timing samples (median taken), default 10
Values may also be given as --flag=value. Progress goes to stderr, the table to stdout.
Adapter: WGPU_BACKEND, WGPU_ADAPTER_NAME, WGPU_POWER_PREF.";

    struct Args {
        backward: bool,
        rows: u32,
        config: RmsNormConfig,
        partial: PartialRms,
        options: KernelOptions,
        samples: usize,
    }

    /// Why the arguments were not run: help asked for, or a bad argument (with its message).
    enum Stop {
        Help,
        Bad(String),
    }

    impl From<String> for Stop {
        fn from(message: String) -> Self {
            Stop::Bad(message)
        }
    }

    /// Flags that take no value.
    const SWITCHES: [&str; 3] = ["--bias", "--residual", "--backward"];
    /// Flags that take a value.
    const VALUED: [&str; 13] = [
        "--rows",
        "--hidden",
        "--p",
        "--k",
        "--eps",
        "--eps-mode",
        "--gain",
        "--reduction",
        "--workgroup-size",
        "--f16",
        "--dtype",
        "--weight-dtype",
        "--samples",
    ];

    fn parse_args() -> Result<Args, Stop> {
        let mut args = Args {
            backward: false,
            rows: 4096,
            config: RmsNormConfig::new(4096),
            partial: PartialRms::Fraction(0.0625),
            options: KernelOptions::default(),
            samples: 10,
        };
        let mut it = std::env::args().skip(1);
        let mut weight_dtype = None;
        let mut gain_given = false;
        while let Some(argument) = it.next() {
            // `--flag value` or `--flag=value`.
            let (flag, inline) = match argument.split_once('=') {
                Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
                None => (argument, None),
            };
            if SWITCHES.contains(&flag.as_str()) && inline.is_some() {
                return Err(Stop::Bad(format!("{flag} takes no value")));
            }
            match flag.as_str() {
                "--help" | "-h" => return Err(Stop::Help),
                "--bias" => args.config.bias = true,
                "--residual" => args.config.residual = Residual::AddStoreSum,
                "--backward" => args.backward = true,
                f if VALUED.contains(&f) => {
                    let value = match inline {
                        Some(value) => value,
                        None => it.next().ok_or_else(|| format!("{flag} needs a value"))?,
                    };
                    gain_given |= flag == "--gain";
                    apply_flag(&mut args, &mut weight_dtype, &flag, &value)?;
                }
                _ => {
                    let all: Vec<&str> = SWITCHES.iter().chain(&VALUED).copied().collect();
                    return Err(Stop::Bad(format!(
                        "unknown option {flag}: the options are {}",
                        all.join(", ")
                    )));
                }
            }
        }
        args.config.weight_dtype = weight_dtype.unwrap_or(args.config.dtype);
        if args.backward {
            // dgain and dbias are checked too.
            if !gain_given {
                args.config.gain = Gain::Scale;
            }
            args.config.bias = true;
        }
        // Every value checked before any work: a bad --p fails here, not after a run.
        args.config
            .with_partial(args.partial)
            .validate()
            .map_err(|e| Stop::Bad(e.to_string()))?;
        Ok(args)
    }

    /// One `flag value` pair into `args` (`--weight-dtype` into `weight_dtype`).
    fn apply_flag(
        args: &mut Args,
        weight_dtype: &mut Option<DType>,
        flag: &str,
        value: &str,
    ) -> Result<(), String> {
        let bad = |what: &str| format!("{flag} {value}: {what}");
        let number = || value.parse::<f64>().map_err(|_| bad("not a number"));
        let count = || {
            value
                .parse::<u32>()
                .map_err(|_| bad("not a whole number >= 0"))
        };
        // One of the named values.
        fn choice<T: Copy>(flag: &str, value: &str, named: &[(&str, T)]) -> Result<T, String> {
            let found = named.iter().find(|(name, _)| *name == value);
            found.map(|&(_, v)| v).ok_or_else(|| {
                let names: Vec<&str> = named.iter().map(|(name, _)| *name).collect();
                format!("{flag} {value}: use one of {}", names.join(", "))
            })
        }
        let dtypes = [
            ("f32", DType::F32),
            ("f16", DType::F16),
            ("bf16", DType::Bf16),
        ];
        match flag {
            "--rows" => args.rows = count()?,
            "--hidden" => args.config.hidden = count()?,
            "--p" => args.partial = PartialRms::Fraction(number()?),
            "--k" => args.partial = PartialRms::Count(count()?),
            "--eps" => args.config.eps = number()? as f32,
            "--eps-mode" => {
                let modes = [
                    ("inside", EpsMode::InsideRoot),
                    ("add", EpsMode::AddedToRms),
                ];
                args.config.eps_mode = choice(flag, value, &modes)?;
            }
            "--gain" => {
                let gains = [
                    ("none", Gain::None),
                    ("scale", Gain::Scale),
                    ("unit-offset", Gain::UnitOffset),
                ];
                args.config.gain = choice(flag, value, &gains)?;
            }
            "--reduction" => {
                let reductions = [
                    ("auto", Reduction::Auto),
                    ("tree", Reduction::WorkgroupTree),
                    ("subgroups", Reduction::Subgroups),
                    ("single-subgroup", Reduction::SingleSubgroup),
                    ("per-invocation", Reduction::PerInvocation),
                ];
                args.options.reduction = choice(flag, value, &reductions)?;
            }
            "--workgroup-size" => args.options.workgroup_size = Some(count()?),
            "--f16" => {
                let implementations = [("native", Some(true)), ("packed", Some(false))];
                args.options.native_f16 = choice(flag, value, &implementations)?;
            }
            "--dtype" => args.config.dtype = choice(flag, value, &dtypes)?,
            "--weight-dtype" => *weight_dtype = Some(choice(flag, value, &dtypes)?),
            "--samples" => match count()? {
                0 => return Err(bad("at least 1 sample is needed")),
                samples => args.samples = samples as usize,
            },
            _ => return Err(format!("unknown option {flag}")),
        }
        Ok(())
    }

    pub fn main() -> ExitCode {
        let args = match parse_args() {
            Ok(args) => args,
            Err(Stop::Help) => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            Err(Stop::Bad(message)) => {
                eprintln!("error: {message}");
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
        use DType::{Bf16, F16, F32};
        match (args.config.dtype, args.config.weight_dtype) {
            (F32, F32) => run_typed::<f32, f32>(args).await,
            (F32, F16) => run_typed::<f32, f16>(args).await,
            (F32, Bf16) => run_typed::<f32, bf16>(args).await,
            (F16, F32) => run_typed::<f16, f32>(args).await,
            (F16, F16) => run_typed::<f16, f16>(args).await,
            (F16, Bf16) => run_typed::<f16, bf16>(args).await,
            (Bf16, F32) => run_typed::<bf16, f32>(args).await,
            (Bf16, F16) => run_typed::<bf16, f16>(args).await,
            (Bf16, Bf16) => run_typed::<bf16, bf16>(args).await,
        }
    }

    /// The data of a run, as elements of their types.
    struct Data<T, W> {
        x: Vec<T>,
        residual: Option<Vec<T>>,
        gain: Option<Vec<W>>,
        bias: Option<Vec<W>>,
    }

    impl<T: Element, W: Element> Data<T, W> {
        fn new(args: &Args) -> Self {
            let (len, n) = (
                args.rows as usize * args.config.hidden as usize,
                args.config.hidden as usize,
            );
            let act = |seed, amplitude| {
                let values = reference::sample_data(len, seed, amplitude);
                values.into_iter().map(T::from_f32).collect::<Vec<T>>()
            };
            let weight = |seed| {
                let values = reference::sample_data(n, seed, 4.0);
                values.into_iter().map(W::from_f32).collect::<Vec<W>>()
            };
            let config = &args.config;
            Self {
                x: act(1, 4.0),
                residual: config.residual.is_some().then(|| act(4, 2.0)),
                gain: (config.gain != Gain::None).then(|| weight(2)),
                bias: config.bias.then(|| weight(3)),
            }
        }

        fn weights(&self) -> Weights<'_, W> {
            Weights {
                gain: self.gain.as_deref(),
                bias: self.bias.as_deref(),
            }
        }
    }

    /// Values widened to f32.
    fn widen<T: Element>(v: &[T]) -> Vec<f32> {
        v.iter().map(|&e| e.to_f32()).collect()
    }

    async fn run_typed<T: Element, W: Element>(args: &Args) -> wgpu_rmsnorm::Result<bool> {
        let gpu = GpuContext::with_adapter_choice(&AdapterChoice::from_env(), args.options).await?;
        let device = gpu.device();
        let timer = GpuTimer::new(device, gpu.queue());
        print_setup(&gpu, &timer, args);
        let (rows, n) = (args.rows, args.config.hidden);
        // Checked before any allocation: the tensor must fit one buffer of this device.
        let tensor_bytes = u64::from(rows) * u64::from(n) * args.config.dtype.bytes();
        if tensor_bytes > device.limits().max_buffer_size {
            return Err(wgpu_rmsnorm::Error::TooManyRows {
                rows: u64::from(rows),
                hidden: n,
            });
        }
        let data = Data::<T, W>::new(args);
        if args.backward {
            return backward::run(&gpu, &timer, args, &data).await;
        }

        // Timing buffers, separate from the context's: x and r in, y and the sum out, weights.
        use wgpu::util::DeviceExt;
        let storage = |label, contents: &[u8]| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE,
            })
        };
        let output = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: tensor_bytes.next_multiple_of(4).max(4),
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        let x_buffer = storage("x", bytemuck::cast_slice(&data.x));
        let y_buffer = output("y");
        let residual = data.residual.as_deref();
        let r_buffer = residual.map(|r| storage("residual", bytemuck::cast_slice(r)));
        let sum_buffer = residual.map(|_| output("sum"));
        let gain_buffer = data
            .gain
            .as_deref()
            .map(|g| storage("gain", bytemuck::cast_slice(g)));
        let bias_buffer = data
            .bias
            .as_deref()
            .map(|b| storage("bias", bytemuck::cast_slice(b)));
        let buffers = RmsNormBuffers {
            input: BufferRegion::whole(&x_buffer),
            output: BufferRegion::whole(&y_buffer),
            gain: gain_buffer.as_ref().map(BufferRegion::whole),
            bias: bias_buffer.as_ref().map(BufferRegion::whole),
            residual: r_buffer.as_ref().map(BufferRegion::whole),
            sum: sum_buffer.as_ref().map(BufferRegion::whole),
            stats: None,
        };

        println!(
            "{:<9} {:>8} {:<40} {:>11} {:>11} {:>6} {:>6} {:>10} {:>8}",
            "kernel",
            "k",
            "variant",
            "max abs err",
            "max rel err",
            "ulps",
            "check",
            "GPU ms",
            "GB/s"
        );
        let mut all_pass = true;
        for (name, partial) in [("RMSNorm", PartialRms::Full), ("pRMSNorm", args.partial)] {
            let config = args.config.with_partial(partial);
            all_pass &= check_and_time(&gpu, &timer, args, &data, &config, &buffers, name).await?;
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
        let config = &args.config;
        println!(
            "shape: {rows} x {n} {} ({:.1} MiB), weights {}, eps {:e} {eps_mode}, gain {:?}, \
             bias {}, residual {:?}",
            config.dtype,
            f64::from(rows) * f64::from(n) * config.dtype.bytes() as f64 / (1 << 20) as f64,
            config.weight_dtype,
            config.eps,
            config.gain,
            config.bias,
            config.residual
        );
    }

    /// One kernel: checked against the reference through the high-level API (the output to
    /// within a rounding of the f32 tolerance, the stored sum bit for bit), timed through
    /// the low-level one on `buffers`, reported as a table row. Returns whether it passed.
    async fn check_and_time<T: Element, W: Element>(
        gpu: &GpuContext,
        timer: &GpuTimer,
        args: &Args,
        data: &Data<T, W>,
        config: &RmsNormConfig,
        buffers: &RmsNormBuffers<'_>,
        name: &str,
    ) -> wgpu_rmsnorm::Result<bool> {
        let device = gpu.device();
        let rows = args.rows;
        eprintln!(
            "{name}: checking against the f64 reference, then timing {} samples",
            args.samples
        );
        let x = widen(&data.x);
        let (y, input, sum_ok) = match &data.residual {
            Some(r) => {
                let out = gpu
                    .rms_norm_residual(&data.x, r, config, data.weights())
                    .await?;
                let h = reference::residual_sum(&x, &widen(r), config.dtype);
                let sum_ok = out.sum.is_some_and(|sum| widen(&sum) == h);
                (out.output, h, sum_ok)
            }
            None => (
                gpu.rms_norm(&data.x, config, data.weights()).await?,
                x,
                true,
            ),
        };
        let (gain, bias) = (
            data.gain.as_deref().map(widen),
            data.bias.as_deref().map(widen),
        );
        let expected = reference::rms_norm(&input, config, gain.as_deref(), bias.as_deref())?;
        let stats = reference::compare_rounded(
            &widen(&y),
            &expected,
            config.dtype,
            F32_ABS_TOL,
            F32_REL_TOL,
        );
        let pass = stats.failures == 0 && sum_ok;
        let kernel = gpu.kernel(config)?;
        let seconds = timer
            .median(device, gpu.queue(), args.samples, 0.01, |encoder, ts| {
                kernel.encode_with_timestamps(device, encoder, buffers, rows, ts)
            })
            .await?;
        // Bytes moved: x read (k elements twice where the row is re-read: counted once),
        // y written, with the residual r read and the sum written, gain and bias read once
        // per call.
        let tensors = if data.residual.is_some() { 4 } else { 2 };
        let vectors = data.gain.is_some() as u64 + data.bias.is_some() as u64;
        let bytes = tensors * (data.x.len() as u64) * config.dtype.bytes()
            + u64::from(config.hidden) * config.weight_dtype.bytes() * vectors;
        println!(
            "{:<9} {:>8} {:<40} {:>11.3e} {:>11.3e} {:>6.2} {:>6} {:>10.3} {:>8.2}",
            name,
            kernel.rms_count(),
            kernel.variant_name(buffers, rows),
            stats.max_abs,
            stats.max_rel,
            stats.max_ulps,
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
