// The unfused residual add, h = x + r (added in f32, rounded to the activations' format):
// what the fused kernels save, kept for the benchmark's comparison. Written like the copy
// kernel (copy_vec4.wgsl): four elements per load and store, neighbouring invocations on
// neighbouring memory, a grid-stride loop. The host prepends the vec4 element layout,
// formats.wgsl and the accessors of x, r and the sum for the format (src/shaders.rs).

@compute @workgroup_size(WG)
fn residual_add(
    @builtin(global_invocation_id) id: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let stride = groups.x * WG;
    let len = arrayLength(&x);
    for (var i = id.x; i < len; i = i + stride) {
        sum_store(i, act_round(x_load(i) + r_load(i)));
    }
}
