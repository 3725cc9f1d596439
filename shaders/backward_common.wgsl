// What the backward kernels share (rmsnorm_backward.wgsl, layernorm_backward.wgsl): the
// upstream gradient through the gain, the store of dx, split rows' values per piece, and dgain
// and dbias summed over rows without float atomics.
//
// Whole rows are taken in blocks of ROW_BLOCK (set by the host): a workgroup takes blocks
// group.x, group.x + groups, ... and first computes each row's statistics and correction (a
// reduction per row), then dx column by column across the block's rows, summing their dy x^
// and dy per column.
//
// dgain = sum over rows of dy x^ and dbias = sum over rows of dy, per column. Each workgroup
// adds its blocks' sums into a partial row of its own (`slot`: workgroup g of every dispatch
// of a call adds into row g; with split rows, the workgroups of row r into row r, each its
// piece's Elems), each invocation into its own Elems of it: no two invocations touch one
// address, and the partial row stays in cache while the workgroup walks its blocks (one read
// and write of it per ROW_BLOCK rows). `weight_grads` then adds the partial rows in slot
// order. The rows a workgroup takes and the order of every sum depend on the launch alone,
// so dgain and dbias are bit-identical run to run.

// Blocks of the dispatch's rows.
fn row_blocks() -> u32 {
    return (params.rows + ROW_BLOCK - 1u) / ROW_BLOCK;
}

// The upstream gradient of Elem i of a row's normalized value: dy * g (g + 1 with the unit
// offset, 1 without a gain).
fn gain_factor(i: u32) -> Elem {
    if (HAS_GAIN) {
        let g = gain_load(params.gain_base + i);
        if (GAIN_PLUS_ONE) {
            return g + 1.0;
        }
        return g;
    }
    return Elem(1.0);
}

// Split rows (few long rows, each across many workgroups): per (row, piece) g, PIECE_STRIDE
// f32 at PIECE_STRIDE g: the piece's statistics (dispatch 1), then its sums for the
// correction (dispatch 2), which dispatch 3 combines with the row's other pieces for dx.
@group(0) @binding(13) var<storage, read_write> pieces: array<f32>;
const PIECE_STRIDE: u32 = 4u;

fn piece_load(i: u32) -> f32 {
    return pieces[i];
}

// The sum over row `row`'s pieces of word `word` of each.
fn sum_of_pieces(row: u32, word: u32, lane: u32) -> f32 {
    var local_sum = 0.0;
    for (var j = lane; j < params.chunks; j = j + WG) {
        local_sum = local_sum + pieces[PIECE_STRIDE * (row * params.chunks + j) + word];
    }
    return reduce_sum(local_sum);
}

// u of Elem i of the row whose Elems start at `row_offset`.
fn upstream(row_offset: u32, i: u32) -> Elem {
    return dy_load(params.dy_base + row_offset + i) * gain_factor(i);
}

// Stores Elem `at` (from row 0 of the dispatch) of dx: the gradient through the norm, plus
// the gradient of the stored sum h where the forward stored it (dh = dh_norm + dh_out, the
// gradient of x and of r alike), added in f32 and rounded once.
fn store_grad_input(at: u32, grad_norm: Elem) {
    var v = grad_norm;
    if (HAS_GRAD_SUM) {
        v = v + dsum_load(params.dsum_base + at);
    }
    y_store(params.y_base + at, v);
}

// Adds the sums of dy x^ and dy over a block's rows at Elem i into the workgroup's partial
// rows (`first`: the workgroup's first block in the call, which writes them).
fn accumulate_weight_grads(first: bool, slot: u32, i: u32, grad_gain: Elem, grad_bias: Elem) {
    if (HAS_GAIN) {
        weight_partial_add(first, slot * params.row_len + i, grad_gain);
    }
    if (HAS_BIAS) {
        let bias_row = select(0u, params.partial_rows, HAS_GAIN) + slot;
        weight_partial_add(first, bias_row * params.row_len + i, grad_bias);
    }
}

// The second pass: each invocation adds its columns' partial rows in slot order.
@compute @workgroup_size(WG)
fn weight_grads(
    @builtin(global_invocation_id) id: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let bias_rows = select(0u, params.partial_rows, HAS_GAIN);
    for (var i = id.x; i < params.row_len; i = i + groups.x * WG) {
        if (HAS_GAIN) {
            var sum = Elem(0.0);
            for (var p = 0u; p < params.partial_rows; p = p + 1u) {
                sum = sum + weight_partial_load(p * params.row_len + i);
            }
            grad_gain_store(params.dgain_base + i, sum);
        }
        if (HAS_BIAS) {
            var sum = Elem(0.0);
            for (var p = 0u; p < params.partial_rows; p = p + 1u) {
                sum = sum + weight_partial_load((bias_rows + p) * params.row_len + i);
            }
            grad_bias_store(params.dbias_base + i, sum);
        }
    }
}
