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
    /// Whether the file's read-once entry point needs the generated `RowCache` code.
    pub row_cache: bool,
}

macro_rules! shader_file {
    ($name:literal, $row_cache:literal) => {
        ShaderFile {
            path: concat!("shaders/", $name),
            text: include_str!(concat!("../shaders/", $name)),
            row_cache: $row_cache,
        }
    };
    ($name:literal) => {
        shader_file!($name, false)
    };
}

/// `shaders/rmsnorm.wgsl`: RMSNorm and pRMSNorm forward.
pub const RMSNORM: ShaderFile = shader_file!("rmsnorm.wgsl", true);
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

/// What is compiled into one module besides its kernel file: the element layout, the
/// reduction, and two constants the host writes into the module's prelude.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModuleShape {
    /// The element layout.
    pub elem: ElemLayout,
    /// The workgroup reduction.
    pub reduction: ReductionKind,
    /// `WG`: invocations per workgroup. A constant rather than an override, so that
    /// workgroup arrays are sized by it (4 WG bytes) on every compiler.
    pub workgroup_size: u32,
    /// `CACHE_LEN`: the Elems each invocation keeps of a row in the read-once kernel
    /// (`rms_norm_cached`), at least 1.
    pub cache_len: u32,
}

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

/// The module for `kernel` with the given shape, for `target`.
pub fn compose(kernel: ShaderFile, shape: &ModuleShape, target: ShaderTarget) -> ComposedShader {
    let elem = match shape.elem {
        ElemLayout::Vec4 => ELEM_VEC4,
        ElemLayout::Scalar => ELEM_SCALAR,
    };
    let reduce = match shape.reduction {
        ReductionKind::WorkgroupTree => REDUCE_TREE,
        ReductionKind::Subgroups => REDUCE_SUBGROUP,
        ReductionKind::SingleSubgroup => REDUCE_SINGLE,
    };
    let mut source = String::new();
    if shape.reduction.uses_subgroups() && target == ShaderTarget::Browser {
        source.push_str("enable subgroups;\n");
    }
    source.push_str(&format!("const WG: u32 = {}u;\n", shape.workgroup_size));
    if kernel.row_cache {
        source.push_str(&row_cache_code(shape.cache_len.max(1)));
    }
    let mut parts = vec![(1, "<prelude>")];
    for file in [elem, reduce, NORM_COMMON, kernel] {
        parts.push((source.lines().count() + 1, file.path));
        source.push_str(file.text);
        if !source.ends_with('\n') {
            source.push('\n');
        }
    }
    ComposedShader { source, parts }
}

/// The read-once kernel's cache of `len` Elems, unrolled: a struct with one field per Elem
/// and the three functions over it that `rms_norm_cached` calls (see `shaders/rmsnorm.wgsl`).
fn row_cache_code(len: u32) -> String {
    let fields: Vec<String> = (0..len).map(|j| format!("c{j}: Elem")).collect();
    let index = |j: u32| format!("lane + {j}u * WG");
    let loads: Vec<String> = (0..len)
        .map(|j| format!("load_in_row(row_start, {})", index(j)))
        .collect();
    let mut code = format!(
        "struct RowCache {{ {} }}\n\
         fn cache_load(row_start: u32, lane: u32) -> RowCache {{\n    return RowCache({});\n}}\n\
         fn cache_sum_squares(c: RowCache, lane: u32, pre: f32) -> Elem {{\n    var s = Elem(0.0);\n",
        fields.join(", "),
        loads.join(", ")
    );
    for j in 0..len {
        code.push_str(&format!(
            "    s = s + square_first_k(c.c{j} * pre, {});\n",
            index(j)
        ));
    }
    code.push_str(
        "    return s;\n}\n\
         fn cache_store(c: RowCache, out_start: u32, lane: u32, f: vec2<f32>) {\n",
    );
    for j in 0..len {
        code.push_str(&format!(
            "    store_in_row(out_start, {}, (c.c{j} * f.x) * f.y);\n",
            index(j)
        ));
    }
    code.push_str("}\n");
    code
}
