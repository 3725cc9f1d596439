//! The WGSL sources in `shaders/` and how they are put together into modules.
//!
//! A kernel file (`rmsnorm.wgsl`, `layernorm.wgsl`) is written against a small interface: an
//! element layout (`Elem`, `LANES`, `elem_*`), a workgroup reduction (`WG`, `reduce_setup`,
//! `reduce_sum`, `reduce_max`) and what both kernels share (`norm_common.wgsl`: parameters,
//! options, bindings, `store`). A module is their concatenation.
//! This file uses `std` alone: `build.rs` includes it to validate every module with naga.

/// The element layout: how many f32 one load moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElemLayout {
    /// `vec4<f32>`: hidden size and offsets are multiples of 4 elements.
    Vec4,
    /// `f32`: any hidden size and any 4-byte aligned offset.
    Scalar,
}

/// How a workgroup combines its invocations' partial sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReductionKind {
    /// A tree in workgroup memory (no subgroups needed).
    WorkgroupTree,
    /// subgroupAdd, then one partial per subgroup in workgroup memory.
    Subgroups,
    /// The workgroup is a single subgroup: subgroupAdd alone, no barrier.
    SingleSubgroup,
}

impl ReductionKind {
    /// Whether the module uses subgroup operations.
    pub fn uses_subgroups(self) -> bool {
        !matches!(self, ReductionKind::WorkgroupTree)
    }
}

/// Where the module will be compiled. The same source needs `enable subgroups;` in browsers
/// (Tint requires it) and must not have it natively (naga 30 rejects it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShaderTarget {
    /// wgpu's own backends (naga).
    Native,
    /// The browser's WebGPU (Tint in Chromium, and others).
    Browser,
}

impl ShaderTarget {
    /// The target this build runs on.
    pub const CURRENT: ShaderTarget = if cfg!(target_arch = "wasm32") {
        ShaderTarget::Browser
    } else {
        ShaderTarget::Native
    };
}

/// One source file of `shaders/`.
#[derive(Debug, Clone, Copy)]
pub struct ShaderFile {
    /// The file's path relative to the crate root.
    pub path: &'static str,
    /// Its text.
    pub text: &'static str,
}

macro_rules! shader_file {
    ($name:literal) => {
        ShaderFile {
            path: concat!("shaders/", $name),
            text: include_str!(concat!("../shaders/", $name)),
        }
    };
}

/// `shaders/rmsnorm.wgsl`: RMSNorm and pRMSNorm forward.
pub const RMSNORM: ShaderFile = shader_file!("rmsnorm.wgsl");
/// `shaders/layernorm.wgsl`: the LayerNorm baseline, in the same style.
pub const LAYERNORM: ShaderFile = shader_file!("layernorm.wgsl");
/// `shaders/copy_vec4.wgsl`: a plain vec4 copy, the benchmarks' speed-of-light kernel.
pub const COPY_VEC4: ShaderFile = shader_file!("copy_vec4.wgsl");
const NORM_COMMON: ShaderFile = shader_file!("norm_common.wgsl");
const ELEM_VEC4: ShaderFile = shader_file!("elem_vec4.wgsl");
const ELEM_SCALAR: ShaderFile = shader_file!("elem_scalar.wgsl");
const REDUCE_TREE: ShaderFile = shader_file!("reduce_workgroup_tree.wgsl");
const REDUCE_SUBGROUP: ShaderFile = shader_file!("reduce_subgroup.wgsl");
const REDUCE_SINGLE: ShaderFile = shader_file!("reduce_single_subgroup.wgsl");

/// Every standalone module (used as it is, not composed).
pub const STANDALONE: [ShaderFile; 1] = [COPY_VEC4];
/// Every kernel file.
pub const KERNELS: [ShaderFile; 2] = [RMSNORM, LAYERNORM];
/// Every element layout.
pub const ELEM_LAYOUTS: [ElemLayout; 2] = [ElemLayout::Vec4, ElemLayout::Scalar];
/// Every reduction.
pub const REDUCTIONS: [ReductionKind; 3] = [
    ReductionKind::WorkgroupTree,
    ReductionKind::Subgroups,
    ReductionKind::SingleSubgroup,
];

/// A composed module: its text, and which lines came from which file.
#[derive(Debug, Clone)]
pub struct ComposedShader {
    /// The WGSL text handed to the compiler.
    pub source: String,
    /// `(first line, 1-based, in source; file)` for each part, in order.
    parts: Vec<(usize, &'static str)>,
}

impl ComposedShader {
    /// The file and 1-based line within it of 1-based `line` of the composed source.
    pub fn locate(&self, line: usize) -> (&'static str, usize) {
        let (first, path) = self
            .parts
            .iter()
            .rev()
            .find(|(first, _)| *first <= line)
            .copied()
            .unwrap_or((1, "<prelude>"));
        (path, line + 1 - first)
    }
}

impl ComposedShader {
    /// A standalone file as a module of its own.
    pub fn standalone(file: ShaderFile) -> Self {
        Self {
            source: file.text.to_string(),
            parts: vec![(1, file.path)],
        }
    }
}

/// The module for `kernel` with the given layout and reduction, for `target`.
///
/// `cache_len` is the module constant `CACHE_LEN`: the Elems each invocation keeps of a row
/// in the read-once kernel (`rms_norm_cached`), a private array's size, which WGSL wants as
/// a constant rather than an override.
pub fn compose(
    kernel: ShaderFile,
    layout: ElemLayout,
    reduction: ReductionKind,
    target: ShaderTarget,
    cache_len: u32,
) -> ComposedShader {
    let elem = match layout {
        ElemLayout::Vec4 => ELEM_VEC4,
        ElemLayout::Scalar => ELEM_SCALAR,
    };
    let reduce = match reduction {
        ReductionKind::WorkgroupTree => REDUCE_TREE,
        ReductionKind::Subgroups => REDUCE_SUBGROUP,
        ReductionKind::SingleSubgroup => REDUCE_SINGLE,
    };
    let mut source = String::new();
    let mut parts = Vec::new();
    if reduction.uses_subgroups() && target == ShaderTarget::Browser {
        source.push_str("enable subgroups;\n");
    }
    source.push_str(&format!("const CACHE_LEN: u32 = {}u;\n", cache_len.max(1)));
    parts.push((1, "<prelude>"));
    for file in [elem, reduce, NORM_COMMON, kernel] {
        parts.push((source.lines().count() + 1, file.path));
        source.push_str(file.text);
        if !source.ends_with('\n') {
            source.push('\n');
        }
    }
    ComposedShader { source, parts }
}
