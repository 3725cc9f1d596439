// Validates every WGSL module the library can build, so that an invalid shader fails the
// build with its own file and line instead of failing at run time.

#[path = "src/shader_check.rs"]
mod shader_check;
#[path = "src/shaders.rs"]
#[allow(dead_code)]
mod shaders;

use shaders::{ModuleShape, ReductionKind, StatsIo, Storage, TensorIo};

fn main() {
    println!("cargo:rerun-if-changed=shaders");
    println!("cargo:rerun-if-changed=src/shaders.rs");
    println!("cargo:rerun-if-changed=src/shader_check.rs");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        write_compact_shaders();
    }
    for file in shaders::STANDALONE {
        let composed = shaders::ComposedShader::standalone(file);
        if let Err(message) = shader_check::validate(&composed, false) {
            eprintln!("invalid WGSL:\n{message}");
            std::process::exit(1);
        }
    }
    for storage in Storage::ALL {
        let composed = shaders::compose_residual_add(storage, 64);
        if let Err(message) = shader_check::validate(&composed, false) {
            eprintln!("invalid WGSL (residual add, {storage:?}):\n{message}");
            std::process::exit(1);
        }
    }
    for elem in shaders::ELEM_LAYOUTS {
        // Every reduction, at the smallest and a typical workgroup and cache.
        for reduction in shaders::REDUCTIONS {
            for (workgroup_size, cache_len) in [(1, 1), (256, 8)] {
                check(&ModuleShape {
                    elem,
                    reduction,
                    workgroup_size,
                    cache_len,
                    io: TensorIo::F32,
                });
            }
        }
        // Every storage format of activations and weights with every residual form.
        for activations in Storage::ALL {
            for weights in Storage::ALL {
                for residual in shaders::RESIDUALS {
                    let io = TensorIo {
                        activations,
                        weights,
                        gain: true,
                        bias: activations == weights,
                        residual,
                        // Saved statistics in half the modules.
                        stats: if activations == weights {
                            StatsIo::Store
                        } else {
                            StatsIo::None
                        },
                        grad_sum: false,
                    };
                    check(&ModuleShape {
                        elem,
                        reduction: ReductionKind::WorkgroupTree,
                        workgroup_size: 64,
                        cache_len: 4,
                        io,
                    });
                }
            }
        }
    }
}

/// Every kernel composed with `shape` (a backward kernel with the backward's tensors),
/// validated.
fn check(shape: &ModuleShape) {
    for kernel in shaders::KERNELS {
        let shape = &ModuleShape {
            io: if kernel.backward {
                shape.io.backward()
            } else {
                shape.io
            },
            ..*shape
        };
        let composed = shaders::compose(kernel, shape, shaders::ShaderTarget::Native);
        if let Err(message) = shader_check::validate(&composed, shape.reduction.uses_subgroups()) {
            eprintln!("invalid WGSL ({shape:?}):\n{message}");
            std::process::exit(1);
        }
    }
}

/// For the browser build: `shaders/` without comments and indentation (half the text, and
/// the .wasm carries every file), line for line, so that the composition's line map still
/// locates a compiler error. WGSL has no string literals, so `//` always starts a comment.
fn write_compact_shaders() {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("shaders");
    std::fs::create_dir_all(&out).expect("create OUT_DIR/shaders");
    for entry in std::fs::read_dir("shaders").expect("read shaders/") {
        let path = entry.expect("read shaders/").path();
        if path.extension().is_none_or(|e| e != "wgsl") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read a shader");
        // Line comments only: a block comment could hold `//` and lose its end.
        if text.contains("/*") {
            eprintln!(
                "{}: use // comments (the browser build strips them line by line)",
                path.display()
            );
            std::process::exit(1);
        }
        let compact: String = text
            .lines()
            .map(|line| {
                let code = line.split_once("//").map_or(line, |(code, _)| code);
                format!("{}\n", code.trim())
            })
            .collect();
        let name = path.file_name().expect("a file name");
        std::fs::write(out.join(name), compact).expect("write a compact shader");
    }
}
