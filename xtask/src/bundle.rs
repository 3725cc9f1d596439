//! `cargo xtask bundle`: stripped x86-64 Linux release binaries of the native tests (one
//! binary, `tests/bundle.rs`), the CLI and the benchmark, the Vulkan loader and `run.sh`, in
//! `target/bundle/`, for a machine with a GPU driver and no Rust.

use super::{cargo, root, run, workspace_command};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The bundle's size limit.
const MAX_BYTES: u64 = 40 << 20;

/// Builds the bundle; returns its folder.
pub(crate) fn bundle() -> Result<PathBuf, String> {
    let executables = build_executables()?;
    let out = root().join("target/bundle");
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(|e| e.to_string())?;
    }
    std::fs::create_dir_all(out.join("lib")).map_err(|e| e.to_string())?;
    for (name, path) in &executables {
        let to = out.join(name);
        std::fs::copy(path, &to).map_err(|e| format!("{}: {e}", path.display()))?;
        run(Command::new("strip").arg(&to))?;
    }
    // The loader, for machines that have a driver but no libvulkan.so.1 (run.sh uses it only
    // where the system has none).
    let loader = Path::new("/usr/lib/x86_64-linux-gnu/libvulkan.so.1");
    if loader.exists() {
        std::fs::copy(loader, out.join("lib/libvulkan.so.1")).map_err(|e| e.to_string())?;
    }
    std::fs::copy(root().join("xtask/bundle/run.sh"), out.join("run.sh"))
        .map_err(|e| e.to_string())?;
    let total = folder_bytes(&out)?;
    eprintln!(
        "xtask: {} holds {total} bytes ({:.1} MiB)",
        out.display(),
        total as f64 / f64::from(1 << 20)
    );
    if total > MAX_BYTES {
        return Err(format!(
            "the bundle is {total} bytes, more than {MAX_BYTES}"
        ));
    }
    Ok(out)
}

/// Builds the three release executables; returns (bundle name, path) for each.
fn build_executables() -> Result<Vec<(&'static str, PathBuf)>, String> {
    let output = workspace_command(&cargo())
        .args(["build", "--release", "--package", "wgpu-rmsnorm"])
        .args([
            "--bin",
            "wgpu-rmsnorm",
            "--bench",
            "throughput",
            "--test",
            "bundle",
        ])
        .args(["--message-format", "json-render-diagnostics"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cargo build: {e}"))?;
    if !output.status.success() {
        return Err("cargo build of the bundle's binaries failed".into());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Each built target's line names its kind and, for executables, their path.
    let executable = |kind: &str, name: &str| -> Result<PathBuf, String> {
        stdout
            .lines()
            .filter(|l| l.contains("\"reason\":\"compiler-artifact\""))
            .filter(|l| l.contains(&format!("\"kind\":[\"{kind}\"]")))
            .filter(|l| l.contains(&format!("\"name\":\"{name}\"")))
            .find_map(|l| {
                let rest = l.split("\"executable\":\"").nth(1)?;
                Some(PathBuf::from(rest.split('"').next()?))
            })
            .ok_or_else(|| format!("cargo built no {kind} {name}"))
    };
    Ok(vec![
        ("wgpu-rmsnorm", executable("bin", "wgpu-rmsnorm")?),
        ("throughput", executable("bench", "throughput")?),
        ("gpu-tests", executable("test", "bundle")?),
    ])
}

fn folder_bytes(folder: &Path) -> Result<u64, String> {
    let mut total = 0;
    for entry in std::fs::read_dir(folder).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let meta = entry.metadata().map_err(|e| e.to_string())?;
        total += if meta.is_dir() {
            folder_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Copies the bundle to a folder outside the repository and runs `run.sh --quick` there on
/// this machine's adapter: what a GPU machine will do, checked here first.
pub(crate) fn check_bundle() -> Result<(), String> {
    let bundle = bundle()?;
    let away = std::env::temp_dir().join("wgpu-rmsnorm-bundle-check");
    if away.exists() {
        std::fs::remove_dir_all(&away).map_err(|e| e.to_string())?;
    }
    run(Command::new("cp").arg("-r").arg(&bundle).arg(&away))?;
    run(Command::new(away.join("run.sh"))
        .arg("--quick")
        .arg(away.join("out"))
        .current_dir(std::env::temp_dir()))
}
