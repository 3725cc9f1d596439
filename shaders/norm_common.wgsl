// What both normalization kernels share: the parameter block, the fixed options, the
// bindings and the final store. Composed after the element layout and the reduction, before
// rmsnorm.wgsl or layernorm.wgsl, so that both run on one host path.

struct Params {
    // Rows in this dispatch.
    rows: u32,
    // Row length in Elems (n / LANES).
    row_len: u32,
    // Elements (scalars, not Elems) in the RMS: k of pRMSNorm, n for RMSNorm and LayerNorm.
    k: u32,
    // k as f32, rounded on the host.
    k_f32: f32,
    eps: f32,
    // Offsets, in Elems, of row 0 inside each bound range (the binding starts at an offset
    // aligned down to minStorageBufferOffsetAlignment).
    x_base: u32,
    y_base: u32,
    gain_base: u32,
    bias_base: u32,
    // Split rows (RMSNorm) only: workgroups per row, and the Elems each covers of the first k
    // (k_chunk_len) and of the whole row (chunk_len).
    chunks: u32,
    k_chunk_len: u32,
    chunk_len: u32,
}

// Fixed per pipeline.
override HAS_GAIN: bool = false;
// y = x / rms * (1 + g) instead of x / rms * g.
override GAIN_PLUS_ONE: bool = false;
override HAS_BIAS: bool = false;
// true: y = x / sqrt(mean + eps). false: y = x / (sqrt(mean) + eps). (LayerNorm: always.)
override EPS_INSIDE_ROOT: bool = true;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<Elem>;
// Without gain or bias the host binds x here again: the bindings are never read then.
@group(0) @binding(2) var<storage, read> gain: array<Elem>;
@group(0) @binding(3) var<storage, read> bias: array<Elem>;
@group(0) @binding(4) var<storage, read_write> y: array<Elem>;
// Element i of a row's output from its normalized value: gain, bias, store.
fn store(out_start: u32, i: u32, normalized: Elem) {
    var v = normalized;
    if (HAS_GAIN) {
        let g = gain[params.gain_base + i];
        if (GAIN_PLUS_ONE) {
            v = v * (g + 1.0);
        } else {
            v = v * g;
        }
    }
    if (HAS_BIAS) {
        v = v + bias[params.bias_base + i];
    }
    y[out_start + i] = v;
}
