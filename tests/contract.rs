//! The WGSL/Rust contract, read from the WGSL through naga's reflection: the `Params`
//! uniform block and the binding indices cannot drift apart. No GPU needed.
#![cfg(not(target_arch = "wasm32"))] // Native; tests/web.rs runs in the browser.

#[path = "../src/shader_check.rs"]
mod shader_check;
mod shaders {
    pub use wgpu_rmsnorm::shaders::*;
}

use shaders::*;
use wgpu_rmsnorm::kernel::{
    BINDING_BIAS, BINDING_GAIN, BINDING_GRAD_BIAS, BINDING_GRAD_GAIN, BINDING_GRAD_OUTPUT,
    BINDING_GRAD_SUM, BINDING_PARAMS, BINDING_PARTIALS, BINDING_RESIDUAL, BINDING_STATS,
    BINDING_SUM, BINDING_X, BINDING_Y, PARAMS_FIELDS, PARAMS_SIZE,
};

/// Every tensor a forward module can have, so that every binding is declared.
fn every_tensor() -> TensorIo {
    TensorIo {
        activations: Storage::PackedF16,
        weights: Storage::F32,
        gain: true,
        bias: true,
        residual: ResidualIo::StoreSum,
        stats: StatsIo::Store,
        grad_sum: false,
    }
}

/// The backward module with every tensor it can have.
fn backward_module() -> naga::Module {
    let shape = ModuleShape {
        elem: ElemLayout::Scalar,
        reduction: ReductionKind::WorkgroupTree,
        workgroup_size: 64,
        cache_len: 1,
        io: every_tensor().backward(),
    };
    shader_check::validate(
        &compose(RMSNORM_BACKWARD, &shape, ShaderTarget::Native),
        false,
    )
    .unwrap()
}

fn module() -> naga::Module {
    let shape = ModuleShape {
        elem: ElemLayout::Scalar,
        reduction: ReductionKind::WorkgroupTree,
        workgroup_size: 64,
        cache_len: 1,
        io: every_tensor(),
    };
    shader_check::validate(&compose(RMSNORM, &shape, ShaderTarget::Native), false).unwrap()
}

#[test]
fn params_layout_matches_the_wgsl_struct() {
    let module = module();
    let (_, params) = module
        .types
        .iter()
        .find(|(_, ty)| ty.name.as_deref() == Some("Params"))
        .expect("struct Params");
    let naga::TypeInner::Struct { members, span } = &params.inner else {
        panic!("Params is not a struct");
    };
    let wgsl: Vec<(String, usize)> = members
        .iter()
        .map(|m| (m.name.clone().unwrap(), m.offset as usize))
        .collect();
    let rust: Vec<(String, usize)> = PARAMS_FIELDS
        .iter()
        .map(|(name, offset)| (name.to_string(), *offset))
        .collect();
    assert_eq!(wgsl, rust);
    assert_eq!(*span as usize, PARAMS_SIZE);
}

#[test]
fn binding_indices_match_the_wgsl_globals() {
    let module = module();
    let backward = backward_module();
    let binding = |module: &naga::Module, name: &str| {
        module
            .global_variables
            .iter()
            .find(|(_, g)| g.name.as_deref() == Some(name))
            .and_then(|(_, g)| g.binding.as_ref())
            .map(|b| (b.group, b.binding))
            .unwrap_or_else(|| panic!("no bound global {name}"))
    };
    for (name, index) in [
        ("params", BINDING_PARAMS),
        ("x", BINDING_X),
        ("gain", BINDING_GAIN),
        ("bias", BINDING_BIAS),
        ("y", BINDING_Y),
        ("row_partials", BINDING_PARTIALS),
        ("r", BINDING_RESIDUAL),
        ("sum", BINDING_SUM),
        ("stats", BINDING_STATS),
    ] {
        assert_eq!(binding(&module, name), (0, index), "{name}");
    }
    // The backward: x, dx (y's binding), the gain and r as in the forward; its own tensors.
    for (name, index) in [
        ("params", BINDING_PARAMS),
        ("x", BINDING_X),
        ("y", BINDING_Y),
        ("gain", BINDING_GAIN),
        ("dy", BINDING_GRAD_OUTPUT),
        ("dsum", BINDING_GRAD_SUM),
        ("stats", BINDING_STATS),
        ("weight_partials", BINDING_PARTIALS),
        ("grad_gain", BINDING_GRAD_GAIN),
        ("grad_bias", BINDING_GRAD_BIAS),
    ] {
        assert_eq!(binding(&backward, name), (0, index), "backward {name}");
    }
}
