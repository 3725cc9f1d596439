// Workgroup reduction when the whole workgroup is one subgroup (the host sets WG to the
// adapter's smallest subgroup size): subgroupAdd alone, no workgroup memory, no barrier.
// Software adapters (lavapipe, SwiftShader) pay dearly for barriers; this is their fast path.

override WG: u32 = 8u;

fn reduce_setup(local_index: u32) {}

fn reduce_sum(v: f32) -> f32 {
    return subgroupAdd(v);
}

fn reduce_max(v: f32) -> f32 {
    return subgroupMax(v);
}
