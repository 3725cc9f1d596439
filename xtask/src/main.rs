//! `cargo xtask`: everything that is not plain cargo.
//!
//!   cargo xtask setup   install what is missing (as root), or print the commands
//!   cargo xtask test    setup, then every test with REQUIRE_GPU=1
//!   cargo xtask demo    setup, then the main job (extra arguments go to the CLI)

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Debian packages the tests need: the Vulkan loader and Mesa's lavapipe software driver.
const APT_PACKAGES: &[&str] = &["libvulkan1", "mesa-vulkan-drivers"];
const WASM_TARGET: &str = "wasm32-unknown-unknown";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let result = match task.as_str() {
        "setup" => setup(),
        "test" => setup().and_then(|()| test()),
        "demo" => setup().and_then(|()| demo(&rest)),
        _ => Err(format!(
            "unknown task {task:?}\nusage: cargo xtask <setup|test|demo> [args for the demo]"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command, failing with its command line if it fails.
fn run(command: &mut Command) -> Result<(), String> {
    eprintln!("xtask: running {command:?}");
    let status = command
        .status()
        .map_err(|e| format!("could not start {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed with {status}"))
    }
}

fn succeeds(command: &mut Command) -> bool {
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn setup() -> Result<(), String> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    let wasm_missing = !Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(WASM_TARGET));

    if !missing.is_empty() {
        let install = format!("apt-get update && apt-get install -y {}", missing.join(" "));
        if !is_root() {
            return Err(format!("missing packages; as root run:\n  {install}"));
        }
        run(Command::new("apt-get").arg("update"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if wasm_missing {
        run(Command::new("rustup").args(["target", "add", WASM_TARGET]))?;
    }
    if !succeeds(Command::new("sh").args(["-c", "ls /usr/share/vulkan/icd.d/lvp_icd*.json"])) {
        eprintln!("xtask: warning: no lavapipe ICD in /usr/share/vulkan/icd.d");
    }
    Ok(())
}

/// The environment every GPU run here gets: a runtime dir (silences a Mesa warning).
fn gpu_command(program: &str) -> Command {
    let mut command = Command::new(program);
    command.current_dir(root());
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        command.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    command
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn test() -> Result<(), String> {
    // The library must build for the browser too.
    run(gpu_command(&cargo()).args(["check", "--lib", "--target", WASM_TARGET]))?;
    run(gpu_command(&cargo())
        .args(["test", "--workspace"])
        .env("REQUIRE_GPU", "1"))
}

fn demo(args: &[String]) -> Result<(), String> {
    run(gpu_command(&cargo())
        .args(["run", "--release", "--package", "wgpu-rmsnorm", "--"])
        .args(args))
}
