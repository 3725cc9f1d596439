// Validates every WGSL module the library can build, so that an invalid shader fails the
// build with its own file and line instead of failing at run time.

#[path = "src/shader_check.rs"]
mod shader_check;
#[path = "src/shaders.rs"]
#[allow(dead_code)]
mod shaders;

fn main() {
    println!("cargo:rerun-if-changed=shaders");
    println!("cargo:rerun-if-changed=src/shaders.rs");
    println!("cargo:rerun-if-changed=src/shader_check.rs");
    for file in shaders::STANDALONE {
        let composed = shaders::ComposedShader::standalone(file);
        if let Err(message) = shader_check::validate(&composed, false) {
            eprintln!("invalid WGSL:\n{message}");
            std::process::exit(1);
        }
    }
    // Every kernel, layout and reduction, at the smallest and a typical workgroup and cache.
    for kernel in shaders::KERNELS {
        for elem in shaders::ELEM_LAYOUTS {
            for reduction in shaders::REDUCTIONS {
                for (workgroup_size, cache_len) in [(1, 1), (256, 8)] {
                    let shape = shaders::ModuleShape {
                        elem,
                        reduction,
                        workgroup_size,
                        cache_len,
                    };
                    let composed = shaders::compose(kernel, &shape, shaders::ShaderTarget::Native);
                    if let Err(message) =
                        shader_check::validate(&composed, reduction.uses_subgroups())
                    {
                        eprintln!("invalid WGSL ({shape:?}):\n{message}");
                        std::process::exit(1);
                    }
                }
            }
        }
    }
}
