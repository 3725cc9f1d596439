// LayerNorm forward, the baseline RMSNorm is measured against: written like rmsnorm.wgsl
// (one workgroup per row, strided loads, the same layouts and reductions), so that the
// comparison shows what re-centering costs and nothing else.
//
//   y = (x - mean(x)) / sqrt(var(x) + eps) * g + b
//
// The statistics come from one pass of shifted sums: with K = the row's first element,
// var = sum((x - K)^2) / n - (sum(x - K) / n)^2, which stays accurate when the mean is far
// from zero (the plain sum-of-squares formula cancels catastrophically there). So LayerNorm
// reads x twice like RMSNorm, and pays a second reduction and the subtraction.
//
// The host prepends an element layout (Elem, LANES), a reduction (WG, reduce_*) and
// norm_common.wgsl (Params, the options, bindings, store).

@compute @workgroup_size(WG)
fn layer_norm(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    reduce_setup(lane);
    for (var row = group.x; row < params.rows; row = row + groups.x) {
        let row_start = params.x_base + row * params.row_len;
        let shift = elem_first(x[row_start]);

        var sum = Elem(0.0);
        var sum_sq = Elem(0.0);
        for (var i = lane; i < params.row_len; i = i + WG) {
            let d = x[row_start + i] - shift;
            sum = sum + d;
            sum_sq = sum_sq + d * d;
        }
        let mean_shifted = reduce_sum(elem_sum(sum)) / params.k_f32;
        let variance = max(reduce_sum(elem_sum(sum_sq)) / params.k_f32 - mean_shifted * mean_shifted, 0.0);
        // A constant row with eps = 0 has no defined scale: 0, as RMSNorm does, never NaN.
        let denominator = variance + params.eps;
        let scale = select(inverseSqrt(denominator), 0.0, denominator == 0.0);

        let out_start = params.y_base + row * params.row_len;
        for (var i = lane; i < params.row_len; i = i + WG) {
            // (x - K) - mean(x - K) rather than x - mean: x - K is exact for x near K, and
            // the mean rounded back to x's magnitude would lose the digits that matter.
            store(out_start, i, ((x[row_start + i] - shift) - mean_shifted) * scale);
        }
    }
}
