// The demo page: RMSNorm and pRMSNorm on this browser's WebGPU through wgpu-rmsnorm's
// wasm build, each result checked against the f64 reference (also from the wasm build).
import init, {
  Normalizer,
  referenceRmsNorm,
  referenceLayerNorm,
  referenceRmsNormBackward,
  referenceLayerNormBackward,
  compareGradient,
  compareToReference,
  sampleData,
  toDType,
} from "./wgpu-rmsnorm.js";

const MAX_VALUES = 1 << 24; // 64 MiB of f32 per tensor keeps the tab responsive
const SWEEP_VALUES = 1 << 20;
const SWEEP_HIDDEN = [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384];
const CALLS_PER_TIMING = 3;
// Shapes of the benchmark panel: those of the native benchmark that keep a software
// adapter's tab responsive (at most 4M values).
const BENCH_SHAPES = [[1, 4096], [64, 4096], [1024, 4096], [4096, 1024], [16384, 128]];
// Shapes of the element types and residual table: small, and 16 MiB of f32.
const FORMAT_SHAPES = [[64, 4096], [1024, 4096]];

const $ = (id) => document.getElementById(id);
const setState = (state) => { document.body.dataset.state = state; };

function setStatus(text, kind = "") {
  const status = $("status");
  status.textContent = text;
  status.className = kind;
}

function showNoWebGpu(detail) {
  $("adapter").textContent = "No WebGPU adapter.";
  $("no-webgpu-detail").textContent = detail;
  $("no-webgpu").hidden = false;
  setState("no-webgpu");
}

// The options of one kernel call from the form.
function readForm() {
  const rows = Number($("rows").value);
  const hidden = Number($("hidden").value);
  const p = Number($("p").value);
  const eps = Number($("eps").value);
  const problems = [];
  if (!Number.isInteger(rows) || rows < 1) problems.push("rows must be a whole number >= 1");
  if (!Number.isInteger(hidden) || hidden < 1) problems.push("hidden must be a whole number >= 1");
  if (!(p > 0 && p <= 1)) problems.push("p must be in (0, 1]");
  if (!(eps >= 0) || !Number.isFinite(eps)) problems.push("eps must be a finite number >= 0");
  if (rows * hidden > MAX_VALUES) {
    problems.push(`rows × hidden = ${fmt(rows * hidden)} is more than this page allows (${fmt(MAX_VALUES)})`);
  }
  return {
    rows, hidden, p, problems,
    eps, epsMode: $("eps-mode").value,
    gain: $("gain").checked, gainOffset: $("gain-offset").checked, bias: $("bias").checked,
    dtype: $("dtype").value, weightDtype: $("weight-dtype").value || $("dtype").value,
    residual: $("residual").checked,
  };
}

// Median GPU time (ms) of a few identical calls and the last output; wall clock where the
// adapter has no timestamps (then upload and readback are included).
async function timed(call, normalizer) {
  const times = [];
  let y;
  for (let i = 0; i < CALLS_PER_TIMING; i++) {
    const start = performance.now();
    y = await call();
    times.push(normalizer.lastGpuTimeMs() ?? performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return { y, ms: times[Math.floor(times.length / 2)] };
}

const BYTES = { f32: 4, f16: 2, bf16: 2 };
// Bytes moved: x read and y written, with the residual r read and h written too.
const gbps = (values, ms, dtype = "f32", residual = false) =>
  ((residual ? 4 : 2) * values * BYTES[dtype]) / (ms * 1e-3) / 1e9;

// Whether two tensors of the same type hold the same bits.
const sameBits = (a, b) => a.length === b.length &&
  new Uint8Array(a.buffer, a.byteOffset, a.byteLength)
    .every((v, i) => v === new Uint8Array(b.buffer, b.byteOffset, b.byteLength)[i]);

function resultRow(cells, pass) {
  const tr = tableRow(cells);
  const check = document.createElement("td");
  check.className = pass ? "pass" : "fail";
  check.textContent = pass ? "✓ pass" : "✗ FAIL";
  tr.append(check);
  tr.dataset.pass = String(pass);
  return tr;
}

// The three kernels of the form's options: RMSNorm, pRMSNorm and LayerNorm, each with its
// call and its f64 reference (with the residual: of x + r, and the sum h = x + r expected).
function kernelsFor(normalizer, form, x, r) {
  const { hidden, dtype } = form;
  const options = { eps: form.eps, epsMode: form.epsMode, dtype, weightDtype: form.weightDtype };
  if (form.gain) {
    options.gain = toDType(sampleData(hidden, 2, 1), form.weightDtype);
    options.gainOffset = form.gainOffset;
  }
  if (form.bias) options.bias = toDType(sampleData(hidden, 3, 1), form.weightDtype);
  // LayerNorm keeps eps inside the root whatever the eps mode.
  const { epsMode, ...layerOptions } = options;
  const partial = { ...options, p: form.p };
  const kernel = (name, k, plain, fused, reference, backward, backwardReference, opts) => ({
    name,
    k,
    call: r ? () => fused(x, r, hidden, opts) : async () => ({ output: await plain(x, hidden, opts) }),
    reference: () => reference(x, hidden, opts, r),
    // The backward at the forward's input (h = x + r with the residual, whose gradient
    // gradSum adds to dx), for the gradient dy of its output.
    backward: (input, dy, gradSum) => backward(input, dy, hidden, opts, gradSum),
    backwardReference: (input, dy, gradSum) => backwardReference(input, dy, hidden, opts, gradSum),
  });
  const rmsBackward = (...a) => normalizer.rmsNormBackward(...a);
  return [
    kernel("RMSNorm", hidden, (...a) => normalizer.rmsNorm(...a), (...a) => normalizer.rmsNormResidual(...a),
      referenceRmsNorm, rmsBackward, referenceRmsNormBackward, options),
    kernel("pRMSNorm", Math.min(hidden, Math.max(1, Math.ceil(hidden * form.p))),
      (...a) => normalizer.pRmsNorm(...a), (...a) => normalizer.rmsNormResidual(...a), referenceRmsNorm,
      rmsBackward, referenceRmsNormBackward, partial),
    kernel("LayerNorm", hidden, (...a) => normalizer.layerNorm(...a),
      (...a) => normalizer.layerNormResidual(...a), referenceLayerNorm,
      (...a) => normalizer.layerNormBackward(...a), referenceLayerNormBackward, layerOptions),
  ];
}

// The backward of one kernel at the forward's input, checked norm-wise against the f64
// reference (dx per row, dgain and dbias per column): a row of the backward table.
async function runBackward(normalizer, form, kernel, input, dy, gradSum) {
  const { rows, hidden, dtype } = form;
  const { y, ms } = await timed(() => kernel.backward(input, dy, gradSum), normalizer);
  const expected = kernel.backwardReference(input, dy, gradSum);
  const checks = [
    compareGradient(y.gradInput, expected.gradInput, expected.gradInputScale, hidden, dtype),
    ...[["gradGain", "gradGainScale"], ["gradBias", "gradBiasScale"]].map(([key, scale]) =>
      y[key] ? compareGradient(y[key], expected[key], expected[scale], 1) : undefined),
  ];
  const cell = (check) => check ? check.errOverScale.toExponential(2) : "—";
  // Bytes moved: x, dy read and dx written (with gradSum read too).
  const tensors = gradSum ? 4 : 3;
  return resultRow([
    `${kernel.name} backward` + (gradSum ? " + residual" : ""),
    dtype === form.weightDtype ? dtype : `${dtype} (weights ${form.weightDtype})`,
    String(kernel.k),
    ms.toFixed(3),
    ((tensors * rows * hidden * BYTES[dtype]) / (ms * 1e-3) / 1e9).toFixed(2),
    ...checks.map(cell),
  ], checks.every((c) => !c || c.pass));
}

async function runKernels(normalizer, form) {
  const { rows, hidden, dtype } = form;
  const values = rows * hidden;
  const x = toDType(sampleData(values, 1, 4), dtype);
  const r = form.residual ? toDType(sampleData(values, 4, 2), dtype) : undefined;
  const body = $("results").querySelector("tbody");
  body.replaceChildren();
  const backwardBody = $("backward-results").querySelector("tbody");
  backwardBody.replaceChildren();
  const dy = toDType(sampleData(values, 5, 1), dtype);
  const gradSum = r ? toDType(sampleData(values, 6, 1), dtype) : undefined;
  for (const kernel of kernelsFor(normalizer, form, x, r)) {
    setStatus(`Running ${kernel.name} on ${fmt(rows)} × ${fmt(hidden)} ${dtype}…`, "busy");
    const { y, ms } = await timed(kernel.call, normalizer);
    const error = compareToReference(y.output, kernel.reference(), dtype);
    // The sum from x and r as stored (both already of the dtype), added in f32 and rounded.
    const sumOk = !r || sameBits(y.sum, sumOf(x, r, dtype));
    body.append(resultRow([
      kernel.name + (r ? " + residual" : ""),
      dtype === form.weightDtype ? dtype : `${dtype} (weights ${form.weightDtype})`,
      String(kernel.k),
      ms.toFixed(3),
      gbps(values, ms, dtype, form.residual).toFixed(2),
      error.maxAbs.toExponential(2),
      error.maxRel.toExponential(2),
      error.maxUlps.toFixed(2),
    ], error.pass && sumOk));
    setStatus(`Running ${kernel.name} backward on ${fmt(rows)} × ${fmt(hidden)} ${dtype}…`, "busy");
    backwardBody.append(await runBackward(normalizer, form, kernel, r ? y.sum : x, dy, gradSum));
  }
}

// h = x + r as the kernels store it: the stored values widened, added in f32, rounded once.
function sumOf(x, r, dtype) {
  const widen = (t) => dtype === "f32" ? t : Float32Array.from(t, (bits) => widenBits(bits, dtype));
  const a = widen(x), b = widen(r);
  return toDType(Float32Array.from(a, (v, i) => Math.fround(v + b[i])), dtype);
}

// One f16 or bf16 element's bits as a number (exact).
function widenBits(bits, dtype) {
  if (dtype === "bf16") return new Float32Array(new Uint32Array([bits << 16]).buffer)[0];
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 31) return mantissa ? NaN : sign * Infinity;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

// Numbers for people: thousands separators, and at most 3 significant digits for fractions.
const fmt = (v) => Number.isInteger(v) ? v.toLocaleString("en-US") : Number(v.toPrecision(3)).toLocaleString("en-US");

// Round ticks (1-2-5 steps) covering [lo, hi], about `count` of them.
function niceTicks(lo, hi, count = 5) {
  const raw = (hi - lo) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const ticks = [];
  for (let v = Math.floor(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    ticks.push(Number(v.toPrecision(12)));
  }
  if (ticks[ticks.length - 1] < hi) ticks.push(Number((ticks[ticks.length - 1] + step).toPrecision(12)));
  return ticks;
}

const charts = new Map();
// Charts are drawn in CSS pixels at their box's width, and again when it changes.
const resized = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const draw = charts.get(entry.target);
    if (draw && Math.abs(entry.contentRect.width - (draw.width ?? 0)) > 1) draw();
  }
});

// A line chart in SVG: series = [{ name, color, points: [[x, y], ...] }]; with no series, the
// axes and `placeholder` (what a run will draw).
function lineChart(container, series, options) {
  const draw = () => {
    draw.width = container.clientWidth;
    container.replaceChildren(drawChart(Math.max(280, container.clientWidth), series, options));
  };
  if (!charts.has(container)) resized.observe(container);
  charts.set(container, draw);
  draw();
}

function drawChart(W, series, { xLabel, yLabel, logX = false, xTicks, zeroLine = false, placeholder }) {
  const narrow = W < 560;
  // The legend goes right of the plot on wide screens, below it on narrow ones.
  const legendRows = narrow ? series.length : 0;
  // Room right of the plot for the last x label (narrow) or the legend (wide); below it for
  // the x ticks, the x label and, narrow, the legend.
  const L = 58, R = narrow ? 30 : 180, T = 28, B = 46 + (legendRows ? 8 + legendRows * 18 : 0);
  const H = Math.round(Math.min(340, Math.max(240, W * 0.45))) + legendRows * 18;
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1]));
  const fx = logX ? Math.log2 : (v) => v;
  const allX = xs.length ? xs : xTicks ?? [0, 1];
  const [x0, x1] = [Math.min(...allX.map(fx)), Math.max(...allX.map(fx))];
  const yTicks = niceTicks(Math.min(0, ...ys), ys.length ? Math.max(...ys, 1e-9) : 1);
  const [y0, y1] = [yTicks[0], yTicks[yTicks.length - 1]];
  const px = (v) => L + ((fx(v) - x0) / (x1 - x0 || 1)) * (W - L - R);
  const py = (v) => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  const add = (tag, attrs, text) => {
    const el = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.append(el);
    return el;
  };
  for (const v of yTicks) {
    add("line", { x1: L, y1: py(v), x2: W - R, y2: py(v), class: "grid" });
    add("text", { x: L - 6, y: py(v) + 4, "text-anchor": "end" }, fmt(v));
  }
  if (zeroLine && y0 < 0) add("line", { x1: L, y1: py(0), x2: W - R, y2: py(0), class: "zero" });
  add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" });
  add("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" });
  const ticks = xTicks ?? niceTicks(x0, x1, narrow ? 4 : 8).filter((v) => v >= x0 && v <= x1);
  // Labels at least 48 px apart.
  const every = Math.max(1, Math.ceil((ticks.length * 48) / (W - L - R)));
  ticks.filter((_, i) => i % every === 0).forEach((v) => {
    add("line", { x1: px(v), y1: H - B, x2: px(v), y2: H - B + 4, class: "axis" });
    add("text", { x: px(v), y: H - B + 17, "text-anchor": "middle" }, fmt(v));
  });
  add("text", { x: (L + W - R) / 2, y: H - B + 36, "text-anchor": "middle" }, xLabel);
  add("text", { x: 4, y: T - 12 }, yLabel);
  if (!series.length && placeholder) {
    add("text", { x: (L + W - R) / 2, y: (T + H - B) / 2, "text-anchor": "middle", class: "placeholder" }, placeholder);
  }
  series.forEach((s, i) => {
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join("");
    add("path", { d, class: "series", stroke: s.color, "stroke-dasharray": s.dash ?? "" });
    const [lx, ly] = narrow ? [L, H - B + 50 + i * 18] : [W - R + 14, T + 4 + i * 20];
    add("rect", { x: lx, y: ly, width: 14, height: 4, fill: s.color });
    add("text", { x: lx + 20, y: ly + 6 }, s.name);
  });
  return svg;
}

const SWEEP_AXES = {
  xLabel: "hidden size (elements per row, log scale)", yLabel: "effective bandwidth, GB/s", logX: true,
  xTicks: SWEEP_HIDDEN,
  placeholder: "Run draws RMSNorm, pRMSNorm and LayerNorm here, hidden 64 to 16,384",
};

async function runSweep(normalizer, form) {
  const rms = [], prms = [], layer = [];
  for (const hidden of SWEEP_HIDDEN) {
    setStatus(`Sweep: hidden ${fmt(hidden)}…`, "busy");
    const x = sampleData(SWEEP_VALUES, hidden, 4);
    const a = await timed(() => normalizer.rmsNorm(x, hidden), normalizer);
    const b = await timed(() => normalizer.pRmsNorm(x, hidden, { p: form.p }), normalizer);
    const c = await timed(() => normalizer.layerNorm(x, hidden), normalizer);
    rms.push([hidden, gbps(SWEEP_VALUES, a.ms)]);
    prms.push([hidden, gbps(SWEEP_VALUES, b.ms)]);
    layer.push([hidden, gbps(SWEEP_VALUES, c.ms)]);
  }
  lineChart($("sweep"), [
    { name: "RMSNorm", color: "var(--rms)", points: rms },
    { name: `pRMSNorm p=${form.p}`, color: "var(--prms)", points: prms },
    { name: "LayerNorm", color: "var(--layer)", points: layer, dash: "6 3" },
  ], SWEEP_AXES);
}

const CHAIN_LAYERS = 8;

// The eight-layer chain, GPU-resident and through Float32Arrays: rows of #chain-results.
async function runChain(normalizer, form) {
  const { rows, hidden } = form;
  const values = rows * hidden;
  const x = sampleData(values, 11, 2);
  const r = sampleData(values, 12, 2);
  const gains = Array.from({ length: CHAIN_LAYERS }, (_, i) => sampleData(hidden, 20 + i, 1));
  const layers = gains.map((gain) => normalizer.rmsNormLayer(hidden, { gain }));
  const resident = async () => {
    let xt = normalizer.tensor(x), rt = normalizer.tensor(r);
    try {
      for (const layer of layers) {
        const { output, sum } = await layer.forwardResidual(xt, rt);
        xt.destroy(); rt.destroy();
        xt = output; rt = sum;
      }
      return await xt.read();
    } finally {
      xt.destroy(); rt.destroy();
    }
  };
  const typed = async () => {
    let xa = x, ra = r;
    for (const gain of gains) {
      ({ output: xa, sum: ra } = await normalizer.rmsNormResidual(xa, ra, hidden, { gain }));
    }
    return xa;
  };
  const median = async (chain) => {
    const times = [];
    let y;
    for (let i = 0; i < 3; i++) {
      const start = performance.now();
      y = await chain();
      times.push(performance.now() - start);
    }
    return { y, ms: times.sort((a, b) => a - b)[1] };
  };
  let onGpu, viaCpu;
  try {
    setStatus(`Chain of ${CHAIN_LAYERS} layers on GPU tensors, ${fmt(rows)} × ${fmt(hidden)}…`, "busy");
    onGpu = await median(resident);
    setStatus(`Chain of ${CHAIN_LAYERS} layers through Float32Arrays, ${fmt(rows)} × ${fmt(hidden)}…`, "busy");
    viaCpu = await median(typed);
  } finally {
    layers.forEach((layer) => layer.destroy());
  }
  const same = sameBits(onGpu.y, viaCpu.y);
  const body = $("chain-results").querySelector("tbody");
  body.replaceChildren(
    resultRow([`GPU-resident, ${fmt(rows)} × ${fmt(hidden)}`, onGpu.ms.toFixed(2),
      (onGpu.ms / CHAIN_LAYERS).toFixed(2), `${(viaCpu.ms / onGpu.ms).toFixed(2)}×`], same),
    resultRow([`Float32Arrays, ${fmt(rows)} × ${fmt(hidden)}`, viaCpu.ms.toFixed(2),
      (viaCpu.ms / CHAIN_LAYERS).toFixed(2), "1.00×"], same),
  );
  body.dataset.speedup = String(viaCpu.ms / onGpu.ms);
}

async function runBenchmark(normalizer) {
  const body = $("bench-results").querySelector("tbody");
  body.replaceChildren();
  const ratios = [];
  const backwardRatios = [];
  for (const [rows, hidden] of BENCH_SHAPES) {
    $("bench-status").textContent = `Measuring ${fmt(rows)} × ${fmt(hidden)}…`;
    $("bench-status").className = "busy";
    const records = await normalizer.benchmark(rows, hidden);
    for (const r of records) {
      body.append(tableRow([`${rows} x ${hidden}`, r.pass, r.kernel, r.p ?? "", r.variant,
        r.medianMs.toFixed(3), r.gbps.toFixed(2), r.solCopy.toFixed(2), r.solKernel.toFixed(2)]));
    }
    const find = (pass, kernel, variant = "") => records.find((r) =>
      r.pass === pass && r.kernel === kernel && r.p === null && r.variant.endsWith(variant));
    const ms = (kernel) => find("forward", kernel)?.medianMs;
    const sol = (kernel) =>
      find("backward", kernel, "recomputed stats").solKernel / find("forward", kernel).solKernel;
    ratios.push(`${rows} x ${hidden}: ${(ms("RMSNorm") / ms("LayerNorm")).toFixed(2)}`);
    backwardRatios.push(`${rows} x ${hidden}: RMSNorm ${sol("RMSNorm").toFixed(2)}, ` +
      `LayerNorm ${sol("LayerNorm").toFixed(2)}`);
  }
  await runFormatBenchmark(normalizer);
  $("bench-status").textContent = "Measuring round trips…";
  const trips = await normalizer.roundTrips();
  $("bench-summary").textContent = `RMSNorm / LayerNorm time: ${ratios.join("; ")}. ` +
    `Backward sol_kernel / forward sol_kernel: ${backwardRatios.join("; ")}. ` +
    `Round trip of one 1 x 4096 rmsNorm call: ${trips.callMs.toFixed(2)} ms; of an empty dispatch ` +
    `with readback: ${trips.emptyMs.toFixed(2)} ms.`;
  $("bench-status").textContent = "Done.";
  $("bench-status").className = "";
  $("bench-panel").dataset.done = "true";
}

function tableRow(cells) {
  const tr = document.createElement("tr");
  for (const text of cells) {
    const td = document.createElement("td");
    td.textContent = String(text);
    tr.append(td);
  }
  return tr;
}

async function runFormatBenchmark(normalizer) {
  const body = $("bench-formats").querySelector("tbody");
  body.replaceChildren();
  const notes = [];
  for (const [rows, hidden] of FORMAT_SHAPES) {
    $("bench-status").textContent = `Measuring element types and the residual add on ${rows} x ${hidden}…`;
    const records = await normalizer.benchmarkFormats(rows, hidden);
    for (const r of records) {
      body.append(tableRow([`${rows} x ${hidden}`, r.kernel, r.dtype, r.residual, r.variant,
        r.medianMs.toFixed(3), r.gbps.toFixed(2), r.solCopy.toFixed(2), r.solKernel.toFixed(2)]));
    }
    const find = (dtype, residual) =>
      records.find((r) => r.kernel === "RMSNorm" && r.dtype === dtype && r.residual === residual);
    for (const dtype of ["f32", "f16", "bf16"]) {
      const speedup = find(dtype, "unfused").medianMs / find(dtype, "fused").medianMs;
      const sol = find(dtype, "none").solKernel / find("f32", "none").solKernel;
      notes.push(`${rows} x ${hidden} ${dtype}: fused ${speedup.toFixed(2)}x the unfused, ` +
        `sol_kernel ${sol.toFixed(2)}x f32's`);
    }
  }
  $("bench-formats-summary").textContent = notes.join("; ") + ".";
}

async function runInvariance(normalizer) {
  const n = 64, a = 3, c = 1.5;
  const x = sampleData(n, 7, 2);
  const options = { eps: 0 };
  const y = await normalizer.rmsNorm(x, n, options);
  const ya = await normalizer.rmsNorm(x.map((v) => v * a), n, options);
  const yc = await normalizer.rmsNorm(x.map((v) => v + c), n, options);
  const points = (v) => Array.from(v, (value, i) => [i, value]);
  lineChart($("invariance"), [
    { name: "RMSNorm(x)", color: "var(--rms)", points: points(y) },
    { name: `RMSNorm(${a}·x)`, color: "var(--prms)", points: points(ya), dash: "5 4" },
    { name: `RMSNorm(x + ${c})`, color: "var(--layer)", points: points(yc) },
  ], { xLabel: "element index", yLabel: "output (unitless)", zeroLine: true });
  const maxDiff = (u, v) => u.reduce((m, value, i) => Math.max(m, Math.abs(value - v[i])), 0);
  const scaled = maxDiff(y, ya), shifted = maxDiff(y, yc);
  const summary = $("invariance-summary");
  summary.textContent = `max |RMSNorm(${a}·x) − RMSNorm(x)| = ${scaled.toExponential(2)} ` +
    `(invariant); max |RMSNorm(x + ${c}) − RMSNorm(x)| = ${shifted.toFixed(3)} (not invariant).`;
  summary.dataset.scaled = String(scaled);
  summary.dataset.shifted = String(shifted);
}

async function main() {
  lineChart($("sweep"), [], SWEEP_AXES);
  await init();
  if (!navigator.gpu) {
    showNoWebGpu("navigator.gpu is not defined in this browser.");
    return;
  }
  let normalizer;
  try {
    // Timestamp queries: the results table shows each call's GPU time.
    normalizer = await Normalizer.create({ timestamps: true });
  } catch (error) {
    showNoWebGpu(String(error.message ?? error));
    return;
  }
  const info = normalizer.adapterInfo();
  const name = info.name || [info.vendor, info.architecture].filter(Boolean).join(" ") || "unnamed adapter";
  $("adapter").textContent = `${name} (vendor ${info.vendor || "?"}, architecture ${info.architecture || "?"}, ` +
    `${info.backend}); features: ${info.features.join(", ") || "none"}; reduction: ${info.reduction}`;
  // The invariance plot is cheap (one row of 64): drawn at once, not only after Run.
  await runInvariance(normalizer);
  $("adapter").dataset.ready = "true";
  setState("ready");
  $("run").disabled = false;
  $("bench").disabled = false;

  $("bench").addEventListener("click", async () => {
    $("bench").disabled = true;
    try {
      await runBenchmark(normalizer);
    } catch (error) {
      $("bench-status").textContent = `Error: ${error.message ?? error}`;
      $("bench-status").className = "error";
    } finally {
      $("bench").disabled = false;
    }
  });

  $("controls").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = readForm();
    if (form.problems.length) {
      setStatus(form.problems.join("; "), "error");
      return;
    }
    $("run").disabled = true;
    setState("running");
    try {
      await runKernels(normalizer, form);
      await runChain(normalizer, form);
      await runInvariance(normalizer);
      await runSweep(normalizer, form);
      setStatus("Done.");
      setState("done");
    } catch (error) {
      setStatus(`Error: ${error.message ?? error}`, "error");
      setState("error");
    } finally {
      $("run").disabled = false;
    }
  });
}

main().catch((error) => {
  setStatus(`Could not start: ${error.message ?? error}`, "error");
  setState("error");
});
