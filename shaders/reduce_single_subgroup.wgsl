// Workgroup reduction when the whole workgroup is one subgroup: subgroupAdd alone, no
// workgroup memory, no barrier. Only planned where that is provable: an adapter whose
// subgroups have one fixed width (min = max, a CPU adapter's SIMD width) and WG at most that.
// Software adapters (lavapipe) pay dearly for barriers; this is their fast path.

// The workgroup normalizes a row together: invocation t takes Elems t, t + WG, ...
const ROW_STRIDE: u32 = WG;

fn reduce_setup(local_index: u32) {}

fn reduce_sum(v: f32) -> f32 {
    return subgroupAdd(v);
}

fn reduce_max(v: f32) -> f32 {
    return subgroupMax(v);
}
