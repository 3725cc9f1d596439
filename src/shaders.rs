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
    /// Four elements per load for rows at any element (`shaders/rows_masked.wgsl`): any
    /// hidden size and offsets, where x, y, the residual and the sum share one phase within
    /// aligned groups of four elements and every binding reaches whole groups. The lanes of
    /// the rows around a row are zeroed on load and not written (packed 16-bit words that
    /// two rows share are written with atomic and/or). Forward kernels.
    Vec4Masked,
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
    /// None: each invocation normalizes whole rows alone (the `*_per_invocation` entry
    /// points).
    PerInvocation,
}

impl ReductionKind {
    /// Whether the module uses subgroup operations.
    pub fn uses_subgroups(self) -> bool {
        matches!(
            self,
            ReductionKind::Subgroups | ReductionKind::SingleSubgroup
        )
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

/// How one tensor's elements are stored, as a module reads or writes them. Arithmetic is f32
/// on every path; 16-bit elements are converted exactly to f32 on load and rounded to
/// nearest, ties to even, on store (`shaders/formats.wgsl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Storage {
    /// f32.
    F32,
    /// WGSL's own `f16` type (needs `enable f16;` and the device's `SHADER_F16`).
    F16,
    /// f16 bits, two per u32 word: every device.
    PackedF16,
    /// bf16 bits, two per u32 word (WGSL has no bf16 type).
    PackedBf16,
}

impl Storage {
    /// Every storage format.
    pub const ALL: [Storage; 4] = [
        Storage::F32,
        Storage::F16,
        Storage::PackedF16,
        Storage::PackedBf16,
    ];

    /// Bytes per element.
    pub fn element_bytes(self) -> u64 {
        match self {
            Storage::F32 => 4,
            _ => 2,
        }
    }

    /// The function of `shaders/formats.wgsl` that rounds an f32 to this format (`None`:
    /// f32 itself).
    fn round_function(self) -> Option<&'static str> {
        match self {
            Storage::F32 => None,
            Storage::F16 | Storage::PackedF16 => Some("f16_round"),
            Storage::PackedBf16 => Some("bf16_round"),
        }
    }
}

/// The fused residual add `h = x + r`, as a module sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResidualIo {
    /// No residual: the input is x.
    None,
    /// h is normalized and not stored.
    Add,
    /// h is stored to a buffer of its own.
    StoreSum,
    /// h is stored over r (r is then one read-write binding).
    StoreSumInPlace,
}

/// Every residual form.
pub const RESIDUALS: [ResidualIo; 4] = [
    ResidualIo::None,
    ResidualIo::Add,
    ResidualIo::StoreSum,
    ResidualIo::StoreSumInPlace,
];

/// What a module does with each row's saved statistics (RMSNorm: the two factors of
/// 1 / rms; LayerNorm: shift, mean and scale; f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatsIo {
    /// None are bound: the backward recomputes them.
    None,
    /// The forward writes them.
    Store,
    /// The backward reads them.
    Load,
}

/// The tensors of a module: their storage and which of them exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TensorIo {
    /// x, r, y and h.
    pub activations: Storage,
    /// gain and bias.
    pub weights: Storage,
    /// Whether the module reads a gain.
    pub gain: bool,
    /// Whether the module reads a bias.
    pub bias: bool,
    /// The residual add. A backward module reads r only with [`ResidualIo::Add`] (h is
    /// recomputed); where the forward stored h, the backward's input is h itself.
    pub residual: ResidualIo,
    /// The rows' saved statistics.
    pub stats: StatsIo,
    /// Backward only: whether dx adds the gradient of the stored sum h.
    pub grad_sum: bool,
}

impl TensorIo {
    /// f32 x and y, no gain, no bias, no residual.
    pub const F32: TensorIo = TensorIo {
        activations: Storage::F32,
        weights: Storage::F32,
        gain: false,
        bias: false,
        residual: ResidualIo::None,
        stats: StatsIo::None,
        grad_sum: false,
    };

    /// The tensors of the backward of a forward with these tensors: x (or h where the
    /// forward stored it, with the gradient of h), dy, the gain, dx; the statistics read
    /// where the forward saved them; dgain and dbias where there is a gain and a bias.
    pub fn backward(&self) -> TensorIo {
        let stores_sum = matches!(
            self.residual,
            ResidualIo::StoreSum | ResidualIo::StoreSumInPlace
        );
        TensorIo {
            residual: if stores_sum {
                ResidualIo::None
            } else {
                self.residual
            },
            stats: match self.stats {
                StatsIo::None => StatsIo::None,
                StatsIo::Store | StatsIo::Load => StatsIo::Load,
            },
            grad_sum: stores_sum || self.grad_sum,
            ..*self
        }
    }

    /// Whether the module needs `enable f16;`.
    pub fn uses_f16(&self) -> bool {
        self.activations == Storage::F16
            || (self.weights == Storage::F16 && (self.gain || self.bias))
    }

    /// Storage buffers a forward module binds (split rows' partial sums not counted).
    pub fn storage_buffers(&self) -> u32 {
        let residual = match self.residual {
            ResidualIo::None => 0,
            ResidualIo::Add | ResidualIo::StoreSumInPlace => 1,
            ResidualIo::StoreSum => 2,
        };
        2 + u32::from(self.gain) + u32::from(self.bias) + residual + self.stats_buffers()
    }

    /// Storage buffers the backward's row kernel binds (these tensors being
    /// [`TensorIo::backward`]'s): x, dy, dx, the gain, r or the gradient of h, the
    /// statistics, and the partial sums of dgain and dbias.
    pub fn backward_storage_buffers(&self) -> u32 {
        let residual = u32::from(self.residual == ResidualIo::Add || self.grad_sum);
        3 + u32::from(self.gain)
            + residual
            + self.stats_buffers()
            + u32::from(self.gain || self.bias)
    }

    fn stats_buffers(&self) -> u32 {
        u32::from(self.stats != StatsIo::None)
    }
}

/// Rows a backward workgroup takes per block (`ROW_BLOCK` in the module's prelude): each
/// row's statistics first, then dx of the block column by column, dgain and dbias summed
/// over the block before they reach the workgroup's partial row.
pub const BACKWARD_ROW_BLOCK: u32 = 8;

/// `@binding` of the parameters (uniform).
pub const BINDING_PARAMS: u32 = 0;
/// `@binding` of x.
pub const BINDING_X: u32 = 1;
/// `@binding` of the gain.
pub const BINDING_GAIN: u32 = 2;
/// `@binding` of the bias.
pub const BINDING_BIAS: u32 = 3;
/// `@binding` of y.
pub const BINDING_Y: u32 = 4;
/// `@binding` of split rows' partial sums (`shaders/rmsnorm.wgsl`).
pub const BINDING_PARTIALS: u32 = 5;
/// `@binding` of the residual r.
pub const BINDING_RESIDUAL: u32 = 6;
/// `@binding` of the stored sum h (when not written over r).
pub const BINDING_SUM: u32 = 7;
/// `@binding` of the backward's dy.
pub const BINDING_GRAD_OUTPUT: u32 = 8;
/// `@binding` of the backward's gradient of the stored sum h.
pub const BINDING_GRAD_SUM: u32 = 9;
/// `@binding` of the rows' saved statistics.
pub const BINDING_STATS: u32 = 10;
/// `@binding` of the backward's dgain (f32).
pub const BINDING_GRAD_GAIN: u32 = 11;
/// `@binding` of the backward's dbias (f32).
pub const BINDING_GRAD_BIAS: u32 = 12;
/// `@binding` of the backward's per-workgroup partial sums of dgain and dbias (the split
/// rows' binding: no module has both).
pub const BINDING_WEIGHT_PARTIALS: u32 = BINDING_PARTIALS;
/// `@binding` of the backward's split rows' values per (row, piece).
pub const BINDING_PIECES: u32 = 13;

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
            #[cfg(not(target_arch = "wasm32"))]
            text: include_str!(concat!("../shaders/", $name)),
            // Written by build.rs without comments and indentation, line for line.
            #[cfg(target_arch = "wasm32")]
            text: include_str!(concat!(env!("OUT_DIR"), "/shaders/", $name)),
        }
    };
}

/// A kernel: the files composed after the element layout, reduction, formats and
/// `norm_common.wgsl`, in order, and the entry points they define.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    /// The file that holds the kernel's entry points (its last).
    pub path: &'static str,
    /// The files, in order.
    pub files: &'static [ShaderFile],
    /// The entry points.
    pub entries: &'static [&'static str],
    /// The file of the one-row-per-invocation entry point, composed last where the reduction
    /// is [`ReductionKind::PerInvocation`] (and only there: its loop over rows depends on the
    /// invocation, so no other reduction's barriers may stand in it).
    pub per_invocation: Option<ShaderFile>,
    /// What the read-once entry point does with the generated `RowCache` code, if it has one.
    pub row_cache: Option<RowCacheUse>,
    /// Whether it is a backward kernel (its tensors are dy, dx, dgain, dbias besides x).
    pub backward: bool,
}

const RMS_SCALE: ShaderFile = shader_file!("rms_scale.wgsl");
const LAYER_MOMENTS: ShaderFile = shader_file!("layer_moments.wgsl");
const BACKWARD_COMMON: ShaderFile = shader_file!("backward_common.wgsl");
const RMSNORM_FILE: ShaderFile = shader_file!("rmsnorm.wgsl");
const LAYERNORM_FILE: ShaderFile = shader_file!("layernorm.wgsl");
const RMSNORM_PER_INVOCATION: ShaderFile = shader_file!("rmsnorm_per_invocation.wgsl");
const LAYERNORM_PER_INVOCATION: ShaderFile = shader_file!("layernorm_per_invocation.wgsl");
const RMSNORM_BACKWARD_FILE: ShaderFile = shader_file!("rmsnorm_backward.wgsl");
const LAYERNORM_BACKWARD_FILE: ShaderFile = shader_file!("layernorm_backward.wgsl");

/// What a kernel's read-once entry point does with its cached Elems: the generated functions
/// after `RowCache` and `cache_load`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowCacheUse {
    /// RMSNorm: `cache_sum_squares`, `cache_store` (y = (x * f.x) * f.y).
    Scale,
    /// LayerNorm: `cache_sum_centered`, `cache_store_normalized`.
    Normalize,
}

/// RMSNorm and pRMSNorm forward (`shaders/rmsnorm.wgsl`).
pub const RMSNORM: Kernel = Kernel {
    path: RMSNORM_FILE.path,
    files: &[RMS_SCALE, RMSNORM_FILE],
    entries: &[
        "rms_norm",
        "rms_norm_cached",
        "split_partials",
        "split_scale",
        "rms_norm_per_invocation",
    ],
    per_invocation: Some(RMSNORM_PER_INVOCATION),
    row_cache: Some(RowCacheUse::Scale),
    backward: false,
};
/// The LayerNorm baseline, in the same style (`shaders/layernorm.wgsl`).
pub const LAYERNORM: Kernel = Kernel {
    path: LAYERNORM_FILE.path,
    files: &[LAYER_MOMENTS, LAYERNORM_FILE],
    entries: &[
        "layer_norm",
        "layer_norm_cached",
        "split_partials",
        "split_scale",
        "layer_norm_per_invocation",
    ],
    per_invocation: Some(LAYERNORM_PER_INVOCATION),
    row_cache: Some(RowCacheUse::Normalize),
    backward: false,
};
/// RMSNorm and pRMSNorm backward (`shaders/rmsnorm_backward.wgsl`), with the pass that
/// sums dgain and dbias over rows.
pub const RMSNORM_BACKWARD: Kernel = Kernel {
    path: RMSNORM_BACKWARD_FILE.path,
    files: &[RMS_SCALE, BACKWARD_COMMON, RMSNORM_BACKWARD_FILE],
    entries: &[
        "rms_norm_backward",
        "backward_split_statistics",
        "backward_split_sums",
        "backward_split_dx",
        "weight_grads",
    ],
    per_invocation: None,
    row_cache: None,
    backward: true,
};
/// LayerNorm backward (`shaders/layernorm_backward.wgsl`), with the pass that sums dgain and
/// dbias over rows.
pub const LAYERNORM_BACKWARD: Kernel = Kernel {
    path: LAYERNORM_BACKWARD_FILE.path,
    files: &[LAYER_MOMENTS, BACKWARD_COMMON, LAYERNORM_BACKWARD_FILE],
    entries: &[
        "layer_norm_backward",
        "backward_split_statistics",
        "backward_split_sums",
        "backward_split_dx",
        "weight_grads",
    ],
    per_invocation: None,
    row_cache: None,
    backward: true,
};
/// `shaders/copy_vec4.wgsl`: a plain vec4 copy, the benchmarks' speed-of-light kernel.
pub const COPY_VEC4: ShaderFile = shader_file!("copy_vec4.wgsl");
/// `shaders/residual_add.wgsl`: the unfused residual add, for the benchmark's comparison.
pub const RESIDUAL_ADD: ShaderFile = shader_file!("residual_add.wgsl");
const NORM_COMMON: ShaderFile = shader_file!("norm_common.wgsl");
const FORMATS: ShaderFile = shader_file!("formats.wgsl");
const ELEM_VEC4: ShaderFile = shader_file!("elem_vec4.wgsl");
const ELEM_SCALAR: ShaderFile = shader_file!("elem_scalar.wgsl");
const ROWS_ALIGNED: ShaderFile = shader_file!("rows_aligned.wgsl");
const ROWS_MASKED: ShaderFile = shader_file!("rows_masked.wgsl");
const REDUCE_TREE: ShaderFile = shader_file!("reduce_workgroup_tree.wgsl");
const REDUCE_SUBGROUP: ShaderFile = shader_file!("reduce_subgroup.wgsl");
const REDUCE_SINGLE: ShaderFile = shader_file!("reduce_single_subgroup.wgsl");
const REDUCE_PER_INVOCATION: ShaderFile = shader_file!("reduce_per_invocation.wgsl");

/// Every standalone module (used as it is, not composed).
pub const STANDALONE: [ShaderFile; 1] = [COPY_VEC4];
/// Every kernel.
pub const KERNELS: [Kernel; 4] = [RMSNORM, LAYERNORM, RMSNORM_BACKWARD, LAYERNORM_BACKWARD];
/// Every element layout.
pub const ELEM_LAYOUTS: [ElemLayout; 3] =
    [ElemLayout::Vec4, ElemLayout::Scalar, ElemLayout::Vec4Masked];
/// Every reduction.
pub const REDUCTIONS: [ReductionKind; 4] = [
    ReductionKind::WorkgroupTree,
    ReductionKind::Subgroups,
    ReductionKind::SingleSubgroup,
    ReductionKind::PerInvocation,
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
    /// The tensors: storage formats, gain, bias, residual.
    pub io: TensorIo,
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

/// The module for `kernel` with the given shape, for `target`. A backward kernel's tensors
/// are `shape.io` (already [`TensorIo::backward`]'s).
pub fn compose(kernel: Kernel, shape: &ModuleShape, target: ShaderTarget) -> ComposedShader {
    let (elem, rows) = match shape.elem {
        ElemLayout::Vec4 => (ELEM_VEC4, ROWS_ALIGNED),
        ElemLayout::Scalar => (ELEM_SCALAR, ROWS_ALIGNED),
        ElemLayout::Vec4Masked => (ELEM_VEC4, ROWS_MASKED),
    };
    let reduce = match shape.reduction {
        ReductionKind::WorkgroupTree => REDUCE_TREE,
        ReductionKind::Subgroups => REDUCE_SUBGROUP,
        ReductionKind::SingleSubgroup => REDUCE_SINGLE,
        ReductionKind::PerInvocation => REDUCE_PER_INVOCATION,
    };
    let mut source = String::new();
    if shape.io.uses_f16() {
        source.push_str("enable f16;\n");
    }
    if shape.reduction.uses_subgroups() && target == ShaderTarget::Browser {
        source.push_str("enable subgroups;\n");
    }
    source.push_str(&format!("const WG: u32 = {}u;\n", shape.workgroup_size));
    if let Some(used) = kernel.row_cache {
        source.push_str(&row_cache_code(shape.cache_len.max(1), used));
    }
    source.push_str(&tensor_code(&shape.io, shape.elem, kernel.backward));
    if kernel.backward {
        source.push_str(&format!("const ROW_BLOCK: u32 = {BACKWARD_ROW_BLOCK}u;\n"));
        source.push_str(&backward_tensor_code(&shape.io, shape.elem));
    }
    let mut parts = vec![(1, "<prelude>")];
    let files = [elem, reduce, FORMATS, NORM_COMMON, rows].into_iter();
    let per_invocation = kernel
        .per_invocation
        .filter(|_| shape.reduction == ReductionKind::PerInvocation);
    for file in files
        .chain(kernel.files.iter().copied())
        .chain(per_invocation)
    {
        parts.push((source.lines().count() + 1, file.path));
        source.push_str(file.text);
        if !source.ends_with('\n') {
            source.push('\n');
        }
    }
    ComposedShader { source, parts }
}

/// `composed` for a runtime that binds only storage buffers, in the order it is given, and
/// runs the entry point named `main` with no pipeline constants (a framework's raw-kernel
/// launch, e.g. burn's `SourceKernel`): `entry` renamed `main`, the parameters a storage
/// buffer (the same layout: every field is 4 bytes), every storage binding `read_write`
/// (such a runtime binds ranges of one pooled buffer to several bindings, and wgpu refuses a
/// buffer both read-only and writable in one dispatch), each `override` of `constants` a
/// `const` of that value, and `@binding(order[i])` renumbered `i`, every other binding moved
/// past them. The lines stay where they were, so [`ComposedShader::locate`] holds. Loads of
/// a `read_write` buffer are not uniform in WGSL's analysis, so such a module is for native
/// wgpu (naga), not for a browser's compiler, which checks barriers' uniformity.
pub fn for_entry(
    composed: &ComposedShader,
    entry: &str,
    constants: &[(&str, bool)],
    order: &[u32],
) -> ComposedShader {
    let mut source = composed
        .source
        .replace("var<uniform> params", "var<storage, read_write> params")
        .replace("var<storage, read>", "var<storage, read_write>")
        .replace(&format!("fn {entry}("), "fn main(");
    for (name, value) in constants {
        for default in [false, true] {
            source = source.replace(
                &format!("override {name}: bool = {default};"),
                &format!("const {name}: bool = {value};"),
            );
        }
    }
    let mut out = String::with_capacity(source.len());
    let mut rest = source.as_str();
    while let Some(at) = rest.find("@binding(") {
        let (head, tail) = rest.split_at(at + "@binding(".len());
        out.push_str(head);
        let digits = tail.find(')').unwrap_or(0);
        match tail[..digits].parse::<u32>() {
            Ok(binding) => {
                let n = order.len() as u32;
                let renumbered = order
                    .iter()
                    .position(|&b| b == binding)
                    .map_or(n + binding, |i| i as u32);
                out.push_str(&renumbered.to_string());
                rest = &tail[digits..];
            }
            Err(_) => rest = tail,
        }
    }
    out.push_str(rest);
    ComposedShader {
        source: out,
        parts: composed.parts.clone(),
    }
}

/// The tensors' bindings and accessors for `io` (see `shaders/norm_common.wgsl`): what
/// exists is declared with its storage type; what does not is a constant `false` and an
/// accessor that is never called, so that it is never bound.
fn tensor_code(io: &TensorIo, elem: ElemLayout, backward: bool) -> String {
    let act = io.activations;
    let weights = io.weights;
    let flag = |name: &str, on: bool| format!("const {name}: bool = {on};\n");
    let residual = io.residual != ResidualIo::None;
    let stores_sum = matches!(
        io.residual,
        ResidualIo::StoreSum | ResidualIo::StoreSumInPlace
    );
    let mut code = String::new();
    code.push_str(&flag("HAS_GAIN", io.gain));
    code.push_str(&flag("HAS_BIAS", io.bias));
    code.push_str(&flag("HAS_RESIDUAL", residual));
    code.push_str(&flag("STORES_SUM", stores_sum));
    code.push_str(&flag(
        "SUM_OVER_R",
        io.residual == ResidualIo::StoreSumInPlace,
    ));
    code.push_str(&tensor("x", BINDING_X, act, elem, Access::Load));
    code.push_str(&tensor("y", BINDING_Y, act, elem, Access::Store));
    for (name, binding, present) in [
        ("gain", BINDING_GAIN, io.gain),
        // The backward needs no bias: dbias is the sum of dy.
        ("bias", BINDING_BIAS, io.bias && !backward),
    ] {
        code.push_str(&if present {
            tensor(name, binding, weights, elem, Access::Load)
        } else {
            format!("fn {name}_load(i: u32) -> Elem {{\n    return Elem(0.0);\n}}\n")
        });
    }
    let absent_r = "fn r_load(i: u32) -> Elem {\n    return Elem(0.0);\n}\n";
    let absent_sum = if elem == ElemLayout::Vec4Masked {
        "fn sum_store(i: u32, v: Elem) {}\nfn sum_store_lanes(i: u32, v: Elem, keep: vec4<bool>) {}\n"
    } else {
        "fn sum_store(i: u32, v: Elem) {}\n"
    };
    code.push_str(&match io.residual {
        ResidualIo::None => format!("{absent_r}{absent_sum}"),
        ResidualIo::Add => tensor("r", BINDING_RESIDUAL, act, elem, Access::Load) + absent_sum,
        ResidualIo::StoreSum => {
            tensor("r", BINDING_RESIDUAL, act, elem, Access::Load)
                + &tensor("sum", BINDING_SUM, act, elem, Access::StoreExact)
        }
        // The sum is r's binding.
        ResidualIo::StoreSumInPlace => {
            let mut code = tensor("r", BINDING_RESIDUAL, act, elem, Access::LoadStoreExact)
                + "fn sum_store(i: u32, v: Elem) {\n    r_store(i, v);\n}\n";
            if elem == ElemLayout::Vec4Masked {
                code.push_str(
                    "fn sum_store_lanes(i: u32, v: Elem, keep: vec4<bool>) {\n    \
                     r_store_lanes(i, v, keep);\n}\n",
                );
            }
            code
        }
    });
    code.push_str(&act_round_code(act, elem));
    code.push_str(&stats_code(io.stats));
    code
}

/// The saved statistics' binding and `stats_store` / `stats_load` (word j of a row's
/// statistics; `STATS_PER_ROW` is the kernel file's).
fn stats_code(stats: StatsIo) -> String {
    let flag = |name: &str, on: bool| format!("const {name}: bool = {on};\n");
    let at = "params.stats_base + row * STATS_PER_ROW + j";
    let mut code = flag("STORES_STATS", stats == StatsIo::Store);
    code.push_str(&flag("LOADS_STATS", stats == StatsIo::Load));
    let mode = if stats == StatsIo::Store {
        "read_write"
    } else {
        "read"
    };
    if stats != StatsIo::None {
        code.push_str(&format!(
            "@group(0) @binding({BINDING_STATS}) var<storage, {mode}> stats: array<f32>;\n"
        ));
    }
    code.push_str(&match stats {
        StatsIo::Store => {
            format!("fn stats_store(row: u32, j: u32, v: f32) {{\n    stats[{at}] = v;\n}}\n")
        }
        _ => "fn stats_store(row: u32, j: u32, v: f32) {}\n".to_string(),
    });
    code.push_str(&match stats {
        StatsIo::Load => {
            format!("fn stats_load(row: u32, j: u32) -> f32 {{\n    return stats[{at}];\n}}\n")
        }
        _ => "fn stats_load(row: u32, j: u32) -> f32 {\n    return 0.0;\n}\n".to_string(),
    });
    code
}

/// A backward module's own tensors: dy, the gradient of the stored sum h, the partial sums
/// of dgain and dbias, and dgain and dbias themselves (f32).
fn backward_tensor_code(io: &TensorIo, elem: ElemLayout) -> String {
    let act = io.activations;
    let mut code = format!("const HAS_GRAD_SUM: bool = {};\n", io.grad_sum);
    code.push_str(&tensor("dy", BINDING_GRAD_OUTPUT, act, elem, Access::Load));
    code.push_str(&if io.grad_sum {
        tensor("dsum", BINDING_GRAD_SUM, act, elem, Access::Load)
    } else {
        "fn dsum_load(i: u32) -> Elem {\n    return Elem(0.0);\n}\n".to_string()
    });
    if io.gain || io.bias {
        code.push_str(&format!(
            "@group(0) @binding({BINDING_WEIGHT_PARTIALS}) var<storage, read_write> \
             weight_partials: array<Elem>;\n\
             fn weight_partial_add(first: bool, at: u32, v: Elem) {{\n    \
             if (first) {{\n        weight_partials[at] = v;\n    }} else {{\n        \
             weight_partials[at] = weight_partials[at] + v;\n    }}\n}}\n\
             fn weight_partial_load(at: u32) -> Elem {{\n    return weight_partials[at];\n}}\n"
        ));
    } else {
        code.push_str(
            "fn weight_partial_add(first: bool, at: u32, v: Elem) {}\n\
             fn weight_partial_load(at: u32) -> Elem {\n    return Elem(0.0);\n}\n",
        );
    }
    for (name, binding, present) in [
        ("grad_gain", BINDING_GRAD_GAIN, io.gain),
        ("grad_bias", BINDING_GRAD_BIAS, io.bias),
    ] {
        code.push_str(&if present {
            tensor(name, binding, Storage::F32, elem, Access::Store)
        } else {
            format!("fn {name}_store(i: u32, v: Elem) {{}}\n")
        });
    }
    code
}

/// How a module uses one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Load,
    /// Stores values that need rounding to the format (y).
    Store,
    /// Stores values that are of the format already (the sum h, rounded when it was made),
    /// converted without rounding.
    StoreExact,
    /// Loads, and stores values of the format (r, when h is stored over it).
    LoadStoreExact,
}

/// `f` applied to each f32 of the Elem `v`.
fn elem_map(elem: ElemLayout, f: &str, v: &str) -> String {
    match elem {
        ElemLayout::Vec4 | ElemLayout::Vec4Masked => {
            format!("Elem({f}({v}.x), {f}({v}.y), {f}({v}.z), {f}({v}.w))")
        }
        ElemLayout::Scalar => format!("{f}({v})"),
    }
}

/// The binding `name` and its `name_load(i)` / `name_store(i, v)` (Elem i of the binding).
/// Packed 16-bit tensors share words between neighbouring elements, so neighbouring rows and
/// regions outside the tensor may share a word where an Elem is one element (scalar rows) or
/// a row's first or last Elem (rows at any element): those are written with atomic and/or on
/// the element's own half, never a read-modify-write. Rows at any element also get
/// `name_store_lanes(i, v, keep)`, which writes only the kept lanes of Elem i.
fn tensor(name: &str, binding: u32, storage: Storage, elem: ElemLayout, access: Access) -> String {
    let writes = access != Access::Load;
    let exact = matches!(access, Access::StoreExact | Access::LoadStoreExact);
    let scalar = elem == ElemLayout::Scalar;
    let packed = matches!(storage, Storage::PackedF16 | Storage::PackedBf16);
    // Writable packed rows at any element: words, each atomic (Elem i is words 2i and 2i+1).
    let atomic_words = packed && writes && elem == ElemLayout::Vec4Masked;
    let array = match (storage, elem) {
        (Storage::F32, _) => "Elem",
        (Storage::F16, ElemLayout::Vec4 | ElemLayout::Vec4Masked) => "vec4<f16>",
        (Storage::F16, ElemLayout::Scalar) => "f16",
        _ if atomic_words => "atomic<u32>",
        (_, ElemLayout::Vec4 | ElemLayout::Vec4Masked) => "vec2<u32>",
        (_, ElemLayout::Scalar) if writes => "atomic<u32>",
        (_, ElemLayout::Scalar) => "u32",
    };
    let mode = if writes { "read_write" } else { "read" };
    let mut code =
        format!("@group(0) @binding({binding}) var<storage, {mode}> {name}: array<{array}>;\n");
    let (to_f32, from_f32) = match (storage, exact) {
        (Storage::PackedBf16, false) => ("bf16_to_f32", "f32_to_bf16"),
        (Storage::PackedBf16, true) => ("bf16_to_f32", "bf16_bits_of"),
        (_, false) => ("f16_to_f32", "f32_to_f16"),
        (_, true) => ("f16_to_f32", "f16_bits_of"),
    };
    if matches!(access, Access::Load | Access::LoadStoreExact) {
        let body = match storage {
            Storage::F32 => format!("return {name}[i];"),
            Storage::F16 if scalar => format!("return f32({name}[i]);"),
            Storage::F16 => format!("return vec4<f32>({name}[i]);"),
            _ if scalar => {
                let word = if writes {
                    format!("atomicLoad(&{name}[i >> 1u])")
                } else {
                    format!("{name}[i >> 1u]")
                };
                format!("return {to_f32}(({word} >> ((i & 1u) * 16u)) & 0xffffu);")
            }
            _ => {
                let load = if atomic_words {
                    format!(
                        "let w = vec2<u32>(atomicLoad(&{name}[2u * i]), \
                         atomicLoad(&{name}[2u * i + 1u]));"
                    )
                } else {
                    format!("let w = {name}[i];")
                };
                format!(
                    "{load}\n    return Elem({to_f32}(w.x & 0xffffu), {to_f32}(w.x >> 16u), \
                     {to_f32}(w.y & 0xffffu), {to_f32}(w.y >> 16u));"
                )
            }
        };
        code.push_str(&format!(
            "fn {name}_load(i: u32) -> Elem {{\n    {body}\n}}\n"
        ));
    }
    if !writes {
        return code;
    }
    // The packed words of Elem v (rows of four elements).
    let words = format!(
        "vec2<u32>({from_f32}(v.x) | ({from_f32}(v.y) << 16u), \
         {from_f32}(v.z) | ({from_f32}(v.w) << 16u))"
    );
    // An f32 as the f16 it is stored as.
    let as_f16 = |v: &str| {
        if exact {
            // An f16 already: the conversion is exact.
            format!("f16({v})")
        } else {
            // Rounded to the nearest f16 first, so that the conversion is exact.
            format!("f16(f16_round({v}))")
        }
    };
    let body = match storage {
        Storage::F32 => format!("{name}[i] = v;"),
        Storage::F16 if scalar => format!("{name}[i] = {};", as_f16("v")),
        Storage::F16 => format!(
            "{name}[i] = vec4<f16>({}, {}, {}, {});",
            as_f16("v.x"),
            as_f16("v.y"),
            as_f16("v.z"),
            as_f16("v.w")
        ),
        _ if scalar => format!(
            "let shift = (i & 1u) * 16u;\n    \
             atomicAnd(&{name}[i >> 1u], ~(0xffffu << shift));\n    \
             atomicOr(&{name}[i >> 1u], {from_f32}(v) << shift);"
        ),
        _ if atomic_words => format!(
            "let w = {words};\n    \
             atomicStore(&{name}[2u * i], w.x);\n    \
             atomicStore(&{name}[2u * i + 1u], w.y);"
        ),
        _ => format!("{name}[i] = {words};"),
    };
    code.push_str(&format!(
        "fn {name}_store(i: u32, v: Elem) {{\n    {body}\n}}\n"
    ));
    if elem != ElemLayout::Vec4Masked {
        return code;
    }
    // The kept lanes alone: one at a time where each lane is a value of its own, else the
    // kept halves of each word, cleared then set atomically (the other half may belong to
    // a row another invocation writes).
    code.push_str(&format!(
        "fn {name}_store_lanes(i: u32, v: Elem, keep: vec4<bool>) {{\n"
    ));
    match storage {
        Storage::F32 | Storage::F16 => {
            for lane in ["x", "y", "z", "w"] {
                let value = if storage == Storage::F32 {
                    format!("v.{lane}")
                } else {
                    as_f16(&format!("v.{lane}"))
                };
                code.push_str(&format!(
                    "    if (keep.{lane}) {{\n        {name}[i].{lane} = {value};\n    }}\n"
                ));
            }
        }
        _ => {
            code.push_str(&format!(
                "    let halves = select(vec4<u32>(0u), \
                 vec4<u32>(0xffffu, 0xffff0000u, 0xffffu, 0xffff0000u), keep);\n    \
                 let mask = vec2<u32>(halves.x | halves.y, halves.z | halves.w);\n    \
                 let w = {words} & mask;\n"
            ));
            for (word, at) in [("x", "2u * i"), ("y", "2u * i + 1u")] {
                code.push_str(&format!(
                    "    if (mask.{word} != 0u) {{\n        \
                     atomicAnd(&{name}[{at}], ~mask.{word});\n        \
                     atomicOr(&{name}[{at}], w.{word});\n    }}\n"
                ));
            }
        }
    }
    code.push_str("}\n");
    code
}

/// The unfused residual add (`shaders/residual_add.wgsl`) for activations stored as
/// `storage`, vec4 loads, `workgroup_size` invocations: x at binding 1, r at 6, h at 7.
pub fn compose_residual_add(storage: Storage, workgroup_size: u32) -> ComposedShader {
    let mut source = String::new();
    if storage == Storage::F16 {
        source.push_str("enable f16;\n");
    }
    source.push_str(&format!("const WG: u32 = {workgroup_size}u;\n"));
    let elem = ElemLayout::Vec4;
    source.push_str(&tensor("x", BINDING_X, storage, elem, Access::Load));
    source.push_str(&tensor("r", BINDING_RESIDUAL, storage, elem, Access::Load));
    source.push_str(&tensor(
        "sum",
        BINDING_SUM,
        storage,
        elem,
        Access::StoreExact,
    ));
    source.push_str(&act_round_code(storage, elem));
    let mut parts = vec![(1, "<prelude>")];
    for file in [ELEM_VEC4, FORMATS, RESIDUAL_ADD] {
        parts.push((source.lines().count() + 1, file.path));
        source.push_str(file.text);
        if !source.ends_with('\n') {
            source.push('\n');
        }
    }
    ComposedShader { source, parts }
}

/// `act_round`: an Elem rounded to the activations' format.
fn act_round_code(storage: Storage, elem: ElemLayout) -> String {
    let rounded = match storage.round_function() {
        Some(f) => elem_map(elem, f, "v"),
        None => "v".to_string(),
    };
    format!("fn act_round(v: Elem) -> Elem {{\n    return {rounded};\n}}\n")
}

/// The read-once kernel's cache of `len` Elems, unrolled: a struct with one field per Elem
/// and the three functions over it that `rms_norm_cached` calls (see `shaders/rmsnorm.wgsl`).
fn row_cache_code(len: u32, used: RowCacheUse) -> String {
    let fields: Vec<String> = (0..len).map(|j| format!("c{j}: Elem")).collect();
    let index = |j: u32| format!("lane + {j}u * WG");
    let loads: Vec<String> = (0..len)
        .map(|j| format!("load_in_row(row_offset, {})", index(j)))
        .collect();
    let mut code = format!(
        "struct RowCache {{ {} }}\n\
         fn cache_load(row_offset: u32, lane: u32) -> RowCache {{\n    return RowCache({});\n}}\n",
        fields.join(", "),
        loads.join(", ")
    );
    // One statement per cached Elem j, from `each(j, index)`.
    let mut unrolled = |head: &str, each: &dyn Fn(u32, &str) -> String, tail: &str| {
        code.push_str(head);
        for j in 0..len {
            code.push_str(&each(j, &index(j)));
        }
        code.push_str(tail);
    };
    match used {
        RowCacheUse::Scale => {
            unrolled(
                "fn cache_sum_squares(c: RowCache, lane: u32, pre: f32) -> Elem {\n    \
                 var s = Elem(0.0);\n",
                &|j, i| format!("    s = s + square_first_k(c.c{j} * pre, {i});\n"),
                "    return s;\n}\n",
            );
            unrolled(
                "fn cache_store(c: RowCache, row_offset: u32, lane: u32, f: vec2<f32>) {\n",
                &|j, i| {
                    format!("    store_in_row(row_offset, {i}, c.c{j}, (c.c{j} * f.x) * f.y);\n")
                },
                "}\n",
            );
        }
        RowCacheUse::Normalize => {
            unrolled(
                "fn cache_sum_centered(c: RowCache, row_offset: u32, lane: u32, shift: f32, \
                 mean: f32, square: bool) -> Elem {\n    var s = Elem(0.0);\n",
                &|j, i| {
                    format!(
                        "    s = s + centered_in_row(row_offset, {i}, c.c{j}, shift, mean, square);\n"
                    )
                },
                "    return s;\n}\n",
            );
            unrolled(
                "fn cache_store_normalized(c: RowCache, row_offset: u32, lane: u32, m: Moments) {\n",
                &|j, i| format!("    store_normalized_in_row(row_offset, {i}, c.c{j}, m);\n"),
                "}\n",
            );
        }
    }
    code
}
