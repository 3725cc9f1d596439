import { chromium } from "playwright-core";
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true,
  args: ["--no-sandbox","--enable-unsafe-webgpu","--enable-features=Vulkan","--disable-background-networking"] });
const page = await browser.newPage();
page.on("console", (m) => console.log("console:", m.text()));
await page.goto("http://127.0.0.1:8765/");
const out = await page.evaluate(async () => {
  const m = await import("./pkg/wgpu_rmsnorm.js");
  await m.default();
  const res = [];
  for (const wg of [4, 16, 64, 256]) {
    const n = await m.Normalizer.create({ reduction: "tree", workgroupSize: wg });
    for (const [rows, hidden] of [[1024, 4096], [16384, 64]]) {
      const x = m.sampleData(rows * hidden, 1, 4);
      let t = [];
      for (let i = 0; i < 3; i++) { await n.rmsNorm(x, hidden); t.push(n.lastGpuTimeMs()); }
      res.push(`wg=${wg} ${rows}x${hidden}: ${t.map(v => v.toFixed(1)).join(", ")} ms`);
    }
  }
  return res;
});
console.log(out.join("\n"));
await browser.close();
