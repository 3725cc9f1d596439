// RMSNorm and pRMSNorm backward: dx, and each workgroup's partial sums of dgain and dbias
// (backward_common.wgsl), rows in blocks of ROW_BLOCK.
//
// With r = 1 / rms, x^ = x r the forward's normalized row (from the forward's factors f:
// r = f.x f.y), u = dy * g, and c = sum_j u_j x^_j / k over the whole row (every output
// depends on r, which depends on the first k elements only):
//
//   dx_i = r (u_i - [i < k] x^_i c beta)
//
// beta = 1 with eps inside the root; with eps added to the RMS (r = 1 / (m + eps), m the
// plain RMS), beta = (m + eps) / m = 1 / (1 - eps r). (docs/backward.md derives both.) dx is
// taken through the forward's factors, ((u - x^ c beta) * f.x) * f.y, so that no
// intermediate overflows for rows of any magnitude (x / (k rms^3) would beyond |x| ~ 1e13).
//
// A row whose first k elements are all zero: x^ = 0, so c = 0 and dx = u / sqrt(eps) (the
// derivative with eps inside the root; with eps added, the one-sided limit), or 0 when
// eps = 0, as the forward's output there is defined.
//
// Where the forward saved the factors, a row takes two passes (c, then dx); where it did not,
// one pass finds the sum of squares and sum u x together (row_sums), then dx: x and dy are
// read twice either way. Few long rows are split across workgroups (the backward_split_*
// entry points at the end).
//
// The host prepends an element layout, a reduction, norm_common.wgsl, rms_scale.wgsl
// (the forward's scale; row_factors for rows out of range), backward_common.wgsl and the
// tensors' accessors.

// Where the statistics are recomputed: one pass over the row for both its sum of squares over
// the first k elements and sum u x over the whole row (x as it is). A row whose sum of
// squares is in range (every row of ordinary magnitude) takes its factors and correction from
// them; the others (a zero, tiny or huge first k, or a sum of u x that overflowed) take the
// forward's rescaled path (row_factors) and a pass of their own for the correction.
fn row_sums(row_offset: u32, lane: u32) -> vec2<f32> {
    var squares = Elem(0.0);
    var products = Elem(0.0);
    for (var i = lane; i < params.row_len; i = i + WG) {
        let v = load_input(row_offset + i);
        let head = first_k(v, i);
        squares = squares + head * head;
        products = products + upstream(row_offset, i) * v;
    }
    return vec2<f32>(reduce_sum(elem_sum(squares)), reduce_sum(elem_sum(products)));
}

const F32_MAX: f32 = 0x1.fffffep+127;

// c beta.
fn correction(c: f32, f: vec2<f32>) -> f32 {
    if (EPS_INSIDE_ROOT) {
        return c;
    }
    // eps / rms in [0, 1]; where it rounds to 1 (rms within 2^-24 of eps, so the row's own
    // magnitude is below 2^-24 eps), the term is that much smaller than u / rms and beta
    // stops at 2^24.
    let eps_ratio = (params.eps * f.x) * f.y;
    // Finite, so that where x^ is 0 (an all-zero first k) the term is 0, not 0 * inf.
    return clamp(c / max(1.0 - eps_ratio, 0x1p-24), -F32_MAX, F32_MAX);
}

@compute @workgroup_size(WG)
fn rms_norm_backward(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    reduce_setup(lane);
    // The factors and c beta of each row of a block.
    var factors: array<vec2<f32>, ROW_BLOCK>;
    var corrections: array<f32, ROW_BLOCK>;
    for (var block = group.x; block < row_blocks(); block = block + groups.x) {
        let first_row = block * ROW_BLOCK;
        let count = min(ROW_BLOCK, params.rows - first_row);
        for (var j = 0u; j < count; j = j + 1u) {
            let row_offset = (first_row + j) * params.row_len;
            var f: vec2<f32>;
            // sum u x^, where the pass that found the factors found it too.
            var sum_u_x_hat = 0.0;
            var summed = false;
            if (LOADS_STATS) {
                f = vec2<f32>(stats_load(first_row + j, 0u), stats_load(first_row + j, 1u));
            } else {
                let sums = row_sums(row_offset, lane);
                if (!sum_needs_rescaling(sums.x) && !sum_overflowed(sums.y)) {
                    // In range: the forward's phase 0, f = (1 / rms, 1).
                    f = output_factors(1.0, scale_from_sum(sums.x));
                    sum_u_x_hat = sums.y * f.x;
                    summed = true;
                } else {
                    f = row_factors(row_offset, lane);
                }
            }
            if (!summed) {
                var acc = Elem(0.0);
                for (var i = lane; i < params.row_len; i = i + WG) {
                    let x_hat = (load_input(row_offset + i) * f.x) * f.y;
                    acc = acc + upstream(row_offset, i) * x_hat;
                }
                sum_u_x_hat = reduce_sum(elem_sum(acc));
            }
            factors[j] = f;
            corrections[j] = correction(sum_u_x_hat / params.k_f32, f);
        }
        // dx of the block's rows column by column, dgain and dbias summed over them.
        for (var i = lane; i < params.row_len; i = i + WG) {
            let g = gain_factor(i);
            var grad_gain = Elem(0.0);
            var grad_bias = Elem(0.0);
            for (var j = 0u; j < count; j = j + 1u) {
                let at = (first_row + j) * params.row_len + i;
                let dy = dy_load(params.dy_base + at);
                let f = factors[j];
                let x_hat = (load_input(at) * f.x) * f.y;
                let dx = (((dy * g) - first_k(x_hat, i) * corrections[j]) * f.x) * f.y;
                store_grad_input(at, dx);
                grad_gain = grad_gain + dy * x_hat;
                grad_bias = grad_bias + dy;
            }
            let first = block == group.x && params.partials_written == 0u;
            accumulate_weight_grads(first, group.x, i, grad_gain, grad_bias);
        }
    }
}

// Split rows: a few long rows, each across params.chunks workgroups (g = row * chunks +
// piece), in three dispatches of one pass; dgain and dbias go to partial row `row` (the
// dispatch's row), each workgroup into its piece's Elems of it.

// Dispatch 1 (without saved statistics): each piece's sum of squares over its part of the
// first k, as the forward's split rows take it.
@compute @workgroup_size(WG)
fn backward_split_statistics(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    reduce_setup(lane);
    for (var g = group.x; g < params.rows * params.chunks; g = g + groups.x) {
        let piece = piece_squares(g, lane);
        if (lane == 0u) {
            pieces[PIECE_STRIDE * g] = piece.x;
            pieces[PIECE_STRIDE * g + 1u] = piece.y;
        }
    }
}

// The factors of split row `row`: saved, or from its pieces' sums of squares.
fn split_factors(row: u32, lane: u32) -> vec2<f32> {
    if (LOADS_STATS) {
        return vec2<f32>(stats_load(row, 0u), stats_load(row, 1u));
    }
    return factors_of_pieces(PIECE_STRIDE * row * params.chunks, PIECE_STRIDE, lane);
}

// Dispatch 2: each piece's sum of u x^.
@compute @workgroup_size(WG)
fn backward_split_sums(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    reduce_setup(lane);
    for (var g = group.x; g < params.rows * params.chunks; g = g + groups.x) {
        let row = g / params.chunks;
        let row_offset = row * params.row_len;
        let f = split_factors(row, lane);
        let range = piece_range(g);
        var acc = Elem(0.0);
        for (var i = range.x + lane; i < range.y; i = i + WG) {
            let x_hat = (load_input(row_offset + i) * f.x) * f.y;
            acc = acc + upstream(row_offset, i) * x_hat;
        }
        let sum = reduce_sum(elem_sum(acc));
        if (lane == 0u) {
            pieces[PIECE_STRIDE * g + 2u] = sum;
        }
    }
}

// Dispatch 3: dx of each piece, from its row's c.
@compute @workgroup_size(WG)
fn backward_split_dx(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    reduce_setup(lane);
    let first = params.partials_written == 0u;
    for (var g = group.x; g < params.rows * params.chunks; g = g + groups.x) {
        let row = g / params.chunks;
        let row_offset = row * params.row_len;
        let f = split_factors(row, lane);
        let c = correction(sum_of_pieces(row, 2u, lane) / params.k_f32, f);
        let range = piece_range(g);
        for (var i = range.x + lane; i < range.y; i = i + WG) {
            let dy = dy_load(params.dy_base + row_offset + i);
            let x_hat = (load_input(row_offset + i) * f.x) * f.y;
            let dx = (((dy * gain_factor(i)) - first_k(x_hat, i) * c) * f.x) * f.y;
            store_grad_input(row_offset + i, dx);
            accumulate_weight_grads(first, row, i, dy * x_hat, dy);
        }
    }
}
