// Drives the served page in headless Chromium (playwright-core from app/node_modules, Debian's
// /usr/bin/chromium) for tests/test_app.py. Prints one JSON document on stdout:
//   {"modes": {MODE: [{"image", "state", "probabilities", "input" (base64 RGB), "box", "note"}]},
//    "console": [...], "screenshot": PATH}
// Usage: node drive_app.mjs URL OUT_SCREENSHOT MODES(comma-separated) IMAGE...
//   MODES: pillow (the page's default) and/or canvas-high, canvas-medium, canvas-low, pillow+canvascomposite.
import { createRequire } from "node:module";
import { resolve, dirname, basename } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(resolve(here, "../../app/package.json"));
const { chromium } = require("playwright-core");

const [url, screenshot, modesArg, ...images] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const out = { modes: {}, console: [], screenshot: null };
try {
  const context = await browser.newContext({ viewport: { width: 1000, height: 900 } });
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") out.console.push(`${m.type()}: ${m.text()}`); });
  page.on("pageerror", (e) => out.console.push(`pageerror: ${e.message}`));
  // Nothing may come from anywhere but the local server.
  const origin = new URL(url).origin;
  page.on("request", (r) => { if (!r.url().startsWith(origin) && !r.url().startsWith("data:") && !r.url().startsWith("blob:")) out.console.push(`external request: ${r.url()}`); });
  for (const mode of modesArg.split(",")) {
    const q = mode === "pillow" ? "" : mode === "pillow+canvascomposite" ? "?composite=canvas" : `?resize=${mode}`;
    await page.goto(url + q);
    await page.waitForSelector('#model-status:is([data-state="ready"], [data-state="error"])', { timeout: 20000 });
    const status = await page.$eval("#model-status", (e) => [e.dataset.state, e.textContent]);
    if (status[0] !== "ready") throw new Error(`model did not load: ${status[1]}`);
    const rows = [];
    for (const [i, image] of images.entries()) {
      await page.setInputFiles("#file-input", image);
      await page.waitForFunction((n) => document.getElementById("results").dataset.run === String(n), i + 1,
                                 { timeout: 20000 });
      rows.push(await page.evaluate(() => {
        const r = document.getElementById("results"), app = window.tinyconvApp;
        const shown = [...document.querySelectorAll("#bars li")].map((li) => [li.dataset.attribute, Number(li.dataset.probability)]);
        let input = null;
        if (r.dataset.state === "done") {
          let s = "";
          for (let k = 0; k < app.lastInput.length; k += 0x8000) s += String.fromCharCode(...app.lastInput.subarray(k, k + 0x8000));
          input = btoa(s);
        }
        return { image: r.dataset.image, state: r.dataset.state, probabilities: Object.fromEntries(shown),
                 input, box: app.lastBox, note: document.getElementById("result-note").textContent,
                 synthetic: document.body.dataset.synthetic,
                 warning: !document.getElementById("synthetic-warning").hidden };
      }));
      if (mode === modesArg.split(",")[0] && basename(image) === basename(process.env.SCREENSHOT_OF || images[0])) {
        await page.screenshot({ path: screenshot, fullPage: true });
        out.screenshot = screenshot;
      }
    }
    out.modes[mode] = rows;
  }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out));
