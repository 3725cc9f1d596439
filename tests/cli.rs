//! The command-line program checks its arguments before any work: a bad value fails at once
//! with a message and the usage, and a shape too large for the device is refused before any
//! allocation.
#![cfg(not(target_arch = "wasm32"))]

use std::process::Command;
use std::time::{Duration, Instant};

fn cli(args: &[&str]) -> (i32, String, Duration) {
    let start = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_wgpu-rmsnorm"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("the CLI runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text, start.elapsed())
}

#[test]
fn bad_values_fail_before_any_work() {
    for (args, expected) in [
        (&["--p", "2"][..], "p = 2"),
        (&["--p", "nan"], "p = NaN"),
        (&["--k", "0"], "k = 0"),
        (&["--hidden", "0"], "hidden size is 0"),
        (&["--eps", "-1"], "eps = -1"),
        (&["--eps", "1e-40"], "subnormal"),
        (&["--rows", "-3"], "not a whole number"),
        (&["--gain", "big"], "use one of none, scale, unit-offset"),
        (&["--dtype", "f64"], "use one of f32, f16, bf16"),
        (&["--weight-dtype", "half"], "use one of f32, f16, bf16"),
        (&["--f16", "fast"], "use one of native, packed"),
        (
            &["--nonsense", "1"],
            "unknown option --nonsense: the options are --bias",
        ),
        (&["--nonsense"], "unknown option --nonsense"),
        (&["--rows"], "--rows needs a value"),
        (&["--rows=-3"], "--rows -3: not a whole number"),
        (&["--p=2"], "p = 2"),
        (&["--samples", "0"], "at least 1 sample"),
        (&["--bias=yes"], "--bias takes no value"),
    ] {
        let (code, text, elapsed) = cli(args);
        assert_eq!(code, 2, "{args:?}: {text}");
        assert!(text.contains(expected), "{args:?}: {text}");
        assert!(text.contains("usage"), "{args:?}: {text}");
        assert!(
            elapsed < Duration::from_secs(10),
            "{args:?} took {elapsed:?}"
        );
    }
}

/// A WGPU_BACKEND that names no backend is reported by its value, not as an empty set.
#[test]
fn a_misspelt_backend_is_named() {
    let output = Command::new(env!("CARGO_BIN_EXE_wgpu-rmsnorm"))
        .args(["--rows", "1", "--hidden", "4"])
        .env("WGPU_BACKEND", "vulkn")
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("the CLI runs");
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("WGPU_BACKEND=\"vulkn\" names none"), "{text}");
    assert!(text.contains("use vulkan, metal, dx12 or gl"), "{text}");
}

/// Help goes to stdout and exits 0.
#[test]
fn help_is_not_an_error() {
    for flag in ["--help", "-h"] {
        let output = Command::new(env!("CARGO_BIN_EXE_wgpu-rmsnorm"))
            .arg(flag)
            .output()
            .expect("the CLI runs");
        assert_eq!(output.status.code(), Some(0), "{flag}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("usage: wgpu-rmsnorm"), "{flag}: {stdout}");
        assert!(stdout.contains("--dtype"), "{flag}: {stdout}");
    }
}

/// 4e9 rows of 4096 would need 64 TiB: refused as too large for the device, at once.
#[test]
fn a_huge_shape_is_refused_before_allocating() {
    let (code, text, elapsed) = cli(&["--rows", "4000000000", "--hidden", "4096"]);
    if text.contains("no GPU adapter") && std::env::var("REQUIRE_GPU").as_deref() != Ok("1") {
        eprintln!("*** CLI TEST SKIPPED: no GPU adapter ***");
        return;
    }
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("too large a tensor"), "{text}");
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
}

/// `--backward` checks dx, dgain and dbias of RMSNorm, pRMSNorm and LayerNorm against the
/// reference and prints PASS for each (the acceptance run, on a smaller shape), with
/// a timing row for statistics recomputed and saved; f16 too.
#[test]
fn backward_passes_for_every_kernel() {
    for extra in [&[][..], &["--dtype", "f16"][..]] {
        let mut args = vec![
            "--rows",
            "16",
            "--hidden",
            "4097",
            "--p",
            "0.0625",
            "--backward",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--samples", "1"]);
        let (code, text, _) = cli(&args);
        assert_eq!(code, 0, "{args:?}: {text}");
        for kernel in ["RMSNorm", "pRMSNorm", "LayerNorm"] {
            let line = text
                .lines()
                .find(|l| l.starts_with(kernel) && l.contains(" dx "))
                .unwrap_or_else(|| panic!("{args:?}: no {kernel} row in\n{text}"));
            assert!(line.contains("PASS"), "{args:?}: {line}");
        }
        assert_eq!(text.matches("PASS").count(), 9, "{args:?}: {text}");
        assert!(!text.contains("FAIL"), "{args:?}: {text}");
        assert_eq!(text.matches("saved stats").count(), 3, "{args:?}: {text}");
    }
}
