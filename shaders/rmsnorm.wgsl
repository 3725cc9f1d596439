// RMSNorm and pRMSNorm forward, one workgroup per row (a loop over rows when there are more
// rows than workgroups).
//
//   y = x / rms_k(x) * g + b,   rms_k(x) = sqrt(sum_{i<k} x_i^2 / k)   (k = n: RMSNorm)
//
// The host prepends an element layout (elem_vec4.wgsl or elem_scalar.wgsl: Elem, LANES) and a
// reduction (reduce_*.wgsl: WG, reduce_setup, reduce_sum, reduce_max). Invocation t handles
// elements t, t + WG, t + 2 WG, ... of a row, so neighbouring invocations touch neighbouring
// memory. Sums are f32; the scale is applied in f32 and rounded once per multiply.

struct Params {
    // Rows in this dispatch.
    rows: u32,
    // Row length in Elems (n / LANES).
    row_len: u32,
    // Elements (scalars, not Elems) in the RMS: k of pRMSNorm, n for RMSNorm.
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
}

// Fixed per pipeline.
override HAS_GAIN: bool = false;
// y = x / rms * (1 + g) instead of x / rms * g.
override GAIN_PLUS_ONE: bool = false;
override HAS_BIAS: bool = false;
// true: y = x / sqrt(mean + eps). false: y = x / (sqrt(mean) + eps).
override EPS_INSIDE_ROOT: bool = true;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<Elem>;
// Without gain or bias the host binds x here again: the bindings are never read then.
@group(0) @binding(2) var<storage, read> gain: array<Elem>;
@group(0) @binding(3) var<storage, read> bias: array<Elem>;
@group(0) @binding(4) var<storage, read_write> y: array<Elem>;

// Sums of squares below 2^-100 (precision lost to f32 underflow) or not finite (f32 x^2
// overflows above ~1.8e19) take the rescaled path. Tested on the bits: WGSL lets a compiler
// assume that floats are finite, so `s != s` or `s > MAX` may be folded away.
fn sum_needs_rescaling(s: f32) -> bool {
    let exponent = (bitcast<u32>(s) >> 23u) & 0xffu;
    return exponent == 0xffu || exponent < 27u;
}

// The factor applied to every element of a row whose sum of squares over the first k
// elements is `sumsq` (normal range).
fn scale_from_sum(sumsq: f32) -> f32 {
    let mean = sumsq / params.k_f32;
    if (EPS_INSIDE_ROOT) {
        return inverseSqrt(mean + params.eps);
    }
    return 1.0 / (sqrt(mean) + params.eps);
}

// Element i (an Elem index) of the row starting at `row_start`, with lanes at or past k zeroed.
fn load_first_k(row_start: u32, i: u32) -> Elem {
    return elem_keep_below(x[row_start + i], i * LANES, params.k);
}

// The rescaled path for rows of extreme magnitude. With m = max |x_i| (i < k) = f 2^e,
// f in [0.5, 1), the elements are scaled by 2^-e (exact), squared and summed, and the
// result is returned as y = (x * pre) * scale so that no intermediate overflows:
// pre = 2^-e and scale = 1 / rms(x 2^-e) folded with eps, or pre = 1 where eps dominates.
// Invocations agree on the result; every branch below is uniform.
fn rescaled_factors(row_start: u32, lane: u32) -> vec2<f32> {
    let k_len = (params.k + LANES - 1u) / LANES;
    var local_max = 0.0;
    for (var i = lane; i < k_len; i = i + WG) {
        local_max = max(local_max, elem_abs_max(load_first_k(row_start, i)));
    }
    let m = reduce_max(local_max);
    if (m == 0.0) {
        // The first k elements are all zero: 1 / eps by either convention, and 0 when eps
        // is 0 (the output is then the bias, or zero), never inf or NaN.
        if (params.eps == 0.0) {
            return vec2<f32>(1.0, 0.0);
        }
        if (EPS_INSIDE_ROOT) {
            return vec2<f32>(1.0, inverseSqrt(params.eps));
        }
        return vec2<f32>(1.0, 1.0 / params.eps);
    }
    // Kept within [-126, 126] so that 2^-e is a normal f32; the scaled values are below 4.
    let e = clamp(frexp(m).exp, -126, 126);
    var local_sum = Elem(0.0);
    for (var i = lane; i < k_len; i = i + WG) {
        let v = elem_ldexp(load_first_k(row_start, i), -e);
        local_sum = local_sum + v * v;
    }
    let mean = reduce_sum(elem_sum(local_sum)) / params.k_f32;
    let pre = ldexp(1.0, -e);
    let eps = params.eps;
    if (EPS_INSIDE_ROOT) {
        if (e >= 0 || eps == 0.0) {
            return vec2<f32>(pre, inverseSqrt(mean + ldexp(eps, -2 * e)));
        }
        // Tiny rows with eps > 0: mean * 2^(2e) underflows only where eps dominates it.
        return vec2<f32>(1.0, inverseSqrt(ldexp(mean, 2 * e) + eps));
    }
    if (e >= 0 || eps == 0.0) {
        return vec2<f32>(pre, 1.0 / (sqrt(mean) + ldexp(eps, -e)));
    }
    return vec2<f32>(1.0, 1.0 / (ldexp(sqrt(mean), e) + eps));
}

@compute @workgroup_size(WG)
fn rms_norm(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    reduce_setup(lane);
    // Elems wholly inside the first k elements, and whether one more straddles k.
    let k_whole = params.k / LANES;
    let k_straddles = k_whole * LANES < params.k;
    for (var row = group.x; row < params.rows; row = row + groups.x) {
        let row_start = params.x_base + row * params.row_len;

        var acc = Elem(0.0);
        for (var i = lane; i < k_whole; i = i + WG) {
            let v = x[row_start + i];
            acc = acc + v * v;
        }
        if (k_straddles && lane == k_whole % WG) {
            let v = load_first_k(row_start, k_whole);
            acc = acc + v * v;
        }
        let sumsq = reduce_sum(elem_sum(acc));

        var pre = 1.0;
        var scale: f32;
        if (sum_needs_rescaling(sumsq)) {
            let factors = rescaled_factors(row_start, lane);
            pre = factors.x;
            scale = factors.y;
        } else {
            scale = scale_from_sum(sumsq);
        }

        let out_start = params.y_base + row * params.row_len;
        for (var i = lane; i < params.row_len; i = i + WG) {
            var v = (x[row_start + i] * pre) * scale;
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
    }
}
