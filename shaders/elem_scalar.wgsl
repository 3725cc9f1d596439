// Element layout: one f32 per load and store, for any hidden size and any 4-byte aligned
// offset. Prepended to a kernel by the host.

alias Elem = f32;
const LANES: u32 = 1u;

fn elem_sum(v: Elem) -> f32 {
    return v;
}

fn elem_abs_max(v: Elem) -> f32 {
    return abs(v);
}

fn elem_keep_below(v: Elem, first: u32, k: u32) -> Elem {
    return select(0.0, v, first < k);
}

fn elem_ldexp(v: Elem, e: i32) -> Elem {
    return ldexp(v, e);
}

fn elem_first(v: Elem) -> f32 {
    return v;
}
