// RMSNorm and pRMSNorm backward: dx, and each workgroup's partial sums of dgain and dbias
// (backward_common.wgsl). One workgroup per row, looping over rows.
//
// With x^ = x / rms the forward's normalized row (the same f32 values, from the same factors
// f: 1 / rms = f.x f.y), u = dy * g, and c = sum_j u_j x^_j / k over the whole row (every
// output depends on the rms, which depends on the first k elements only):
//
//   dx_i = (u_i - [i < k] x^_i c beta) / rms
//
// beta = 1 with eps inside the root; with eps added to the rms, beta = (rms) / (rms - eps)
// = 1 / (1 - eps / rms). (docs/backward.md derives both.) dx is taken through the forward's
// factors, ((u - x^ c beta) * f.x) * f.y, so that no intermediate overflows for rows of any
// magnitude (x / (k rms^3) would beyond |x| ~ 1e13).
//
// A row whose first k elements are all zero: x^ = 0, so c = 0 and dx = u / sqrt(eps) (the
// derivative with eps inside the root; with eps added, the one-sided limit), or 0 when
// eps = 0, as the forward's output there is defined.
//
// The host prepends an element layout, a reduction, norm_common.wgsl, rms_scale.wgsl
// (row_factors, to recompute the factors where no statistics were saved),
// backward_common.wgsl and the tensors' accessors.

// c beta.
fn correction(c: f32, f: vec2<f32>) -> f32 {
    if (EPS_INSIDE_ROOT) {
        return c;
    }
    // eps / rms in [0, 1]; where it rounds to 1 (rms within 2^-24 of eps, so the row's own
    // magnitude is below 2^-24 eps), the term is that much smaller than u / rms and beta
    // stops at 2^24.
    let eps_ratio = (params.eps * f.x) * f.y;
    return c / max(1.0 - eps_ratio, 0x1p-24);
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
            if (LOADS_STATS) {
                f = vec2<f32>(stats_load(first_row + j, 0u), stats_load(first_row + j, 1u));
            } else {
                f = row_factors(row_offset, lane);
            }
            var acc = Elem(0.0);
            for (var i = lane; i < params.row_len; i = i + WG) {
                let x_hat = (load_input(row_offset + i) * f.x) * f.y;
                let u = dy_load(params.dy_base + row_offset + i) * gain_factor(i);
                acc = acc + u * x_hat;
            }
            factors[j] = f;
            corrections[j] = correction(reduce_sum(elem_sum(acc)) / params.k_f32, f);
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
