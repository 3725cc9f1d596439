// RMSNorm's scale of a row, shared by the forward (rmsnorm.wgsl) and the backward
// (rmsnorm_backward.wgsl): the sum of squares over the first k elements, kept in range
// whatever the row's magnitude, and the two factors f with y = (x * f.x) * f.y * g + b.
// 1 / rms = f.x * f.y; f.y is 1 except for rows whose 1 / rms is not a normal f32.

// Saved statistics (`STORES_STATS`, `LOADS_STATS`): f.x and f.y per row, f32.
const STATS_PER_ROW: u32 = 2u;

// Saves a row's factors where the call saves statistics (one invocation calls it).
fn stats_store_factors(row: u32, f: vec2<f32>) {
    if (STORES_STATS) {
        stats_store(row, 0u, f.x);
        stats_store(row, 1u, f.y);
    }
}

// Sums of squares below 2^-64 or not finite (f32 x^2 overflows above ~1.8e19) take the
// rescaled path: squares of |x| below 2^-63 are subnormal, which GPUs may flush to zero, so
// a sum under 2^-64 may have lost terms. Tested on the bits: WGSL lets a compiler assume
// that floats are finite, so `s != s` or `s > MAX` may be folded away.
fn sum_needs_rescaling(s: f32) -> bool {
    let exponent = (bitcast<u32>(s) >> 23u) & 0xffu;
    return exponent == 0xffu || exponent < 63u;
}

// Whether a rescaled sum of squares is zero or subnormal: a first k of zeros, or of values
// so small (below 2^-143, subnormal) that even scaled by 2^80 their squares are subnormal.
// Taken as an all-zero first k (phase 1 of row_scale), never as a scale of inf.
fn sum_is_zero(s: f32) -> bool {
    return ((bitcast<u32>(s) >> 23u) & 0xffu) == 0u;
}

// Rows out of range are summed again with their elements scaled by 2^-e, e = +-80: the
// squares of |x| <= f32::MAX then stay below 2^96, and a tiny row's sum below 2^-64 comes
// back below 2^96 too.
const RESCALE_EXPONENT: i32 = 80;

// v * 2^e for |e| <= 252. WGSL leaves ldexp undefined for exponents outside [-126, 127]
// (HLSL lowers it to v * exp2(e), so 0 * inf = NaN on DX12), so it takes two steps.
fn ldexp_wide(v: f32, e: i32) -> f32 {
    return ldexp(ldexp(v, e / 2), e - e / 2);
}

// Whether a sum that needs rescaling is too large (inf, or NaN from non-finite input)
// rather than too small.
fn sum_overflowed(s: f32) -> bool {
    return ((bitcast<u32>(s) >> 23u) & 0xffu) == 0xffu;
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

// Where the row's first k elements end, counted in lanes from the start of its Elem 0.
fn k_end() -> u32 {
    return params.k + row_phase();
}

// Elem i of a row, with lanes at or past k zeroed.
fn first_k(v: Elem, i: u32) -> Elem {
    return elem_keep_below(v, i * LANES, k_end());
}

// Elems of a row that hold any of its first k elements.
fn k_elems() -> u32 {
    return (k_end() + LANES - 1u) / LANES;
}

// The scale for a row whose sum of squares over the first k elements is `sumsq`: of x for
// phase 0, of x * 2^-e for phase 2 (then y = (x * 2^-e) * scale), or an all-zero first k
// (phase 1): 1 / eps by either convention, and 0 when eps is 0 (the output is then the
// bias, or zero), never inf or NaN.
fn row_scale(sumsq: f32, phase: u32, e: i32) -> f32 {
    let eps = params.eps;
    if (phase == 0u) {
        return scale_from_sum(sumsq);
    }
    if (phase == 1u) {
        if (eps == 0.0) {
            return 0.0;
        }
        if (EPS_INSIDE_ROOT) {
            return inverseSqrt(eps);
        }
        return 1.0 / eps;
    }
    // eps is brought to the scaled row's magnitude where that is finite (always for huge
    // rows); else (tiny rows, eps beyond 2^127 times their mean square) eps dominates, and
    // the mean is brought to eps's instead, where flushing it to zero costs nothing.
    let mean = sumsq / params.k_f32;
    if (EPS_INSIDE_ROOT) {
        let eps_scaled = ldexp_wide(eps, -2 * e);
        if (!is_infinite(eps_scaled)) {
            return inverseSqrt(mean + eps_scaled);
        }
        return inverseSqrt(ldexp_wide(mean, 2 * e) + eps) * ldexp(1.0, e);
    }
    let eps_scaled = ldexp(eps, -e);
    if (!is_infinite(eps_scaled)) {
        return 1.0 / (sqrt(mean) + eps_scaled);
    }
    return ldexp(1.0, e) / (ldexp(sqrt(mean), e) + eps);
}

// Whether a finite-or-overflowed value is inf, on the bits (see sum_needs_rescaling).
fn is_infinite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) == 0x7f800000u;
}

// The two factors of y = (x * f.x) * f.y for a row whose elements scaled by `pre` have the
// scale `scale`. Where their product (1 / rms of x itself) is a normal f32 it is applied
// alone: one rounding, and no element beyond pRMSNorm's k is scaled by 2^80 on its way (a
// tiny first k and a large tail would overflow there). Else (rms beyond ~2^126) x is scaled
// down by `pre` first, which overflows nothing.
fn output_factors(pre: f32, scale: f32) -> vec2<f32> {
    let factor = pre * scale;
    let exponent = (bitcast<u32>(factor) >> 23u) & 0xffu;
    if (exponent != 0u && exponent != 0xffu) {
        return vec2<f32>(factor, 1.0);
    }
    return vec2<f32>(pre, scale);
}

// The sum of squares of row `row_offset`'s elements before lane `end` (counted from the start
// of its Elem 0: k_end() for its first k), each scaled by `pre`, by the workgroup, each
// invocation starting at Elem `lane`. Every invocation of the workgroup calls it (it
// reduces). Called with a literal 1.0 on the common path, which every compiler folds.
fn sum_of_squares(row_offset: u32, lane: u32, pre: f32, end: u32) -> f32 {
    // Elems wholly before `end`, and the one that straddles it, if any.
    let whole = end / LANES;
    var acc = squares_of(row_offset, lane, 0u, whole, pre);
    if (whole * LANES < end && lane == whole % ROW_STRIDE) {
        let v = elem_keep_below(load_input(row_offset + whole), whole * LANES, end) * pre;
        acc = acc + v * v;
    }
    return reduce_sum(elem_sum(acc));
}

// The sum of the squares of Elems begin + lane, begin + lane + ROW_STRIDE, ... below end of
// a row, each scaled by `pre`: the row's body unmasked, the Elems around it masked.
fn squares_of(row_offset: u32, lane: u32, begin: u32, end: u32, pre: f32) -> Elem {
    let inner = inner_range(begin, end);
    var acc = Elem(0.0);
    for (var i = begin + lane; i < inner.x; i = i + ROW_STRIDE) {
        let v = load_input(row_offset + i) * pre;
        acc = acc + v * v;
    }
    for (var i = inner.x + lane; i < inner.y; i = i + ROW_STRIDE) {
        let v = load_inner(row_offset + i) * pre;
        acc = acc + v * v;
    }
    for (var i = inner.y + lane; i < end; i = i + ROW_STRIDE) {
        let v = load_input(row_offset + i) * pre;
        acc = acc + v * v;
    }
    return acc;
}

// The factors f of row `row_offset` (y = (x * f.x) * f.y * g + b): its sum of squares over
// the first k elements by the workgroup, each invocation starting at Elem `lane`. Every
// invocation of the workgroup calls it (it reduces).
fn row_factors(row_offset: u32, lane: u32) -> vec2<f32> {
    // Pass 1 over the first k elements: the sum of squares. A row whose sum overflows
    // (|x| beyond ~1e19) or underflows (below 2^-64) takes it once more with its
    // elements scaled by 2^-80 or 2^80, exactly: every row of normal f32 then sums in
    // range, and what the scaling flushes is negligible next to what it keeps. The
    // common path is one plain loop: no scaling, no loop around it. (No `break` either:
    // Mesa's llvmpipe (GL backend, Mesa 22.3) loses what a loop iteration that ends in
    // `break` wrote when the workgroup is narrower than its 8-lane SIMD;
    // tests/driver_workarounds.rs has the reduction.)
    var sumsq = sum_of_squares(row_offset, lane, 1.0, k_end());
    let rescale = sum_needs_rescaling(sumsq);
    var pre = 1.0;
    var e = 0;
    var phase = 0u;
    if (rescale) {
        phase = 2u;
        e = select(-RESCALE_EXPONENT, RESCALE_EXPONENT, sum_overflowed(sumsq));
        pre = ldexp(1.0, -e);
        // The bound is 0 for invocations whose row needs no second look: CPU adapters run
        // a branch's loop for the SIMD lanes the branch leaves out, until their own exit
        // test fails (on SwiftShader a second pass with every lane masked cost 1.15x to
        // 1.3x RMSNorm's time, uniform branch or not).
        sumsq = sum_of_squares(row_offset, lane, pre, select(0u, k_end(), rescale));
    }
    if (sum_is_zero(sumsq)) {
        // The first k elements are all zero (or subnormal).
        phase = 1u;
        pre = 1.0;
    }
    let scale = row_scale(sumsq, phase, e);
    return output_factors(pre, scale);
}

// Split rows: each piece sums its squares as they are where that sum is in range (e_p = 0),
// else scaled by its own exact power of two 2^-e_p (from its max |x|), and the row combines
// the pieces at the largest exponent, so no sum overflows or underflows whatever the row's
// magnitude, and a piece in range is read once. Kept per (row, piece): the scaled sum, and
// e_p + 1000 (0 for an all-zero piece, so that the pieces' max is a max of values >= 0 and
// ignores them).
const EXPONENT_BIAS: f32 = 1000.0;

// Piece g % chunks of row g / chunks, over the row's first k (k_chunk_len Elems each): its
// (scaled) sum of squares and biased exponent. Every invocation of the workgroup calls it (it
// reduces).
fn piece_squares(g: u32, lane: u32) -> vec2<f32> {
    let row_offset = row_begin(g / params.chunks);
    let begin = (g % params.chunks) * params.k_chunk_len;
    let end = min(begin + params.k_chunk_len, k_elems());
    // One look where the piece's plain sum of squares is in range, as in row_factors (with
    // the residual add, each look computes x + r again): the Elems wholly before k, and the
    // one that straddles it if it is the piece's.
    let whole = k_end() / LANES;
    var acc = squares_of(row_offset, lane, min(begin, whole), min(end, whole), 1.0);
    if (whole >= begin && whole < end && lane == 0u) {
        let v = first_k(load_input(row_offset + whole), whole);
        acc = acc + v * v;
    }
    var sum = reduce_sum(elem_sum(acc));
    var e = 0;
    let rescale = sum_needs_rescaling(sum);
    if (rescale) {
        // Out of range: the piece's max |x| sets its power of two, and the piece (small
        // enough to be in cache) is summed again scaled by it. (The bound is the piece's
        // start for lanes the branch leaves out, as in row_factors.)
        let last = select(begin, end, rescale);
        var local_max = 0.0;
        for (var i = begin + lane; i < last; i = i + WG) {
            let v = first_k(load_input(row_offset + i), i);
            local_max = max(local_max, elem_abs_max(v));
        }
        e = clamp(frexp(reduce_max(local_max)).exp, -126, 126);
        var scaled = Elem(0.0);
        for (var i = begin + lane; i < last; i = i + WG) {
            let v = elem_ldexp(first_k(load_input(row_offset + i), i), -e);
            scaled = scaled + v * v;
        }
        sum = reduce_sum(elem_sum(scaled));
    }
    return vec2<f32>(sum, select(f32(e) + EXPONENT_BIAS, 0.0, sum == 0.0));
}

// The factors of a split row from its pieces' (sum, biased exponent), read with the
// module's `piece_load` at first, first + stride, ... (params.chunks pieces). Every
// invocation of the workgroup calls it (it reduces).
fn factors_of_pieces(first: u32, stride: u32, lane: u32) -> vec2<f32> {
    var local_max = 0.0;
    for (var j = lane; j < params.chunks; j = j + WG) {
        local_max = max(local_max, piece_load(first + stride * j + 1u));
    }
    let biased = reduce_max(local_max);
    // The row's exponent; its sum of squares is sumsq * 2^(2e).
    let e = i32(biased - EXPONENT_BIAS);
    var local_sum = 0.0;
    for (var j = lane; j < params.chunks; j = j + WG) {
        let piece_e = i32(piece_load(first + stride * j + 1u) - EXPONENT_BIAS);
        let piece_sum = piece_load(first + stride * j);
        // Pieces 2^-252 or more below the largest add nothing an f32 keeps (and the
        // exponent stays in ldexp's range in both arms of the select).
        let shift = 2 * (piece_e - e);
        let scaled = ldexp_wide(piece_sum, max(shift, -252));
        local_sum = local_sum + select(0.0, scaled, shift >= -252);
    }
    let sumsq = reduce_sum(local_sum);
    // An all-zero first k: phase 1 of row_scale.
    let zero = biased == 0.0;
    let phase = select(2u, 1u, zero);
    let scale = row_scale(sumsq, phase, e);
    let pre = select(ldexp(1.0, -clamp(e, -126, 126)), 1.0, zero);
    return output_factors(pre, scale);
}
