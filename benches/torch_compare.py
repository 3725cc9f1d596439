#!/usr/bin/env python3
"""PyTorch's normalization kernels on CUDA, on the benchmark's shapes, for comparison with
`cargo xtask bench` (or the bundle's `run.sh`) on the same GPU.

Times, per shape and dtype (f32, f16, bf16): `torch.nn.functional.rms_norm`, an RMSNorm
compiled by `torch.compile` (x * rsqrt(mean(x^2) + eps) * weight), `F.layer_norm`, and the
copy of the same bytes (`y.copy_(x)`: x read, y written) as the roof. Each is timed with
CUDA events: the median of >= 10 samples, each a loop of >= 10 ms of back-to-back calls.
Several input buffers are rotated through so that a GPU whose L2 holds a whole tensor (50 MB
on an H100) still reads it from DRAM.

Writes one record per (shape, dtype, kernel) in the benchmark's JSON format:
    {"records": [{"kernel", "rows", "hidden", "dtype", "median_ms", "gbps", "sol_copy",
                  "impl", "adapter"}, ...]}

    python3 benches/torch_compare.py --json OUT/torch.json [--quick]
"""

import argparse
import json
import statistics
import sys

SHAPES = [
    (1, 4096),
    (64, 4096),
    (1024, 4096),
    (4096, 1024),
    (4096, 4096),
    (16384, 1024),
    (65536, 128),
    (8, 262144),
    (1, 1048576),
]
QUICK_SHAPES = [(64, 4096), (4096, 4096), (65536, 128), (1, 1048576)]
DTYPES = ["f32", "f16", "bf16"]
EPS = 1e-6
# Rotate over enough buffers that together they exceed any L2 (H100: 50 MB).
ROTATE_BYTES = 256 << 20
SAMPLES = 10
MIN_SAMPLE_MS = 10.0


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="where to write the records")
    parser.add_argument("--quick", action="store_true", help="four shapes, as bench --quick")
    return parser.parse_args()


def main():
    args = parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as error:
        print(f"torch_compare: PyTorch is not installed ({error})", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("torch_compare: no CUDA device", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    adapter = torch.cuda.get_device_name(device)
    dtypes = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}

    def rms_norm_eager(x, weight):
        return F.rms_norm(x, (x.shape[-1],), weight, EPS)

    def rms_norm_math(x, weight):
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + EPS)).to(x.dtype) * weight

    rms_norm_compiled = torch.compile(rms_norm_math, dynamic=False)

    def layer_norm(x, weight):
        return F.layer_norm(x, (x.shape[-1],), weight, None, EPS)

    kernels = [
        ("RMSNorm", "torch.nn.functional.rms_norm", rms_norm_eager),
        ("RMSNorm", "torch.compile", rms_norm_compiled),
        ("LayerNorm", "torch.nn.functional.layer_norm", layer_norm),
    ]

    records = []
    for rows, hidden in QUICK_SHAPES if args.quick else SHAPES:
        for name in DTYPES:
            dtype = dtypes[name]
            element = torch.finfo(dtype).bits // 8
            tensor_bytes = rows * hidden * element
            count = max(2, -(-ROTATE_BYTES // tensor_bytes))
            inputs = [torch.randn(rows, hidden, device=device, dtype=dtype) for _ in range(count)]
            weight = torch.randn(hidden, device=device, dtype=dtype)
            out = torch.empty_like(inputs[0])
            # Bytes moved: x read and y written (the weight is O(hidden)).
            moved = 2 * tensor_bytes

            copy_ms = time_ms(torch, lambda i: out.copy_(inputs[i % count]))
            records.append(record("copy", "Tensor.copy_", rows, hidden, name, copy_ms, moved, copy_ms, adapter))
            for kernel, impl, function in kernels:
                reference = rms_norm_math if kernel == "RMSNorm" else layer_norm
                check(torch, function(inputs[0], weight), reference(inputs[0], weight), kernel, impl)
                ms = time_ms(torch, lambda i: function(inputs[i % count], weight))
                records.append(record(kernel, impl, rows, hidden, name, ms, moved, copy_ms, adapter))
            del inputs
            torch.cuda.empty_cache()
            for r in records[-4:]:
                print(
                    f"{rows:>6} x {hidden:<8} {name:<5} {r['kernel']:<10} {r['impl']:<32} "
                    f"{r['median_ms']:9.4f} ms {r['gbps']:8.1f} GB/s sol_copy {r['sol_copy']:.2f}"
                )

    with open(args.json, "w") as f:
        json.dump({"records": records}, f, indent=1)
    print(f"torch_compare: {len(records)} records in {args.json}")
    return 0


def time_ms(torch, call):
    """Median ms per call: >= SAMPLES samples, each >= MIN_SAMPLE_MS of back-to-back calls."""

    def sample(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(reps):
            call(i)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    for i in range(3):  # warm-up (and torch.compile's compilation)
        call(i)
    torch.cuda.synchronize()
    # Calls per sample: doubled until a sample lasts MIN_SAMPLE_MS.
    reps = 1
    while sample(reps) < MIN_SAMPLE_MS and reps < 1 << 20:
        reps *= 2
    return statistics.median(sample(reps) / reps for _ in range(SAMPLES))


def check(torch, actual, expected, kernel, impl):
    """The kernel computes what it is named for (loose: the dtypes' own rounding)."""
    error = (actual.float() - expected.float()).abs().max().item()
    scale = expected.float().abs().max().item()
    if not error <= 2e-2 * max(scale, 1.0):
        raise SystemExit(f"torch_compare: {kernel} ({impl}) differs from its reference by {error}")


def record(kernel, impl, rows, hidden, dtype, ms, moved, copy_ms, adapter):
    return {
        "kernel": kernel,
        "impl": impl,
        "rows": rows,
        "hidden": hidden,
        "dtype": dtype,
        "median_ms": ms,
        "gbps": moved / (ms * 1e-3) / 1e9,
        "sol_copy": copy_ms / ms,
        "adapter": adapter,
    }


if __name__ == "__main__":
    sys.exit(main())
