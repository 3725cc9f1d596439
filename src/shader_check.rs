// Parses and validates composed WGSL with naga, reporting errors by shader file and line.
// Used by build.rs (fails the build) and tests/shaders.rs; not part of the library.

use crate::shaders::ComposedShader;
use naga::valid::{Capabilities, ShaderStages, SubgroupOperationSet, ValidationFlags, Validator};

/// Validates `shader` against WebGPU's baseline capabilities, plus subgroups when asked and
/// f16 where the module enables it.
pub fn validate(shader: &ComposedShader, subgroups: bool) -> Result<naga::Module, String> {
    let src = &shader.source;
    let locate = |location: Option<naga::SourceLocation>| match location {
        Some(loc) => {
            let (path, line) = shader.locate(loc.line_number as usize);
            format!("{path}:{line}:{}", loc.line_position)
        }
        None => "<unknown location>".to_string(),
    };
    let module = naga::front::wgsl::parse_str(src)
        .map_err(|e| format!("{}: {}", locate(e.location(src)), e.emit_to_string(src)))?;
    let mut capabilities = Capabilities::empty();
    if subgroups {
        capabilities |= Capabilities::SUBGROUP;
    }
    if src.starts_with("enable f16;") {
        capabilities |= Capabilities::SHADER_FLOAT16;
    }
    let mut validator = Validator::new(ValidationFlags::all(), capabilities);
    if subgroups {
        validator
            .subgroup_stages(ShaderStages::COMPUTE)
            .subgroup_operations(SubgroupOperationSet::all());
    }
    validator
        .validate(&module)
        .map_err(|e| format!("{}: {}", locate(e.location(src)), e.emit_to_string(src)))?;
    Ok(module)
}
