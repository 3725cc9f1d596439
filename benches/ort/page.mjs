// wgpu-rmsnorm against ONNX Runtime Web (WebGPU execution provider) in one page: the same
// shapes, data and eps; both on GPU-resident tensors (ours: GpuTensor and rmsNormLayer;
// ORT: GPUBuffer inputs via Tensor.fromGpuBuffer and outputs left on the GPU), each call
// timed by the wall clock over back-to-back calls ending in onSubmittedWorkDone, so both
// pay their own dispatch overhead and nothing of the CPU transfers. Results are checked
// against each other before timing. Served by `cargo xtask bench-browser` with the npm
// package in ./pkg and onnxruntime-web in ./node_modules.
import * as ort from "./node_modules/onnxruntime-web/dist/ort.webgpu.min.mjs";
import init, { Normalizer, sampleData } from "./pkg/wgpu_rmsnorm.js";

const EPS = 1e-6;
const SAMPLES = 5;
const MIN_SAMPLE_MS = 200;

// --- A one-node ONNX model, protobuf-encoded by hand (no protobuf library needed). ---
const utf8 = (s) => new TextEncoder().encode(s);
function varint(n) {
  const out = [];
  let v = BigInt(n);
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v) byte |= 0x80;
    out.push(byte);
  } while (v);
  return out;
}
const concat = (parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
};
// Field `field` of wire type 2 (length-delimited), 0 (varint) or 5 (32-bit float).
const bytesField = (field, bytes) => concat([Uint8Array.from([...varint((field << 3) | 2), ...varint(bytes.length)]), bytes]);
const stringField = (field, s) => bytesField(field, utf8(s));
const intField = (field, n) => Uint8Array.from([...varint(field << 3), ...varint(n)]);
const floatField = (field, f) => {
  const b = new Uint8Array(5);
  b[0] = (field << 3) | 5;
  new DataView(b.buffer).setFloat32(1, f, true);
  return b;
};
// ValueInfoProto of a float tensor of `dims`.
const valueInfo = (name, dims) => concat([
  stringField(1, name),
  bytesField(2, bytesField(1, concat([intField(1, 1), bytesField(2, concat(dims.map((d) => bytesField(1, intField(1, d)))))]))),
]);
// The model: Y = op(X, S[, B]) over the last axis.
function model(opType, rows, hidden, withBias) {
  const inputs = withBias ? ["X", "S", "B"] : ["X", "S"];
  // AttributeProto: name 1, f 2, i 3, type 20 (FLOAT 1, INT 2); axis = -1 is the varint
  // of its 64-bit two's complement.
  const attributes = [
    concat([stringField(1, "axis"), Uint8Array.from([3 << 3, ...varint((1n << 64n) - 1n)]), intField(20, 2)]),
    concat([stringField(1, "epsilon"), floatField(2, EPS), intField(20, 1)]),
  ];
  const node = concat([
    ...inputs.map((i) => stringField(1, i)),
    stringField(2, "Y"),
    stringField(3, "norm"),
    stringField(4, opType),
    ...attributes.map((a) => bytesField(5, a)),
  ]);
  const graph = concat([
    bytesField(1, node),
    stringField(2, "g"),
    bytesField(11, valueInfo("X", [rows, hidden])),
    bytesField(11, valueInfo("S", [hidden])),
    ...(withBias ? [bytesField(11, valueInfo("B", [hidden]))] : []),
    bytesField(12, valueInfo("Y", [rows, hidden])),
  ]);
  const opset = concat([stringField(1, ""), intField(2, 17)]);
  return concat([intField(1, 8), bytesField(7, graph), bytesField(8, opset)]);
}

// --- Timing ---
async function perCall(run, device) {
  // Calls per sample: enough for MIN_SAMPLE_MS, from one timed call.
  let start = performance.now();
  await run();
  await device.queue.onSubmittedWorkDone();
  const once = performance.now() - start;
  const reps = Math.max(1, Math.ceil(MIN_SAMPLE_MS / Math.max(once, 0.01)));
  const samples = [];
  for (let s = 0; s < SAMPLES; s++) {
    start = performance.now();
    for (let i = 0; i < reps; i++) await run();
    await device.queue.onSubmittedWorkDone();
    samples.push((performance.now() - start) / reps);
  }
  return samples.sort((a, b) => a - b)[Math.floor(SAMPLES / 2)];
}

function maxRelDiff(a, b) {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]) / Math.max(Math.abs(b[i]), 1e-3));
  return worst;
}

// One shape: RMSNorm and LayerNorm, ours against ORT's, interleaved sample by sample.
async function compareShape(gpu, rows, hidden) {
  const x = sampleData(rows * hidden, hidden, 4);
  const gain = sampleData(hidden, 2, 1);
  const bias = sampleData(hidden, 3, 1);
  const records = [];
  for (const [kernel, opType] of [["RMSNorm", "SimplifiedLayerNormalization"], ["LayerNorm", "LayerNormalization"]]) {
    const withBias = kernel === "LayerNorm";
    // Ours.
    const options = withBias ? { gain, bias, eps: EPS } : { gain, eps: EPS };
    const layer = kernel === "RMSNorm" ? gpu.rmsNormLayer(hidden, options) : gpu.layerNormLayer(hidden, options);
    const xt = gpu.tensor(x);
    const ours = async () => (await layer.forward(xt)).destroy();
    const ourY = await (await layer.forward(xt)).read();
    // ORT: GPU buffers on its own device.
    const session = await ort.InferenceSession.create(model(opType, rows, hidden, withBias), {
      executionProviders: ["webgpu"],
      preferredOutputLocation: "gpu-buffer",
      // Session creation fails if any node would run on the CPU: GPU kernels against GPU
      // kernels, or no comparison.
      extra: { session: { disable_cpu_ep_fallback: "1" } },
    });
    const device = await ort.env.webgpu.device;
    const upload = (values, dims) => {
      const buffer = device.createBuffer({
        size: values.byteLength,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
      });
      device.queue.writeBuffer(buffer, 0, values);
      return ort.Tensor.fromGpuBuffer(buffer, { dataType: "float32", dims });
    };
    const feeds = { X: upload(x, [rows, hidden]), S: upload(gain, [hidden]) };
    if (withBias) feeds.B = upload(bias, [hidden]);
    const theirs = async () => (await session.run(feeds)).Y.dispose();
    const theirY = await (await session.run(feeds)).Y.getData(true);
    const diff = maxRelDiff(ourY, theirY);
    if (!(diff < 1e-3)) throw new Error(`${kernel} ${rows} x ${hidden}: ORT and wgpu-rmsnorm differ by ${diff}`);
    // Interleaved: a slow spell slows both.
    const ourMs = [], theirMs = [];
    for (let round = 0; round < 3; round++) {
      ourMs.push(await perCall(ours, gpu.device));
      theirMs.push(await perCall(theirs, device));
    }
    const median = (v) => v.sort((a, b) => a - b)[1];
    records.push({ rows, hidden, kernel, oursMs: median(ourMs), ortMs: median(theirMs), maxRelDiff: diff });
    xt.destroy();
    layer.destroy();
    Object.values(feeds).forEach((t) => t.dispose());
    await session.release();
  }
  return records;
}

export async function compare(shapes) {
  ort.env.wasm.numThreads = 1; // no SharedArrayBuffer needed (no COOP/COEP headers)
  ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
  await init();
  const gpu = await Normalizer.create();
  const records = [];
  for (const [rows, hidden] of shapes) records.push(...(await compareShape(gpu, rows, hidden)));
  return { adapter: gpu.adapterInfo(), ortVersion: ort.env.versions.web, records };
}
