#!/usr/bin/env bash
# The wgpu-rmsnorm bundle: the native tests, the CLI check and the benchmark on this
# machine's GPU (Vulkan), with no Rust needed. Made by `cargo xtask bundle`.
#
#   ./run.sh [--quick] OUTDIR
#
# Writes OUTDIR/{tests,cli,bench}.log and OUTDIR/bench.json (the benchmark's records); exits
# non-zero if any step fails. --quick runs the benchmark's seven quick shapes (the whole run
# then takes a few minutes on a GPU). WGPU_BACKEND may name another backend (default vulkan).
set -u
here=$(cd "$(dirname "$0")" && pwd)
quick=()
if [ "${1:-}" = "--quick" ]; then
  quick=(--quick)
  shift
fi
out=${1:-}
if [ -z "$out" ]; then
  echo "usage: $0 [--quick] OUTDIR" >&2
  exit 2
fi
mkdir -p "$out" && out=$(cd "$out" && pwd)

# The Vulkan loader: the system's, else the copy in lib/. The driver must be the machine's;
# NVIDIA containers keep its manifest under /usr/local/nvidia.
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1 '; then
  export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ] && [ -f "$nvidia_icd" ]; then
  export VK_DRIVER_FILES="$nvidia_icd"
fi
export REQUIRE_GPU=1 WGPU_BACKEND="${WGPU_BACKEND:-vulkan}" XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

failed=0
step() {
  local name=$1
  shift
  local start=$SECONDS
  echo "== $name: $*"
  if "$@" >"$out/$name.log" 2>&1; then
    echo "   ok in $((SECONDS - start)) s ($out/$name.log)"
  else
    echo "   FAILED in $((SECONDS - start)) s; the end of $out/$name.log:"
    tail -n 25 "$out/$name.log" | sed 's/^/   /'
    failed=1
  fi
}

step tests "$here/gpu-tests"
step cli "$here/wgpu-rmsnorm" --rows 64 --hidden 4097 --p 0.0625
# ${quick[@]+...}: an empty array is "unbound" to bash before 4.4 under set -u.
step bench "$here/throughput" ${quick[@]+"${quick[@]}"} --json "$out/bench.json"
grep -h "tests run on\|^test result" "$out/tests.log" | sort | uniq -c | head -n 5
if [ "$failed" = 0 ]; then
  echo "all passed; records in $out/bench.json"
fi
exit "$failed"
