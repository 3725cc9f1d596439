//! Trains the small language model of `model.rs` with one normalization and writes one JSON
//! record: the loss curves, the median step time, and the time of the model's normalization
//! layers (forward and backward) measured in isolation on the model's shapes. Run by
//! `cargo xtask train`, once per normalization, each in a process of its own.

mod data;
mod model;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use model::{Model, NormChoice, Shape};
use std::time::Instant;

/// Steps not timed: they compile pipelines and let autotune and fusion settle.
const WARM_STEPS: usize = 10;

/// The run, from the command line.
#[derive(Debug, Clone)]
struct Args {
    norm: NormChoice,
    steps: usize,
    batch: usize,
    shape: Shape,
    eval_every: usize,
    learning_rate: f64,
    seed: u64,
    json: Option<String>,
}

const USAGE: &str = "train --norm NAME [--steps N] [--batch N] [--d-model N] [--layers N] \
[--heads N] [--context N] [--eval-every N] [--lr F] [--seed N] [--json PATH]\n\
NAME: burn-layernorm, burn-rmsnorm, layernorm, rmsnorm, prmsnorm";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        norm: NormChoice::Rms,
        steps: 300,
        batch: 16,
        shape: Shape {
            vocab: 0,
            d_model: 128,
            layers: 2,
            heads: 4,
            context: 64,
        },
        eval_every: 25,
        learning_rate: 1e-3,
        seed: 7,
        json: None,
    };
    let mut norm = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--norm" => {
                let v = value()?;
                norm = Some(NormChoice::parse(&v).ok_or(format!("unknown norm {v}\n{USAGE}"))?);
            }
            "--steps" => args.steps = number(value()?)?,
            "--batch" => args.batch = number(value()?)?,
            "--d-model" => args.shape.d_model = number(value()?)?,
            "--layers" => args.shape.layers = number(value()?)?,
            "--heads" => args.shape.heads = number(value()?)?,
            "--context" => args.shape.context = number(value()?)?,
            "--eval-every" => args.eval_every = number(value()?)?.max(1),
            "--lr" => {
                let v = value()?;
                args.learning_rate = v.parse().map_err(|e| format!("--lr {v}: {e}"))?;
            }
            "--seed" => args.seed = number(value()?)? as u64,
            "--json" => args.json = Some(value()?),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    args.norm = norm.ok_or(format!("--norm is required\n{USAGE}"))?;
    let s = args.shape;
    if s.heads == 0 || s.d_model == 0 || !s.d_model.is_multiple_of(s.heads) {
        return Err("--d-model must be a positive multiple of --heads (at least 1)".into());
    }
    if s.context == 0 || s.layers == 0 || args.batch == 0 || args.steps == 0 {
        return Err("--context, --layers, --batch and --steps must be at least 1".into());
    }
    if args.steps <= WARM_STEPS {
        return Err(format!(
            "--steps must be more than the {WARM_STEPS} warm-up steps"
        ));
    }
    Ok(args)
}

/// Batches of `context + 1` tokens from `ids` at offsets drawn from `rng`.
fn batch(
    ids: &[u32],
    args: &Args,
    rng: &mut data::Rng,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let context = args.shape.context;
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    for _ in 0..args.batch {
        let start = rng.below(ids.len() - context - 1);
        inputs.extend(ids[start..start + context].iter().map(|&t| t as i64));
        targets.extend(
            ids[start + 1..start + context + 1]
                .iter()
                .map(|&t| t as i64),
        );
    }
    let shape = [args.batch, context];
    (
        Tensor::from_data(TensorData::new(inputs, shape), device),
        Tensor::from_data(TensorData::new(targets, shape), device),
    )
}

/// Mean cross-entropy of `model` on `batches`.
fn loss_of(model: &Model, inputs: Tensor<2, Int>, targets: Tensor<2, Int>) -> Tensor<1> {
    let logits = model.forward(inputs);
    let [b, t, v] = logits.dims();
    let loss = CrossEntropyLossConfig::new().init(&logits.device());
    loss.forward(logits.reshape([b * t, v]), targets.reshape([b * t]))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Median ms of the normalization work of one training step, in isolation on the model's
/// shapes: as many normalization layers as the model has (each with its gain and its own
/// input of [batch · context, d_model]), each forward then backward, independent of each
/// other as in the model (where other layers sit between them), one device sync before and
/// after all of them (so the sync's cost is shared as a step shares it).
fn time_norms(args: &Args, calls: usize, device: &Device) -> f64 {
    let rows = args.batch * args.shape.context;
    let layers: Vec<_> = (0..calls)
        .map(|_| {
            let x = Tensor::<2>::random([rows, args.shape.d_model], Distribution::Default, device)
                .require_grad();
            (args.norm.build(args.shape.d_model, device), x)
        })
        .collect();
    let mut times = Vec::new();
    for i in 0..25 {
        device.sync().expect("device sync");
        let start = Instant::now();
        let grads: Vec<_> = layers
            .iter()
            .map(|(norm, x)| norm.forward(x.clone()).backward())
            .collect();
        device.sync().expect("device sync");
        drop(grads);
        // The first iterations compile pipelines (and let autotune and fusion settle).
        if i >= 5 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    median(times)
}

fn main() {
    let mut args = parse_args().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    });
    let text = data::corpus(args.seed, 600_000);
    let (ids, vocab) = data::tokenize(&text);
    args.shape.vocab = vocab.len();
    let split = ids.len() * 9 / 10;
    let (train_ids, heldout_ids) = (&ids[..split], &ids[split..]);
    if heldout_ids.len() <= args.shape.context + 1 {
        eprintln!(
            "--context {} is longer than the held-out text",
            args.shape.context
        );
        std::process::exit(2);
    }
    let base = wgpu_rmsnorm_burn::wgpu_device(wgpu_rmsnorm_burn::backend_from_env());
    let device = base.clone().autodiff();
    burn::tensor::Device::seed(&device, args.seed);
    let mut model = Model::new(&args.shape, args.norm, &device);
    let mut optim = AdamWConfig::new().init();
    let mut rng = data::Rng::new(args.seed ^ 0x5eed);
    // The same held-out batches for every evaluation and every normalization.
    let mut heldout_rng = data::Rng::new(args.seed ^ 0xe7a1);
    let heldout: Vec<_> = (0..4)
        .map(|_| batch(heldout_ids, &args, &mut heldout_rng, &base))
        .collect();
    let mut step_ms = Vec::new();
    let (mut train_curve, mut heldout_curve) = (Vec::new(), Vec::new());
    let mut window = Vec::new();
    let mut first_loss = f64::NAN;
    for step in 1..=args.steps {
        let start = Instant::now();
        let (inputs, targets) = batch(train_ids, &args, &mut rng, &device);
        let loss = loss_of(&model, inputs, targets);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(args.learning_rate, model, grads);
        device.sync().expect("device sync");
        step_ms.push(start.elapsed().as_secs_f64() * 1e3);
        // Read once the step is done, not in its middle.
        let loss_value = f64::from(loss.into_scalar::<f32>());
        if step == 1 {
            first_loss = loss_value;
        }
        window.push(loss_value);
        if step % args.eval_every == 0 || step == args.steps {
            let train = window.iter().sum::<f64>() / window.len() as f64;
            window.clear();
            let valid = model.valid();
            let held: f64 = heldout
                .iter()
                .map(|(i, t)| f64::from(loss_of(&valid, i.clone(), t.clone()).into_scalar::<f32>()))
                .sum::<f64>()
                / heldout.len() as f64;
            train_curve.push((step, train));
            heldout_curve.push((step, held));
            eprintln!(
                "{:>16} step {step:>5}: train {train:.4} held-out {held:.4}",
                args.norm.name()
            );
        }
    }
    let step_median = median(step_ms[WARM_STEPS..].to_vec());
    let norm_ms = time_norms(&args, model.norm_calls(), &device);
    let adapter = wgpu_rmsnorm_burn::adapter_name(&base);
    let record = record_json(
        &args,
        first_loss,
        step_median,
        norm_ms,
        &train_curve,
        &heldout_curve,
        &adapter,
    );
    match &args.json {
        Some(path) => std::fs::write(path, &record).unwrap_or_else(|e| {
            eprintln!("cannot write {path}: {e}");
            std::process::exit(1);
        }),
        None => println!("{record}"),
    }
}

fn record_json(
    args: &Args,
    first_loss: f64,
    step_ms: f64,
    norm_ms: f64,
    train: &[(usize, f64)],
    heldout: &[(usize, f64)],
    adapter: &str,
) -> String {
    let (norm, implementation) = args.norm.norm_and_impl();
    // xtask turns fusion's exploration off with this variable (every operation then runs
    // unfused, still queued through burn's fusion stream).
    let fusion = std::env::var("BURN_FUSION_MAX_EXPLORATIONS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        != Some(0);
    let curve = |points: &[(usize, f64)]| {
        let items: Vec<String> = points
            .iter()
            .map(|(s, l)| format!("[{s}, {}]", number(*l)))
            .collect();
        format!("[{}]", items.join(", "))
    };
    let s = args.shape;
    let last = |curve: &[(usize, f64)]| number(curve.last().map_or(f64::NAN, |p| p.1));
    format!(
        "{{\"norm\": \"{norm}\", \"impl\": \"{implementation}\", \"name\": \"{}\", \
\"fusion\": {fusion}, \"step_ms\": {}, \"norm_ms\": {}, \"first_loss\": {}, \
\"final_loss\": {}, \"heldout_loss\": {}, \"steps\": {}, \"adapter\": \"{}\", \
\"model\": {{\"d_model\": {}, \"layers\": {}, \"heads\": {}, \"context\": {}, \"batch\": {}, \
\"vocab\": {}}}, \"train_curve\": {}, \"heldout_curve\": {}}}\n",
        args.norm.name(),
        number(step_ms),
        number(norm_ms),
        number(first_loss),
        last(train),
        last(heldout),
        args.steps,
        escape(adapter),
        s.d_model,
        s.layers,
        s.heads,
        s.context,
        args.batch,
        s.vocab,
        curve(train),
        curve(heldout),
    )
}

/// A JSON number, `null` for NaN and infinities (a diverged loss).
fn number(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.6}")
    } else {
        "null".into()
    }
}

/// `s` inside a JSON string.
fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect()
}
