// Workgroup reduction through workgroup memory: a binary tree, one barrier per level. The
// fallback for adapters without subgroups. WG (the workgroup size) must be a power of two.

// One slot per invocation (the host sets the constant WG): 4 WG bytes of workgroup memory.
// The workgroup normalizes a row together: invocation t takes Elems t, t + WG, ...
const ROW_STRIDE: u32 = WG;

var<workgroup> tree: array<f32, WG>;
var<workgroup> tree_total: f32;
var<private> tree_lane: u32;

fn reduce_setup(local_index: u32) {
    tree_lane = local_index;
}

// Returns the sum over the workgroup, the same value in every invocation, and uniform in
// WGSL's analysis (workgroupUniformLoad) so that a branch on it may contain barriers.
fn reduce_sum(v: f32) -> f32 {
    tree[tree_lane] = v;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half = half / 2u) {
        if (tree_lane < half) {
            tree[tree_lane] = tree[tree_lane] + tree[tree_lane + half];
        }
        workgroupBarrier();
    }
    if (tree_lane == 0u) {
        tree_total = tree[0];
    }
    return workgroupUniformLoad(&tree_total);
}

fn reduce_max(v: f32) -> f32 {
    tree[tree_lane] = v;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half = half / 2u) {
        if (tree_lane < half) {
            tree[tree_lane] = max(tree[tree_lane], tree[tree_lane + half]);
        }
        workgroupBarrier();
    }
    if (tree_lane == 0u) {
        tree_total = tree[0];
    }
    return workgroupUniformLoad(&tree_total);
}
