//! `cargo xtask`: everything that is not plain cargo.
//!
//!   cargo xtask setup              install what is missing (as root), or print the commands
//!   cargo xtask test               setup, then every test: native on Vulkan (lavapipe) and on
//!                                  the GL backend (llvmpipe), wasm in headless Chromium
//!                                  (SwiftShader WebGPU), the demo page end to end
//!   cargo xtask demo [args]        setup, the main job (CLI, args go to it), then build and
//!                                  serve the demo page until Ctrl-C
//!   cargo xtask bench [--quick] [--json PATH]
//!                                  setup, then the throughput benchmark (benches/throughput.rs)
//!   cargo xtask train [--quick] [--json PATH]
//!                                  setup, then train the burn integration's small language
//!                                  model once per normalization (loss, step and norm time)
//!   cargo xtask bench-browser [--json PATH]
//!                                  setup, then the npm package against ONNX Runtime Web's
//!                                  WebGPU kernels in headless Chromium (benches/ort)
//!   cargo xtask build-web          build the demo page's package (the npm package plus the
//!                                  benchmark panel's calls) into www/pkg
//!   cargo xtask pack               build the npm package (bindings, wasm-opt -Oz) and pack it
//!                                  into target/npm/wgpu-rmsnorm-VERSION.tgz
//!   cargo xtask bundle             stripped release binaries of the native tests, the CLI and
//!                                  the benchmark with run.sh, in target/bundle/ (for a GPU
//!                                  machine without Rust)
//!   cargo xtask check-bundle       the bundle, copied out of the repository, run.sh --quick
//!                                  run on this machine
//!   cargo xtask serve [--port N]   serve www/ on 127.0.0.1 (default port 8000)

mod bundle;
mod serve;
mod train;
mod web;

use web::build_web;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Debian packages: the Vulkan loader and Mesa's lavapipe, EGL and Mesa's llvmpipe for the GL
/// backend (native tests), Chromium and its WebDriver (browser tests), Node.js and npm (the
/// end-to-end test).
const APT_PACKAGES: &[&str] = &[
    "libvulkan1",
    "mesa-vulkan-drivers",
    "libegl1",
    "libegl-mesa0",
    "libgl1-mesa-dri",
    "chromium",
    "chromium-driver",
    "nodejs",
    "npm",
];
const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// Must equal the `wasm-bindgen` crate's version pinned in Cargo.toml.
const WASM_BINDGEN_VERSION: &str = "0.2.130";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let result = match task.as_str() {
        "setup" => setup(),
        "test" => setup().and_then(|()| test()),
        "demo" => setup().and_then(|()| demo(&rest)),
        "bench" => setup().and_then(|()| bench(&rest)),
        "train" => setup().and_then(|()| train::train(&rest, &root(), &cargo())),
        "build-web" => build_web(),
        "pack" => web::pack().map(|_| ()),
        "bundle" => bundle::bundle().map(|_| ()),
        "bench-browser" => setup().and_then(|()| web::bench_browser(&rest)),
        "check-bundle" => bundle::check_bundle(),
        "serve" => port_arg(&rest).and_then(|port| serve::serve_forever(&root().join("www"), port)),
        _ => Err(format!(
            "unknown task {task:?}\nusage: cargo xtask <setup|test|demo|bench|bench-browser|train|build-web|pack|bundle|check-bundle|serve [--port N]>"
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

fn port_arg(args: &[String]) -> Result<u16, String> {
    match args {
        [] => Ok(8000),
        [flag, port] if flag == "--port" => port
            .parse()
            .map_err(|_| format!("--port {port}: not a port number")),
        _ => Err(format!("unexpected arguments {args:?}: use --port N")),
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

fn output(program: &str, args: &[&str]) -> Option<String> {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn is_root() -> bool {
    output("id", &["-u"]).is_some_and(|o| o.trim() == "0")
}

fn setup() -> Result<(), String> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output("dpkg-query", &["-W", "-f=${Status}", p])
                .is_some_and(|o| o.contains("install ok installed"))
        })
        .collect();
    // Node.js may come from elsewhere than Debian (the machine image ships its own).
    let missing: Vec<&str> = missing
        .into_iter()
        .filter(|p| {
            !matches!(*p, "nodejs" | "npm") || output(binary_of(p), &["--version"]).is_none()
        })
        .collect();
    let wasm_target = output("rustup", &["target", "list", "--installed"])
        .is_some_and(|o| o.lines().any(|l| l.trim() == WASM_TARGET));
    let bindgen = output("wasm-bindgen", &["--version"])
        .is_some_and(|o| o.trim().ends_with(WASM_BINDGEN_VERSION));
    let npm_packages = root()
        .join("tests/e2e/node_modules/playwright-core")
        .exists()
        && web::wasm_opt().exists();

    let mut todo = Vec::new();
    if !missing.is_empty() {
        todo.push(format!(
            "apt-get update && apt-get install -y {}",
            missing.join(" ")
        ));
    }
    if !wasm_target {
        todo.push(format!("rustup target add {WASM_TARGET}"));
    }
    if !bindgen {
        todo.push(format!(
            "cargo install wasm-bindgen-cli --version {WASM_BINDGEN_VERSION} --force"
        ));
    }
    if !npm_packages {
        todo.push("npm ci --prefix tests/e2e".into());
    }
    if todo.is_empty() {
        return Ok(());
    }
    if !missing.is_empty() && !is_root() {
        return Err(format!(
            "missing tools; as root run:\n  {}",
            todo.join("\n  ")
        ));
    }
    if !missing.is_empty() {
        run(Command::new("apt-get").arg("update"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !wasm_target {
        run(Command::new("rustup").args(["target", "add", WASM_TARGET]))?;
    }
    if !bindgen {
        run(Command::new(cargo()).args([
            "install",
            "wasm-bindgen-cli",
            "--version",
            WASM_BINDGEN_VERSION,
            "--force",
        ]))?;
    }
    if !npm_packages {
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix", "tests/e2e"])
            .current_dir(root()))?;
    }
    Ok(())
}

fn binary_of(package: &str) -> &str {
    match package {
        "nodejs" => "node",
        other => other,
    }
}

/// A command in the workspace root with a runtime dir (silences a Mesa warning).
fn workspace_command(program: &str) -> Command {
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
    // Native, the whole suite on two backends: Vulkan (lavapipe where there is no GPU) and
    // GL (llvmpipe), each of which has found bugs the other has not.
    for backend in ["vulkan", "gl"] {
        eprintln!("xtask: native tests on WGPU_BACKEND={backend}");
        run(workspace_command(&cargo())
            .args(["test", "--workspace"])
            .env("REQUIRE_GPU", "1")
            .env("WGPU_BACKEND", backend))?;
        // The examples, as a user runs them (each checks its results against the reference).
        for example in ["high_level", "low_level", "layer_norm"] {
            run(workspace_command(&cargo())
                .args(["run", "--quiet", "--example", example])
                .env("WGPU_BACKEND", backend))?;
        }
    }
    // The same crate in headless Chromium on SwiftShader's WebGPU (webdriver.json has the
    // flags). REQUIRE_GPU is read when the test is compiled.
    run(workspace_command(&cargo())
        .args(["test", "--target", WASM_TARGET, "--test", "web"])
        .env("REQUIRE_GPU", "1")
        .env("CHROMEDRIVER", "/usr/bin/chromedriver")
        .env("WASM_BINDGEN_TEST_TIMEOUT", "600"))?;
    // The demo page end to end.
    build_web()?;
    let server = serve::Server::start(&root().join("www"), 0)?;
    let url = format!("http://127.0.0.1:{}/", server.port());
    // The npm package, packed and installed into an empty folder, imported by a page there.
    let package = serve::Server::start(&web::install_packed_package()?, 0)?;
    let package_url = format!("http://127.0.0.1:{}/", package.port());
    run(workspace_command("node")
        .args(["--test", "tests/e2e/"])
        .env("DEMO_URL", &url)
        .env("PACKAGE_URL", &package_url)
        .env("SCREENSHOT_DIR", root().join("target")))?;
    // The GPU bundle, as a machine without Rust runs it: copied out of the repository,
    // run.sh --quick on this machine's adapter.
    bundle::check_bundle()
}

fn bench(args: &[String]) -> Result<(), String> {
    // A relative --json path is taken from where the command was started.
    let here = std::env::current_dir().map_err(|e| e.to_string())?;
    let mut forwarded = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        forwarded.push(arg.clone());
        if arg == "--json" {
            let path = it.next().ok_or("--json needs a path")?;
            forwarded.push(here.join(path).display().to_string());
        }
    }
    run(workspace_command(&cargo())
        .args(["bench", "--bench", "throughput", "--"])
        .args(forwarded))
}

fn demo(args: &[String]) -> Result<(), String> {
    run(workspace_command(&cargo())
        .args(["run", "--release", "--package", "wgpu-rmsnorm", "--"])
        .args(args))?;
    // `--help` prints the main job's options and stops there.
    if args.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(());
    }
    build_web()?;
    serve::serve_forever(&root().join("www"), 8000)
}
