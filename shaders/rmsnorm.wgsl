// RMSNorm and pRMSNorm forward. `rms_norm`: one workgroup per row (a loop over rows when
// there are more rows than workgroups). `split_partials` then `split_scale`: a few long rows,
// each split across many workgroups (so that a single decode row does not run on one core).
//
//   y = x / rms_k(x) * g + b,   rms_k(x) = sqrt(sum_{i<k} x_i^2 / k)   (k = n: RMSNorm)
//
// The host prepends an element layout (elem_vec4.wgsl or elem_scalar.wgsl: Elem, LANES), a
// reduction (reduce_*.wgsl: WG, reduce_setup, reduce_sum, reduce_max), norm_common.wgsl
// (Params, the options, load_input, store), where rows lie (rows_aligned.wgsl, or
// rows_masked.wgsl for rows at any element), rms_scale.wgsl (the row's scale, row_factors)
// and the tensors' accessors for the call's
// storage formats (f32, f16, bf16; sums are f32 on every path). Invocation t handles
// elements t, t + WG, t + 2 WG, ... of a row, so neighbouring invocations touch neighbouring
// memory. Sums are f32; the scale is applied in f32 and rounded once per multiply.

// Split rows only: per (row, chunk), the sum of squares and the max |x| of its part of k.
@group(0) @binding(5) var<storage, read_write> row_partials: array<f32>;


// y = (x * f.x) * f.y * g + b for Elems begin + lane, begin + lane + ROW_STRIDE, ... below end
// of one row (norm_common.wgsl's write_row).
fn write_scaled(row_offset: u32, lane: u32, begin: u32, end: u32, f: vec2<f32>) {
    write_row(row_offset, lane, begin, end, vec4<f32>(0.0, 0.0, f.x, f.y), false);
}

@compute @workgroup_size(WG)
fn rms_norm(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    reduce_setup(lane);
    for (var row = group.x; row < params.rows; row = row + groups.x) {
        let row_offset = row_begin(row);
        let f = row_factors(row_offset, lane);
        if (lane == 0u) {
            stats_store_factors(row, f);
        }
        write_scaled(row_offset, lane, 0u, row_elems(), f);
    }
}

// Read once: each invocation keeps its CACHE_LEN Elems of the row (elements lane,
// lane + WG, ...) between the sum and the scaling, so x crosses the memory bus once: 2n
// bytes per row instead of 3n. The host writes `RowCache` (one field per Elem, which every
// compiler keeps in registers) and the unrolled `cache_load`, `cache_sum_squares` and
// `cache_store` from the helpers below and norm_common.wgsl's `load_in_row` and
// `store_in_row`, so no compiler has to unroll a loop over a private array for the cache to
// stay out of memory.

// The squares of the lanes of `v` (Elem i of a row) that lie in the first k elements.
fn square_first_k(v: Elem, i: u32) -> Elem {
    let kept = first_k(v, i);
    return kept * kept;
}

@compute @workgroup_size(WG)
fn rms_norm_cached(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    reduce_setup(lane);
    for (var row = group.x; row < params.rows; row = row + groups.x) {
        let row_offset = row_begin(row);
        let cache = cache_load(row_offset, lane);
        var sumsq = reduce_sum(elem_sum(cache_sum_squares(cache, lane, 1.0)));
        // Out-of-range sums are redone from the cache, scaled as in rms_norm.
        var pre = 1.0;
        var e = 0;
        var phase = 0u;
        if (sum_needs_rescaling(sumsq)) {
            phase = 2u;
            e = select(-RESCALE_EXPONENT, RESCALE_EXPONENT, sum_overflowed(sumsq));
            pre = ldexp(1.0, -e);
            sumsq = reduce_sum(elem_sum(cache_sum_squares(cache, lane, pre)));
            if (sum_is_zero(sumsq)) {
                phase = 1u;
                pre = 1.0;
            }
        }
        let scale = row_scale(sumsq, phase, e);
        let f = output_factors(pre, scale);
        if (lane == 0u) {
            stats_store_factors(row, f);
        }
        cache_store(cache, row_offset, lane, f);
    }
}

// Split rows' partial sums, as `piece_squares` and `factors_of_pieces` (rms_scale.wgsl) read
// them: two per (row, piece).
fn piece_load(i: u32) -> f32 {
    return row_partials[i];
}

// Dispatch 1 of a split row: workgroup g = row * chunks + c handles piece c of the row's
// first k elements.
@compute @workgroup_size(WG)
fn split_partials(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    reduce_setup(lane);
    for (var g = group.x; g < params.rows * params.chunks; g = g + groups.x) {
        let piece = piece_squares(g, lane);
        if (lane == 0u) {
            row_partials[2u * g] = piece.x;
            row_partials[2u * g + 1u] = piece.y;
        }
    }
}

// Dispatch 2 of a split row: workgroup g combines its row's pieces and scales piece c of the
// whole row.
@compute @workgroup_size(WG)
fn split_scale(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    reduce_setup(lane);
    for (var g = group.x; g < params.rows * params.chunks; g = g + groups.x) {
        let row = g / params.chunks;
        let row_offset = row_begin(row);
        let f = factors_of_pieces(2u * row * params.chunks, 2u, lane);
        let range = piece_range(g);
        if (lane == 0u && g % params.chunks == 0u) {
            stats_store_factors(row, f);
        }
        write_scaled(row_offset, lane, range.x, range.y, f);
    }
}
