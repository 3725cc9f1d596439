//! The one error type of the crate.

/// Everything that can go wrong, each message saying what to change.
///
/// Bad input is caught here before it reaches wgpu: no call in this crate panics on user
/// input or lets wgpu raise a validation error for it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The hidden size (row length) is zero.
    #[error("hidden size is 0: set it to the length of a row (at least 1)")]
    ZeroHiddenSize,

    /// The hidden size is larger than one storage binding can hold on this device.
    #[error(
        "hidden size {hidden} needs a binding of {row_bytes} bytes for one row (with alignment \
         slack), more than this device's max_storage_buffer_binding_size ({limit} bytes): use \
         a smaller hidden size or a device with a larger limit"
    )]
    RowExceedsBindingLimit {
        /// The hidden size asked for.
        hidden: u32,
        /// Bytes in one row, with the alignment slack of a binding.
        row_bytes: u64,
        /// The device's `max_storage_buffer_binding_size`.
        limit: u64,
    },

    /// Rows too long for any workgroup of the device to normalize within the loop budget
    /// that every adapter runs correctly, where they cannot be split.
    #[error("rows of {hidden} elements cannot run on this device: {reason}")]
    RowTooLong {
        /// The hidden size asked for.
        hidden: u32,
        /// Why, and what to do.
        reason: String,
    },

    /// The input's length is not `rows * hidden`.
    #[error(
        "input has {len} elements, not a multiple of the hidden size {hidden}: pass \
         rows * {hidden} elements"
    )]
    InputNotMultipleOfHidden {
        /// Elements in the input.
        len: usize,
        /// The configured hidden size.
        hidden: u32,
    },

    /// A tensor that must have one element per element of x has another length.
    #[error("the {which} has {len} elements but x has {expected}: pass one per element of x")]
    LengthMismatch {
        /// Which tensor.
        which: &'static str,
        /// Its elements.
        len: usize,
        /// x's elements.
        expected: usize,
    },

    /// More rows than the crate can address.
    #[error("{rows} rows of {hidden} is too large a tensor: split it into batches of fewer rows")]
    TooManyRows {
        /// Rows asked for.
        rows: u64,
        /// The configured hidden size.
        hidden: u32,
    },

    /// A gain or bias vector whose length is not the hidden size.
    #[error("{which} has {len} elements but the hidden size is {hidden}: pass exactly {hidden}")]
    WeightLength {
        /// `"gain"` or `"bias"`.
        which: &'static str,
        /// Elements given.
        len: usize,
        /// The configured hidden size.
        hidden: u32,
    },

    /// The config asks for a gain or bias that the call does not supply.
    #[error("the config has a {which} but none was passed: pass a {which} or {fix}")]
    MissingWeight {
        /// `"gain"` or `"bias"`.
        which: &'static str,
        /// The config change that removes it.
        fix: &'static str,
    },

    /// The call supplies a gain or bias that the config does not use.
    #[error("a {which} was passed but the config has none: {fix}, or pass none")]
    UnexpectedWeight {
        /// `"gain"` or `"bias"`.
        which: &'static str,
        /// The config change that enables it.
        fix: &'static str,
    },

    /// pRMSNorm fraction outside (0, 1] or NaN.
    #[error(
        "pRMSNorm fraction p = {p} is outside (0, 1]: pass a p with 0 < p <= 1 (1 is RMSNorm)"
    )]
    InvalidFraction {
        /// The fraction given.
        p: f64,
    },

    /// pRMSNorm element count outside 1..=hidden.
    #[error("pRMSNorm count k = {k} is outside 1..={hidden}: pass 1 <= k <= hidden size")]
    InvalidCount {
        /// The count given.
        k: u32,
        /// The configured hidden size.
        hidden: u32,
    },

    /// eps negative, NaN or infinite.
    #[error("eps = {eps} is not a finite number >= 0: pass e.g. 1e-6 (0 is allowed)")]
    InvalidEps {
        /// The eps given.
        eps: f32,
    },

    /// A buffer that is bound as storage lacks `BufferUsages::STORAGE`.
    #[error("the {which} buffer lacks BufferUsages::STORAGE: create it with STORAGE usage")]
    MissingStorageUsage {
        /// Which buffer.
        which: &'static str,
    },

    /// A byte offset that is not a whole number of elements (4 bytes for f32, 2 for f16
    /// and bf16).
    #[error(
        "the {which} offset {offset} is not a multiple of {element_bytes} bytes: align it to \
         an element"
    )]
    MisalignedOffset {
        /// Which buffer.
        which: &'static str,
        /// The offset given, in bytes.
        offset: u64,
        /// Bytes per element of that buffer.
        element_bytes: u64,
    },

    /// A buffer region that does not fit in its buffer.
    #[error(
        "the {which} buffer has {size} bytes, but {needed} bytes from offset {offset} are \
         needed: make it at least {} bytes{}",
        offset.saturating_add(*needed),
        if *per_row { " or pass fewer rows" } else { "" }
    )]
    BufferTooSmall {
        /// Which buffer.
        which: &'static str,
        /// Whether its size depends on the rows (x, y, the residual, the sum), not only on
        /// the hidden size (gain, bias).
        per_row: bool,
        /// The offset given, in bytes.
        offset: u64,
        /// Bytes the call reads or writes from the offset.
        needed: u64,
        /// The buffer's size.
        size: u64,
    },

    /// A buffer the call writes (the output, the stored sum, or the residual written in
    /// place) is also bound for another tensor.
    #[error(
        "the {written} buffer is also the {other} buffer: WebGPU forbids a dispatch writing \
         a buffer it binds for anything else, so pass a separate {written} buffer"
    )]
    AliasedOutput {
        /// The buffer written.
        written: &'static str,
        /// The other tensor it aliases.
        other: &'static str,
    },

    /// More storage buffers than the device allows per shader stage.
    #[error(
        "the call binds {needed} storage buffers ({tensors}) and this device allows {limit} \
         per shader stage: {fix}"
    )]
    TooManyStorageBuffers {
        /// The tensors a call of the config binds.
        tensors: &'static str,
        /// What to change.
        fix: &'static str,
        /// Storage buffers the config needs.
        needed: u32,
        /// The device's `max_storage_buffers_per_shader_stage`.
        limit: u32,
    },

    /// A tensor of another element type than the config's.
    #[error("the {which} is {given} but the config says {expected}: {fix}")]
    DTypeMismatch {
        /// Which tensor.
        which: &'static str,
        /// The config's element type for it.
        expected: crate::dtype::DType,
        /// The type given.
        given: crate::dtype::DType,
        /// What to change.
        fix: &'static str,
    },

    /// A residual or stored-sum buffer that the config does not call for, or that is missing.
    #[error("{which}: {fix}")]
    ResidualMismatch {
        /// What is wrong.
        which: &'static str,
        /// What to change.
        fix: &'static str,
    },

    /// A statistics buffer that the config does not call for, or that is missing.
    #[error("{which}: {fix}")]
    StatsMismatch {
        /// What is wrong.
        which: &'static str,
        /// What to change.
        fix: &'static str,
    },

    /// A backward call's buffers do not match what its config's forward had: a gradient of
    /// the gain or bias without the weight, the residual or the gradient of the stored sum
    /// where the forward had none, or missing.
    #[error("{which}: {fix}")]
    BackwardMismatch {
        /// What is wrong.
        which: &'static str,
        /// What to change.
        fix: &'static str,
    },

    /// A workgroup size the device or the kernel cannot use.
    #[error("workgroup size {size} is not usable: {reason}")]
    InvalidWorkgroupSize {
        /// The size asked for.
        size: u32,
        /// What is wrong and what would do.
        reason: String,
    },

    /// A subgroup reduction was asked for on a device without `Features::SUBGROUP`.
    #[error(
        "the {reduction} reduction needs subgroups, which this device lacks: use \
         Reduction::Auto or Reduction::WorkgroupTree, or request Features::SUBGROUP"
    )]
    SubgroupsUnsupported {
        /// The reduction asked for.
        reduction: &'static str,
    },

    /// eps is a subnormal f32, which GPUs may flush to zero (WGSL allows it).
    #[error(
        "eps = {eps:e} is subnormal, and GPUs may flush it to 0: pass 0, or at least \
         1.1754944e-38 (f32::MIN_POSITIVE)"
    )]
    SubnormalEps {
        /// The eps given.
        eps: f32,
    },

    /// A prepared dispatch was recorded with a kernel other than the one that prepared it.
    #[error(
        "this PreparedDispatch was prepared by another kernel: record it with the kernel \
         whose prepare made it"
    )]
    ForeignPreparedDispatch,

    /// The device passed to a call is not the one the kernel was made on.
    #[error(
        "the device passed to this call is not the one the kernel was made on: pass the \
         kernel's device, or make a kernel on this one"
    )]
    WrongDevice,

    /// wgpu refused a buffer of the call, typically one made on another device.
    #[error("wgpu refused a buffer of this call ({0}): pass buffers made on the kernel's device")]
    BufferRefused(String),

    /// A forced option (or the kernel itself) that this device cannot run correctly.
    #[error("{option} cannot be honoured on this device: {reason}")]
    UnsupportedOption {
        /// The option, e.g. `"split_rows"` or `"Reduction::SingleSubgroup"`.
        option: &'static str,
        /// Why, and what to pass instead.
        reason: String,
    },

    /// No adapter matched, or none exists.
    #[error("no GPU adapter found: {0}")]
    NoAdapter(String),

    /// The adapter refused to create a device.
    #[error("the adapter could not create a device: {0}")]
    RequestDevice(String),

    /// wgpu reported an error for work this crate recorded (a bug or an exhausted device).
    #[error("the GPU reported an error: {0}")]
    Gpu(String),

    /// The device was lost (driver reset, browser tab in the background, destroyed).
    #[error("the GPU device was lost ({0}): create a new context")]
    DeviceLost(String),

    /// Reading the result back failed (device lost, mapping failed).
    #[error("reading the result back from the GPU failed: {0}")]
    Readback(String),
}

/// Short for `Result<T, wgpu_rmsnorm::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
