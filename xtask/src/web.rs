//! The browser build: the wasm module, its bindings, wasm-opt, and an npm package of them in
//! `www/pkg` (what `wasm-pack` would make), and the test that installs that package.

use super::{cargo, root, run, workspace_command, WASM_TARGET};
use std::path::{Path, PathBuf};

/// The npm project under `tests/e2e` holds the end-to-end tests' playwright-core and the
/// build's wasm-opt (binaryen's npm package: Debian's binaryen 108 breaks this module).
pub(crate) fn wasm_opt() -> PathBuf {
    root().join("tests/e2e/node_modules/.bin/wasm-opt")
}

/// WebAssembly features rustc emits for wasm32-unknown-unknown (its default target
/// features): wasm-opt must allow exactly these, or it refuses the module or rewrites it.
const WASM_FEATURES: &[&str] = &[
    "--enable-bulk-memory",
    "--enable-multivalue",
    "--enable-mutable-globals",
    "--enable-nontrapping-float-to-int",
    "--enable-reference-types",
    "--enable-sign-ext",
];

/// Builds the demo page's package in `www/pkg`: the npm package's contents plus the
/// benchmark's measurements (feature `benchmark`) for the page's benchmark panel.
pub(crate) fn build_web() -> Result<(), String> {
    build_package(&root().join("www/pkg"), &["benchmark"])
}

/// Builds the npm package in `target/npm/pkg` and packs it (`npm pack`): returns the
/// tarball.
pub(crate) fn pack() -> Result<PathBuf, String> {
    let out = root().join("target/npm");
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(|e| e.to_string())?;
    }
    let pkg = out.join("pkg");
    build_package(&pkg, &[])?;
    run(workspace_command("npm")
        .args(["pack", "--silent", "--pack-destination"])
        .arg(&out)
        .arg(&pkg))?;
    let tarball = std::fs::read_dir(&out)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .ok_or("npm pack made no tarball")?;
    eprintln!(
        "xtask: npm package {} ({} bytes)",
        tarball.display(),
        size(&tarball)
    );
    Ok(tarball)
}

/// Builds a package into `pkg`: the crate as a cdylib (only here: Rust dependents get the
/// rlib alone) with `features`, the wasm-bindgen bindings, the .wasm through
/// `wasm-opt -Oz`, and package.json, the README and the licences.
fn build_package(pkg: &Path, features: &[&str]) -> Result<(), String> {
    run(workspace_command(&cargo())
        .args([
            "rustc",
            "--lib",
            "--crate-type",
            "cdylib",
            "--profile",
            "web",
        ])
        .args(["--target", WASM_TARGET, "--features", &features.join(",")]))?;
    let wasm = root().join("target/wasm32-unknown-unknown/web/wgpu_rmsnorm.wasm");
    // A stale package (an old file list) must not survive a rebuild.
    if pkg.exists() {
        std::fs::remove_dir_all(pkg).map_err(|e| format!("removing {}: {e}", pkg.display()))?;
    }
    run(workspace_command("wasm-bindgen")
        .args(["--target", "web", "--out-dir"])
        .arg(pkg)
        .arg(&wasm))?;
    let module = pkg.join("wgpu_rmsnorm_bg.wasm");
    let before = size(&module);
    let optimized = pkg.join("wgpu_rmsnorm_bg.opt.wasm");
    run(workspace_command(&wasm_opt().display().to_string())
        .args(["-Oz", "--strip-debug", "--strip-producers"])
        .args(WASM_FEATURES)
        .arg(&module)
        .arg("-o")
        .arg(&optimized))?;
    std::fs::rename(&optimized, &module).map_err(|e| e.to_string())?;
    eprintln!(
        "xtask: {}: {before} bytes from wasm-bindgen, {} after wasm-opt -Oz",
        module.display(),
        size(&module)
    );
    write_package_files(pkg)
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// package.json (version from Cargo.toml), README.md and the licences.
fn write_package_files(pkg: &Path) -> Result<(), String> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).map_err(|e| e.to_string())?;
    let field = |key: &str| {
        manifest
            .lines()
            .find_map(|line| {
                let value = line.strip_prefix(key)?.trim_start().strip_prefix('=')?;
                Some(value.trim().trim_matches('"').to_string())
            })
            .ok_or_else(|| format!("Cargo.toml has no {key}"))
    };
    let files = [
        "wgpu_rmsnorm_bg.wasm",
        "wgpu_rmsnorm.js",
        "wgpu_rmsnorm.d.ts",
        "wgpu_rmsnorm_bg.wasm.d.ts",
        "README.md",
        "LICENSE-MIT",
        "LICENSE-APACHE",
    ];
    let quoted: Vec<String> = files.iter().map(|f| format!("\"{f}\"")).collect();
    let package = format!(
        r#"{{
  "name": "wgpu-rmsnorm",
  "version": "{version}",
  "description": "{description}",
  "license": "{license}",
  "type": "module",
  "main": "wgpu_rmsnorm.js",
  "module": "wgpu_rmsnorm.js",
  "types": "wgpu_rmsnorm.d.ts",
  "files": [{files}],
  "sideEffects": false,
  "keywords": ["webgpu", "rmsnorm", "layernorm", "normalization", "wasm"]
}}
"#,
        version = field("version")?,
        description = field("description")?,
        license = field("license")?,
        files = quoted.join(", "),
    );
    std::fs::write(pkg.join("package.json"), package).map_err(|e| e.to_string())?;
    for (from, to) in [
        ("www/README.npm.md", "README.md"),
        ("LICENSE-MIT", "LICENSE-MIT"),
        ("LICENSE-APACHE", "LICENSE-APACHE"),
    ] {
        std::fs::copy(root().join(from), pkg.join(to)).map_err(|e| format!("{from}: {e}"))?;
    }
    // wasm-bindgen's own .gitignore would make npm pack leave every file out.
    let _ = std::fs::remove_file(pkg.join(".gitignore"));
    Ok(())
}

/// The packed npm package installed into an empty folder with a page that imports it
/// (`tests/e2e/package-page/index.html`): returns that folder, to be served.
pub(crate) fn install_packed_package() -> Result<PathBuf, String> {
    let tarball = pack()?;
    let consumer = root().join("target/npm/consumer");
    std::fs::create_dir_all(&consumer).map_err(|e| e.to_string())?;
    std::fs::write(
        consumer.join("package.json"),
        "{ \"name\": \"consumer\", \"private\": true, \"type\": \"module\" }\n",
    )
    .map_err(|e| e.to_string())?;
    run(workspace_command("npm")
        .args(["install", "--no-audit", "--no-fund", "--offline"])
        .arg(&tarball)
        .current_dir(&consumer))?;
    std::fs::copy(
        root().join("tests/e2e/package-page/index.html"),
        consumer.join("index.html"),
    )
    .map_err(|e| e.to_string())?;
    eprintln!(
        "xtask: {} installed into {}",
        tarball.display(),
        consumer.display()
    );
    Ok(consumer)
}

/// `cargo xtask bench-browser [--json PATH]`: the npm package against ONNX Runtime Web's
/// WebGPU kernels in one headless Chromium run (`benches/ort/`): onnxruntime-web installed
/// there when missing, a folder of the page, the package and onnxruntime-web served, and
/// `benches/ort/compare.mjs` run against it.
pub(crate) fn bench_browser(args: &[String]) -> Result<(), String> {
    let json = match args {
        [] => None,
        [flag, path] if flag == "--json" => Some(
            std::env::current_dir()
                .map_err(|e| e.to_string())?
                .join(path),
        ),
        _ => return Err("usage: cargo xtask bench-browser [--json PATH]".into()),
    };
    let ort = root().join("benches/ort");
    if !ort.join("node_modules/onnxruntime-web").exists() {
        run(workspace_command("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&ort))?;
    }
    pack()?;
    let site = root().join("target/ort-compare");
    if site.exists() {
        std::fs::remove_dir_all(&site).map_err(|e| e.to_string())?;
    }
    std::fs::create_dir_all(&site).map_err(|e| e.to_string())?;
    for (name, from) in [
        ("index.html", ort.join("index.html")),
        ("page.mjs", ort.join("page.mjs")),
        ("node_modules", ort.join("node_modules")),
        ("pkg", root().join("target/npm/pkg")),
    ] {
        std::os::unix::fs::symlink(&from, site.join(name)).map_err(|e| format!("{name}: {e}"))?;
    }
    let server = super::serve::Server::start(&site, 0)?;
    let mut command = workspace_command("node");
    command.arg(ort.join("compare.mjs")).env(
        "COMPARE_URL",
        format!("http://127.0.0.1:{}/", server.port()),
    );
    if let Some(json) = json {
        command.env("JSON_OUT", json);
    }
    run(&mut command)
}
