//! Every module the library can build parses and validates with naga against WebGPU's
//! capabilities (plus subgroups where it uses them); the browser variant differs only by
//! the `enable subgroups;` directive.

#[path = "../src/shader_check.rs"]
mod shader_check;
mod shaders {
    pub use wgpu_rmsnorm::shaders::*;
}

use shaders::*;

#[test]
fn every_module_validates() {
    for kernel in KERNELS {
        for layout in ELEM_LAYOUTS {
            for reduction in REDUCTIONS {
                let shape = ModuleShape {
                    elem: layout,
                    reduction,
                    workgroup_size: 64,
                    cache_len: 8,
                    io: TensorIo::F32,
                };
                let native = compose(kernel, &shape, ShaderTarget::Native);
                let module = shader_check::validate(&native, reduction.uses_subgroups())
                    .unwrap_or_else(|e| panic!("{layout:?} {reduction:?}: {e}"));
                let mut entries: Vec<&str> = module
                    .entry_points
                    .iter()
                    .map(|e| e.name.as_str())
                    .collect();
                entries.sort_unstable();
                // The one-row-per-invocation entry only with its reduction.
                let per_invocation = reduction == ReductionKind::PerInvocation;
                let mut expected: Vec<&str> = kernel
                    .entries
                    .iter()
                    .copied()
                    .filter(|e| per_invocation || !e.ends_with("_per_invocation"))
                    .collect();
                expected.sort_unstable();
                assert_eq!(entries, expected, "{}", kernel.path);
                if reduction.uses_subgroups() {
                    let err = shader_check::validate(&native, false).unwrap_err();
                    assert!(err.contains("ubgroup"), "{err}");
                }
                let browser = compose(kernel, &shape, ShaderTarget::Browser);
                let expected = if reduction.uses_subgroups() {
                    format!("enable subgroups;\n{}", native.source)
                } else {
                    native.source.clone()
                };
                assert_eq!(browser.source, expected);
            }
        }
    }
}

#[test]
fn standalone_modules_validate() {
    for file in STANDALONE {
        let module = shader_check::validate(&ComposedShader::standalone(file), false)
            .unwrap_or_else(|e| panic!("{e}"));
        // The copies: the grid-stride `copy` and the row-loop `copy_rows`.
        let entries: Vec<&str> = module
            .entry_points
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(entries, ["copy", "copy_rows"], "{}", file.path);
    }
}

#[test]
fn errors_point_at_the_shader_file_and_line() {
    let shape = ModuleShape {
        elem: ElemLayout::Scalar,
        reduction: ReductionKind::WorkgroupTree,
        workgroup_size: 8,
        cache_len: 1,
        io: TensorIo::F32,
    };
    let composed = compose(RMSNORM, &shape, ShaderTarget::Native);
    let kernel_start = composed.source.find("fn rms_norm(").unwrap();
    let line = composed.source[..kernel_start].lines().count() + 1;
    assert_eq!(composed.locate(line).0, "shaders/rmsnorm.wgsl");
    assert_eq!(composed.locate(1), ("<prelude>", 1));
    let elem_start = composed.source.find("// Element layout").unwrap();
    let line = composed.source[..elem_start].lines().count() + 1;
    assert_eq!(composed.locate(line), ("shaders/elem_scalar.wgsl", 1));
}
