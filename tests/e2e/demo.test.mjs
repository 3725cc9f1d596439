// The demo page, end to end, in Debian's Chromium driven by playwright-core.
// DEMO_URL: the page, served on 127.0.0.1 (cargo xtask test serves it and sets this).
// SCREENSHOT_DIR: where the screenshot goes (default: target/ of the repository).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const url = process.env.DEMO_URL;
const screenshots = process.env.SCREENSHOT_DIR ?? new URL("../../target/", import.meta.url).pathname;
const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const quietFlags = [
  "--no-sandbox", "--disable-gpu-sandbox", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
];
const webgpuFlags = ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-angle=swiftshader"];

assert.ok(url, "set DEMO_URL to the served demo page");
const browsers = [];
after(async () => Promise.all(browsers.map((b) => b.close())));

async function openPage(args) {
  const browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args });
  browsers.push(browser);
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const problems = [];
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console.error: ${m.text()}`); });
  page.on("pageerror", (e) => problems.push(`unhandled: ${e.message}`));
  await page.goto(url);
  return { page, problems };
}

test("the page computes, verifies and plots every kernel on WebGPU", { timeout: 900_000 }, async () => {
  const { page, problems } = await openPage([...quietFlags, ...webgpuFlags]);
  await page.waitForSelector("#adapter[data-ready=true]", { timeout: 60_000 });
  const adapter = await page.textContent("#adapter");
  console.log(`adapter line: ${adapter}`);
  assert.match(adapter, /BrowserWebGpu/);
  await page.fill("#rows", "1024");
  await page.fill("#hidden", "4096");
  await page.click("#run");
  await page.waitForSelector("body[data-state=done], body[data-state=error]", { timeout: 200_000 });
  assert.equal(await page.getAttribute("body", "data-state"), "done", await page.textContent("#status"));

  const rows = await page.$$eval("#results tbody tr", (trs) =>
    trs.map((tr) => ({ cells: [...tr.children].map((td) => td.textContent), pass: tr.dataset.pass })));
  console.log("results (1024 x 4096):");
  console.log("kernel | dtype | k | GPU ms | GB/s | max abs err | max rel err | max ulps | check");
  for (const row of rows) console.log(row.cells.join(" | "));
  assert.deepEqual(rows.map((r) => r.cells[0]), ["RMSNorm", "pRMSNorm", "LayerNorm"]);
  for (const row of rows) assert.equal(row.pass, "true", `${row.cells[0]} failed verification`);
  await checkBackward(page, "1024 x 4096", ["RMSNorm backward", "pRMSNorm backward", "LayerNorm backward"]);

  // The eight-layer chain on GPU tensors, against the same chain through Float32Arrays.
  const chain = await page.$$eval("#chain-results tbody tr", (trs) =>
    trs.map((tr) => ({ cells: [...tr.children].map((td) => td.textContent), pass: tr.dataset.pass })));
  console.log("chain of 8 (residual + RMSNorm), 1024 x 4096 f32: chain | ms | per layer ms | speed-up | same bits");
  for (const row of chain) console.log(row.cells.join(" | "));
  assert.equal(chain.length, 2);
  for (const row of chain) assert.equal(row.pass, "true", "the GPU-resident chain gives the typed-array chain's bits");
  const speedup = Number(await page.getAttribute("#chain-results tbody", "data-speedup"));
  assert.ok(speedup > 1, `the GPU-resident chain is ${speedup}x the typed-array chain`);


  // f16 and bf16 with the fused residual add, on odd rows (packed words shared by rows).
  for (const [dtype, weights] of [["f16", "f32"], ["bf16", ""]]) {
    await page.fill("#rows", "64");
    await page.fill("#hidden", "4097");
    await page.selectOption("#dtype", dtype);
    await page.selectOption("#weight-dtype", weights);
    await page.check("#residual");
    await page.click("#run");
    await page.waitForSelector("body[data-state=done], body[data-state=error]", { timeout: 200_000 });
    assert.equal(await page.getAttribute("body", "data-state"), "done", await page.textContent("#status"));
    const fused = await page.$$eval("#results tbody tr", (trs) =>
      trs.map((tr) => ({ cells: [...tr.children].map((td) => td.textContent), pass: tr.dataset.pass })));
    console.log(`results (64 x 4097 ${dtype}, residual):`);
    console.log("kernel | dtype | k | GPU ms | GB/s | max abs err | max rel err | max ulps | check");
    for (const row of fused) console.log(row.cells.join(" | "));
    assert.deepEqual(fused.map((r) => r.cells[0]),
      ["RMSNorm + residual", "pRMSNorm + residual", "LayerNorm + residual"]);
    for (const row of fused) {
      assert.equal(row.pass, "true", `${row.cells[0]} ${dtype} failed verification`);
      assert.ok(Number(row.cells[7]) <= 1, `${row.cells[0]} ${dtype}: ${row.cells[7]} ulps`);
    }
    await checkBackward(page, `64 x 4097 ${dtype}, residual`,
      ["RMSNorm backward + residual", "pRMSNorm backward + residual", "LayerNorm backward + residual"]);
  }
  await page.selectOption("#dtype", "f32");
  await page.selectOption("#weight-dtype", "");
  await page.uncheck("#residual");

  assert.equal(await page.locator("#sweep svg path.series").count(), 3, "sweep chart has every kernel");
  assert.equal(await page.locator("#invariance svg path.series").count(), 3);
  const scaled = Number(await page.getAttribute("#invariance-summary", "data-scaled"));
  const shifted = Number(await page.getAttribute("#invariance-summary", "data-shifted"));
  assert.ok(scaled < 1e-5, `scaling changed the output by ${scaled}`);
  assert.ok(shifted > 0.1, `shifting changed the output by only ${shifted}`);

  // The benchmark panel: the same measurements as cargo xtask bench.
  await page.click("#bench");
  await page.waitForSelector("#bench-panel[data-done=true], #bench-status.error", { timeout: 600_000 });
  assert.equal(await page.getAttribute("#bench-panel", "data-done"), "true", await page.textContent("#bench-status"));
  const bench = await page.$$eval("#bench-results tbody tr", (trs) =>
    trs.map((tr) => [...tr.children].map((td) => td.textContent).join(" | ")));
  console.log("benchmark panel: shape | pass | kernel | p | variant | ms | GB/s | sol_copy | sol_kernel");
  for (const line of bench) console.log(line);
  console.log(await page.textContent("#bench-summary"));
  assert.equal(bench.length, 5 * 11,
    "5 shapes x (2 copies, RMSNorm, 2 pRMSNorm, LayerNorm; backward: RMSNorm x 3, pRMSNorm, LayerNorm)");
  const formats = await page.$$eval("#bench-formats tbody tr", (trs) =>
    trs.map((tr) => [...tr.children].map((td) => td.textContent).join(" | ")));
  console.log("element types and the residual add: shape | kernel | dtype | residual | variant | ms | GB/s | sol_copy | sol_kernel");
  for (const line of formats) console.log(line);
  console.log(await page.textContent("#bench-formats-summary"));
  assert.equal(formats.length, 2 * 3 * 5, "2 shapes x 3 dtypes x (2 copies, RMSNorm, fused, unfused)");

  mkdirSync(screenshots, { recursive: true });
  const path = `${screenshots}/demo.png`;
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot: ${path}`);
  assert.deepEqual(problems, []);
});

// What a person sees: at phone width nothing is wider than the screen and chart text stays
// readable; screenshots at both widths.
for (const [name, width, height] of [["phone", 390, 844], ["desktop", 1200, 900]]) {
  test(`the page fits a ${name} screen (${width} px) with readable charts`, { timeout: 300_000 }, async () => {
    const { page, problems } = await openPage([...quietFlags, ...webgpuFlags]);
    await page.setViewportSize({ width, height });
    await page.waitForSelector("#adapter[data-ready=true]", { timeout: 60_000 });
    // The sweep chart says what it will show before any run; the invariance plot is drawn.
    assert.match(await page.textContent("#sweep svg"), /Run draws/);
    assert.equal(await page.locator("#invariance svg path.series").count(), 3);
    await page.fill("#rows", "64");
    await page.fill("#hidden", "1024");
    await page.click("#run");
    await page.waitForSelector("body[data-state=done], body[data-state=error]", { timeout: 200_000 });
    assert.equal(await page.getAttribute("body", "data-state"), "done", await page.textContent("#status"));
    const layout = await page.evaluate(() => {
      const texts = [...document.querySelectorAll(".chart svg text")];
      // Rendered size of each chart label: its font size times the SVG's scale on screen.
      const sizes = texts.map((t) => parseFloat(getComputedStyle(t).fontSize) * t.ownerSVGElement.getScreenCTM().a);
      return {
        scrollWidth: document.documentElement.scrollWidth,
        smallestText: Math.min(...sizes),
        labels: texts.length,
        yTicks: [...document.querySelectorAll("#sweep svg text[text-anchor=end]")].map((t) => t.textContent),
      };
    });
    console.log(`${name} (${width} px): scrollWidth ${layout.scrollWidth}, smallest chart text ` +
      `${layout.smallestText.toFixed(1)} px over ${layout.labels} labels, sweep y ticks ${layout.yTicks.join(" ")}`);
    assert.ok(layout.scrollWidth <= width, `the page is ${layout.scrollWidth} px wide`);
    assert.ok(layout.smallestText >= 10, `chart text ${layout.smallestText} px`);
    // Round ticks: every step between y labels is the same 1, 2 or 5 times a power of ten.
    const ticks = layout.yTicks.map((t) => Number(t.replaceAll(",", "")));
    const step = ticks[1] - ticks[0];
    assert.ok(ticks.every((v, i) => i === 0 || Math.abs(v - ticks[i - 1] - step) < step * 1e-6), String(ticks));
    assert.ok([1, 2, 5].includes(Math.round(step / 10 ** Math.floor(Math.log10(step)))), `step ${step}`);
    mkdirSync(screenshots, { recursive: true });
    const path = `${screenshots}/demo-${name}.png`;
    await page.screenshot({ path, fullPage: true });
    console.log(`screenshot: ${path}`);
    assert.deepEqual(problems, []);
  });
}

// The npm package as a user gets it: npm pack, installed into an empty folder, imported by a
// page there (cargo xtask test does the packing and serves that folder at PACKAGE_URL).
test("the packed npm package installs and runs in a page", { timeout: 120_000 }, async (t) => {
  const packageUrl = process.env.PACKAGE_URL;
  if (!packageUrl) {
    t.skip("PACKAGE_URL is not set (cargo xtask test sets it)");
    return;
  }
  const browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: [...quietFlags, ...webgpuFlags] });
  browsers.push(browser);
  const page = await browser.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`unhandled: ${e.message}`));
  await page.goto(packageUrl);
  await page.waitForSelector("body[data-pass]", { timeout: 60_000 });
  const text = await page.textContent("#result");
  console.log(`npm package page: ${text}`);
  assert.equal(await page.getAttribute("body", "data-pass"), "true", text);
  assert.deepEqual(problems, []);
});

// The backward table after a run: the expected kernels, every one verified.
async function checkBackward(page, what, names) {
  const rows = await page.$$eval("#backward-results tbody tr", (trs) =>
    trs.map((tr) => ({ cells: [...tr.children].map((td) => td.textContent), pass: tr.dataset.pass })));
  console.log(`backward (${what}):`);
  console.log("kernel | dtype | k | GPU ms | GB/s | dx err/scale | dgain err/scale | dbias err/scale | check");
  for (const row of rows) console.log(row.cells.join(" | "));
  assert.deepEqual(rows.map((r) => r.cells[0]), names);
  for (const row of rows) assert.equal(row.pass, "true", `${row.cells[0]} (${what}) failed verification`);
}

test("the page explains how to get WebGPU when the browser has none", { timeout: 60_000 }, async () => {
  const { page, problems } = await openPage([...quietFlags, "--disable-webgpu"]);
  await page.waitForSelector("body[data-state=no-webgpu]", { timeout: 30_000 });
  assert.ok(await page.isVisible("#no-webgpu"));
  const text = await page.textContent("#no-webgpu");
  assert.match(text, /--enable-unsafe-webgpu/);
  assert.match(text, /Chrome/);
  assert.equal(await page.isDisabled("#run"), true);
  assert.deepEqual(problems, []);
});

test("the API used before init() says what to do", { timeout: 60_000 }, async () => {
  const { page, problems } = await openPage([...quietFlags, ...webgpuFlags]);
  // A document of its own, so that the module is loaded fresh and not initialized.
  await page.goto(new URL("style.css", url).href);
  const messages = await page.evaluate(async () => {
    const api = await import("/wgpu-rmsnorm.js");
    const attempts = [
      () => api.Normalizer.create(),
      () => api.referenceRmsNorm(new Float32Array(8), 8),
      () => api.sampleData(8, 1, 1),
    ];
    const out = [];
    for (const attempt of attempts) {
      try {
        await attempt();
        out.push("no error");
      } catch (e) {
        out.push(e.message);
      }
    }
    await api.default();
    out.push(api.sampleData(4, 1, 1).length);
    return out;
  });
  console.log(`before init(): ${messages.slice(0, 3).join(" / ")}`);
  for (const m of messages.slice(0, 3)) assert.match(m, /before the module was loaded: await init\(\) first/);
  assert.equal(messages[3], 4, "after init() the same module works");
  // A CSS document links no icon, so Chromium asks for /favicon.ico, which is not served.
  assert.deepEqual(problems.filter((p) => !p.includes("404")), []);
});
