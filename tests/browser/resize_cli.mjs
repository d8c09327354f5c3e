// Runs app/resize.js on raw RGBA images for tests/test_app_resize.py (node only, no browser).
//   node tests/browser/resize_cli.mjs CASES.json IN.bin OUT.bin
// CASES.json: [{"w", "h", "th", "tw", "offset"}] (offset of the w*h*4 RGBA bytes in IN.bin);
// OUT.bin: each case's th*tw*3 RGB bytes, in order.
import { readFileSync, writeFileSync } from "node:fs";
import { resolve, dirname } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const { resizeToModel } = await import(pathToFileURL(resolve(here, "../../app/resize.js")).href);

const [casesPath, inPath, outPath] = process.argv.slice(2);
const cases = JSON.parse(readFileSync(casesPath, "utf8"));
const input = readFileSync(inPath);
const parts = [];
for (const c of cases) {
  const rgba = new Uint8Array(input.buffer, input.byteOffset + c.offset, c.w * c.h * 4);
  parts.push(resizeToModel(rgba, c.w, c.h, c.th, c.tw).rgb);
}
writeFileSync(outPath, Buffer.concat(parts.map((p) => Buffer.from(p.buffer, p.byteOffset, p.length))));
