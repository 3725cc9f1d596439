// Runs page.mjs in headless Chromium (SwiftShader WebGPU, as the e2e tests do) and prints the
// table: per shape, RMSNorm and LayerNorm, wgpu-rmsnorm's time per call against ONNX Runtime
// Web's. COMPARE_URL: the served folder (cargo xtask bench-browser sets it); JSON_OUT: where to
// write the records (optional).
import { writeFileSync } from "node:fs";
import { chromium } from "../../tests/e2e/node_modules/playwright-core/index.mjs";

const shapes = JSON.parse(process.env.SHAPES ?? "[[64,4096],[1024,4096],[4096,1024],[4096,4096],[16384,1024],[65536,128]]");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu-sandbox", "--disable-dev-shm-usage", "--enable-unsafe-webgpu",
    "--enable-features=Vulkan", "--use-angle=swiftshader"],
});
try {
  const page = await browser.newPage();
  page.on("console", (m) => { if (m.type() === "error") console.error(`page: ${m.text()}`); });
  await page.goto(process.env.COMPARE_URL);
  await page.waitForSelector("body[data-ready=true]");
  const result = await page.evaluate((s) => window.compare(s), shapes);
  const a = result.adapter;
  console.log(`adapter: ${a.vendor} ${a.architecture} (${a.backend}); onnxruntime-web ${result.ortVersion}; ` +
    "ms per call on GPU-resident tensors, wall clock, median of 3 rounds of 5 samples of >= 200 ms");
  console.log("  rows x hidden   kernel      wgpu-rmsnorm ms   ORT Web ms   ORT / ours   max rel diff");
  for (const r of result.records) {
    console.log(`${String(r.rows).padStart(6)} x ${String(r.hidden).padEnd(8)} ${r.kernel.padEnd(10)} ` +
      `${r.oursMs.toFixed(3).padStart(15)} ${r.ortMs.toFixed(3).padStart(12)} ${(r.ortMs / r.oursMs).toFixed(2).padStart(12)} ` +
      `${r.maxRelDiff.toExponential(1).padStart(14)}`);
  }
  if (process.env.JSON_OUT) writeFileSync(process.env.JSON_OUT, JSON.stringify(result, null, 1));
} finally {
  await browser.close();
}
