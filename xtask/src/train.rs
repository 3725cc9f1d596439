//! `cargo xtask train [--quick] [--json PATH]`: the paper's experiment end to end. Trains the
//! burn integration's small language model once per normalization (each in a process of
//! its own, same seed, data, steps and optimizer), then prints the table, writes the
//! records as a JSON array and plots the loss curves as an SVG.

use std::path::Path;
use std::process::Command;

/// One training run: the normalization and whether burn's fusion explores.
struct Run {
    norm: &'static str,
    fusion: bool,
}

/// burn's norms with fusion (burn's default) and without; this library's with fusion.
const RUNS: [Run; 7] = [
    Run {
        norm: "burn-layernorm",
        fusion: true,
    },
    Run {
        norm: "burn-rmsnorm",
        fusion: true,
    },
    Run {
        norm: "layernorm",
        fusion: true,
    },
    Run {
        norm: "rmsnorm",
        fusion: true,
    },
    Run {
        norm: "prmsnorm",
        fusion: true,
    },
    Run {
        norm: "burn-layernorm",
        fusion: false,
    },
    Run {
        norm: "burn-rmsnorm",
        fusion: false,
    },
];

/// The model and schedule: `--quick` for a few minutes on a software adapter, the full run
/// for the README's table.
fn model_args(quick: bool) -> Vec<&'static str> {
    let steps = if quick {
        ["--steps", "40", "--eval-every", "10"]
    } else {
        ["--steps", "300", "--eval-every", "25"]
    };
    let model = [
        "--d-model",
        "128",
        "--layers",
        "2",
        "--heads",
        "4",
        "--context",
        "64",
        "--batch",
        "8",
    ];
    steps.into_iter().chain(model).collect()
}

pub fn train(args: &[String], root: &Path, cargo: &str) -> Result<(), String> {
    let here = std::env::current_dir().map_err(|e| e.to_string())?;
    let mut quick = false;
    let mut json = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--json" => json = Some(here.join(it.next().ok_or("--json needs a path")?)),
            other => {
                return Err(format!(
                    "unknown argument {other}: use [--quick] [--json PATH]"
                ))
            }
        }
    }
    let out = root.join("target/train");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    // Built once, before the first run is timed.
    super::run(Command::new(cargo).current_dir(root).args([
        "build",
        "--package",
        "wgpu-rmsnorm-burn",
        "--bin",
        "train",
    ]))?;
    let binary = root.join("target/debug/train");
    let mut records = Vec::new();
    for run in &RUNS {
        let name = format!("{}{}", run.norm, if run.fusion { "" } else { "-nofusion" });
        let path = out.join(format!("{name}.json"));
        eprintln!("xtask: training with {name}");
        let mut command = Command::new(&binary);
        command
            .current_dir(root)
            .args(["--norm", run.norm, "--json"])
            .arg(&path)
            .args(model_args(quick));
        if !run.fusion {
            // Every segment runs unfused: burn's fusion off, at run time.
            command.env("BURN_FUSION_MAX_EXPLORATIONS", "0");
        }
        super::run(&mut command)?;
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        records.push(Record::parse(&name, text.trim())?);
    }
    print_table(&records);
    let array = format!(
        "[\n{}\n]\n",
        records
            .iter()
            .map(|r| r.json.as_str())
            .collect::<Vec<_>>()
            .join(",\n")
    );
    let json = json.unwrap_or_else(|| out.join("train.json"));
    std::fs::write(&json, array).map_err(|e| e.to_string())?;
    let svg = out.join("loss.svg");
    std::fs::write(&svg, plot(&records)).map_err(|e| e.to_string())?;
    eprintln!(
        "xtask: records in {}, plot in {}",
        json.display(),
        svg.display()
    );
    check(&records)
}

/// What the table and plot read from a run's record.
struct Record {
    name: String,
    json: String,
    step_ms: f64,
    norm_ms: f64,
    first_loss: f64,
    final_loss: f64,
    heldout_loss: f64,
    train_curve: Vec<(f64, f64)>,
    heldout_curve: Vec<(f64, f64)>,
}

impl Record {
    fn parse(name: &str, json: &str) -> Result<Self, String> {
        let number = |key: &str| -> Result<f64, String> {
            let at = json
                .find(&format!("\"{key}\": "))
                .ok_or(format!("{name}: no {key}"))?;
            let rest = &json[at + key.len() + 4..];
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            rest[..end]
                .trim()
                .parse()
                .map_err(|e| format!("{name}: {key}: {e}"))
        };
        let curve = |key: &str| -> Result<Vec<(f64, f64)>, String> {
            let at = json
                .find(&format!("\"{key}\": ["))
                .ok_or(format!("{name}: no {key}"))?;
            let rest = &json[at + key.len() + 5..];
            let end = rest.find("]]").map_or(0, |e| e + 1);
            rest[..end]
                .split(']')
                .filter_map(|p| {
                    let p = p.trim_start_matches([',', ' ', '[']);
                    let (s, l) = p.split_once(',')?;
                    Some((s.trim().parse().ok()?, l.trim().parse().ok()?))
                })
                .map(Ok)
                .collect()
        };
        Ok(Self {
            name: name.to_string(),
            json: json.to_string(),
            step_ms: number("step_ms")?,
            norm_ms: number("norm_ms")?,
            first_loss: number("first_loss")?,
            final_loss: number("final_loss")?,
            heldout_loss: number("heldout_loss")?,
            train_curve: curve("train_curve")?,
            heldout_curve: curve("heldout_curve")?,
        })
    }
}

fn print_table(records: &[Record]) {
    println!(
        "{:<26} {:>10} {:>10} {:>8} {:>11} {:>11} {:>13}",
        "normalization",
        "step ms",
        "norm ms",
        "norm %",
        "first loss",
        "final loss",
        "held-out loss"
    );
    for r in records {
        println!(
            "{:<26} {:>10.1} {:>10.2} {:>7.1}% {:>11.4} {:>11.4} {:>13.4}",
            r.name,
            r.step_ms,
            r.norm_ms,
            100.0 * r.norm_ms / r.step_ms,
            r.first_loss,
            r.final_loss,
            r.heldout_loss
        );
    }
}

/// Every loss fell, and this library's RMSNorm spends less time per step in normalization
/// than burn's RmsNorm (fusion on).
fn check(records: &[Record]) -> Result<(), String> {
    for r in records {
        // NaN (a diverged loss) fails too.
        let fell = r.final_loss.partial_cmp(&r.first_loss) == Some(std::cmp::Ordering::Less);
        if !fell {
            return Err(format!(
                "{}: the loss did not fall ({} -> {})",
                r.name, r.first_loss, r.final_loss
            ));
        }
    }
    let norm_ms = |name: &str| records.iter().find(|r| r.name == name).map(|r| r.norm_ms);
    if let (Some(ours), Some(burns)) = (norm_ms("rmsnorm"), norm_ms("burn-rmsnorm")) {
        if ours >= burns {
            return Err(format!(
                "RMSNorm takes {ours:.2} ms per step here, burn's RmsNorm {burns:.2} ms"
            ));
        }
    }
    Ok(())
}

/// Train (dashed) and held-out (solid) loss against step, one colour per run.
fn plot(records: &[Record]) -> String {
    const COLOURS: [&str; 7] = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    ];
    let (w, h, left, right, top, bottom) = (900.0, 520.0, 70.0, 250.0, 30.0, 50.0);
    let points = records
        .iter()
        .flat_map(|r| r.train_curve.iter().chain(&r.heldout_curve));
    let (mut max_step, mut lo, mut hi) = (1.0f64, f64::MAX, f64::MIN);
    for &(s, l) in points {
        max_step = max_step.max(s);
        lo = lo.min(l);
        hi = hi.max(l);
    }
    let (lo, hi) = (lo.min(hi) - 0.05, hi + 0.05);
    let x = |s: f64| left + (w - left - right) * s / max_step;
    let y = |l: f64| top + (h - top - bottom) * (hi - l) / (hi - lo);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"14\">Loss (nats/char): held-out solid, train dashed</text>\n"
    );
    for i in 0..=5 {
        let l = lo + (hi - lo) * f64::from(i) / 5.0;
        svg += &format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{l:.2}</text>\n",
            w - right, left - 6.0, y(l) + 4.0, y0 = y(l)
        );
        let s = max_step * f64::from(i) / 5.0;
        svg += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{s:.0}</text>\n",
            x(s),
            h - bottom + 18.0
        );
    }
    svg += &format!(
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">step</text>\n",
        x(max_step / 2.0),
        h - 10.0
    );
    for (i, r) in records.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        for (curve, dash) in [
            (&r.heldout_curve, ""),
            (&r.train_curve, " stroke-dasharray=\"4 3\""),
        ] {
            let path: Vec<String> = curve
                .iter()
                .map(|&(s, l)| format!("{:.1},{:.1}", x(s), y(l)))
                .collect();
            svg += &format!(
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\"{dash} points=\"{}\"/>\n",
                path.join(" ")
            );
        }
        let ly = top + 18.0 * i as f64 + 10.0;
        svg += &format!(
            "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{} ({:.3})</text>\n",
            w - right + 10.0, w - right + 30.0, w - right + 36.0, ly + 4.0, r.name, r.heldout_loss
        );
    }
    svg + "</svg>\n"
}
