// tinyconv's browser demo: decode an image, apply the resize policy (resize.js), run model.onnx
// with ONNX Runtime Web (wasm backend, files served locally), show the attributes.
//
// URL parameters (for measurements; the defaults are what users get):
//   ?model=URL          another model.onnx (default: model/model.onnx, served by `python -m tinyconv.app`)
//   ?resize=canvas-high | canvas-medium | canvas-low
//                       crop and scale with the browser's drawImage instead of the Pillow port
//                       (imageSmoothingQuality as named), to measure what that would cost
//   ?composite=canvas   composite alpha on white with the canvas instead of Pillow's arithmetic
import { compositeOnWhite, cropBox, resizeToModel } from "./resize.js";

const params = new URLSearchParams(location.search);
const MODEL_URL = params.get("model") || "model/model.onnx";
const RESIZE = /^canvas-(high|medium|low)$/.test(params.get("resize") || "") ? params.get("resize") : "pillow";
const COMPOSITE = params.get("composite") === "canvas" ? "canvas" : "pillow";

const $ = (id) => document.getElementById(id);
const app = { session: null, meta: null, run: 0, lastInput: null, lastBox: null, lastProbabilities: null };
window.tinyconvApp = app;  // read by tests/browser/drive_app.mjs

// --- the model and its metadata -------------------------------------------------------------

/** ModelProto.metadata_props (field 14: StringStringEntryProto {key = 1, value = 2}) -> object.
 *  ONNX Runtime Web does not expose custom metadata, and a protobuf walk this small needs no library. */
export function onnxMetadata(bytes) {
  let pos = 0;
  const varint = (end) => {
    let v = 0, mul = 1, b;
    do {
      if (pos >= end) throw new Error("truncated varint");
      b = bytes[pos++];
      v += (b & 0x7f) * mul;
      mul *= 128;
    } while (b & 0x80);
    return v;
  };
  const fields = (start, end, visit) => {
    pos = start;
    while (pos < end) {
      const tag = varint(end), field = Math.floor(tag / 8), wire = tag % 8;
      if (wire === 0) varint(end);
      else if (wire === 1) pos += 8;
      else if (wire === 5) pos += 4;
      else if (wire === 2) {
        const len = varint(end), at = pos;
        pos += len;
        const after = pos;
        visit(field, at, len);
        pos = after;
      } else throw new Error(`unsupported protobuf wire type ${wire}`);
    }
  };
  const text = new TextDecoder();
  const meta = {};
  fields(0, bytes.length, (field, at, len) => {
    if (field !== 14) return;
    let key = null, value = "";
    fields(at, at + len, (f, a, l) => {
      if (f === 1) key = text.decode(bytes.subarray(a, a + l));
      if (f === 2) value = text.decode(bytes.subarray(a, a + l));
    });
    if (key !== null) meta[key] = value;
  });
  return meta;
}

function parseJSON(s, fallback) {
  try { return JSON.parse(s); } catch { return fallback; }
}

async function loadModel() {
  const status = $("model-status");
  try {
    if (typeof ort === "undefined") {
      throw new Error("ONNX Runtime Web did not load (ort/ort.wasm.min.js): run `npm ci` in app/ " +
                      "and serve the page with `python -m tinyconv.app`");
    }
    ort.env.wasm.wasmPaths = new URL("ort/", location.href).href;  // local files, never a CDN
    ort.env.wasm.numThreads = 1;  // no SharedArrayBuffer / cross-origin isolation needed
    const resp = await fetch(MODEL_URL, { cache: "no-store" });
    if (!resp.ok) throw new Error(`${MODEL_URL}: HTTP ${resp.status}`);
    const bytes = new Uint8Array(await resp.arrayBuffer());
    let props = onnxMetadata(bytes);
    if (!props.attributes || !props.image_size) {  // older exports: export.json beside the model
      const side = await fetch(new URL("export.json", new URL(MODEL_URL, location.href)), { cache: "no-store" });
      if (side.ok) props = Object.fromEntries(Object.entries((await side.json()).metadata || {})
        .map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)]));
    }
    const attributes = parseJSON(props.attributes, null), size = parseJSON(props.image_size, null);
    if (!Array.isArray(attributes) || !Array.isArray(size)) {
      throw new Error(`${MODEL_URL} was not exported by tinyconv (no attributes / image_size metadata)`);
    }
    app.meta = { attributes, H: size[0], W: size[1], synthetic: parseJSON(props.synthetic, false) === true,
                 dataSource: props.data_source || "", policy: props.resize_policy || "", props };
    app.session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
    showModel();
    status.textContent = "Model ready: pick an image.";
    status.dataset.state = "ready";
  } catch (err) {
    status.textContent = `Cannot load the model: ${err.message || err}`;
    status.dataset.state = "error";
  }
}

function showModel() {
  const m = app.meta;
  $("synthetic-warning").hidden = !m.synthetic;
  document.body.dataset.synthetic = String(m.synthetic);
  const source = m.synthetic ? "tinyconv's synthetic faces" : (m.dataSource || "CelebA");
  $("model-info").textContent = `Model: ${m.attributes.join(", ")} · input ${m.H}×${m.W} (H×W, as tinyconv writes sizes) · trained on ${source}` +
    (m.props.schedule ? ` · schedule ${parseJSON(m.props.schedule, m.props.schedule)}` : "");
  $("policy").textContent = RESIZE === "pillow"
    ? `Resize policy (same pixels as predict.py): ${m.policy || "centre crop to 178:218, Pillow BILINEAR"}`
    : `MEASUREMENT MODE: the browser's drawImage (imageSmoothingQuality ${RESIZE.slice(7)}) instead of ` +
      "the project's resize policy; results differ from predict.py.";
  const input = $("model-input");
  input.width = m.W;
  input.height = m.H;
}

// --- image -> model input --------------------------------------------------------------------

async function decode(source) {
  // Pixels as stored: no colour-space conversion (Pillow does none). EXIF orientation is applied
  // by the browser (there is no way to turn it off); see docs/app.md.
  const bmp = await createImageBitmap(source, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = $("original");
  canvas.width = bmp.width;
  canvas.height = bmp.height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingEnabled = false;  // 1:1 copy
  ctx.clearRect(0, 0, bmp.width, bmp.height);
  if (COMPOSITE === "canvas") {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, bmp.width, bmp.height);
  }
  ctx.drawImage(bmp, 0, 0);
  const rgba = ctx.getImageData(0, 0, bmp.width, bmp.height).data;
  if (COMPOSITE !== "canvas") {  // show the image as the model gets it: on white
    ctx.globalCompositeOperation = "destination-over";
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, bmp.width, bmp.height);
    ctx.globalCompositeOperation = "source-over";
  }
  return { bmp, rgba, w: bmp.width, h: bmp.height };
}

function canvasResize(img, H, W, quality) {
  // What a naive page does: drawImage the crop box straight onto a W x H canvas.
  const box = img.w === W && img.h === H ? [0, 0, W, H] : cropBox(img.w, img.h, H, W);
  const c = document.createElement("canvas");
  c.width = W;
  c.height = H;
  const ctx = c.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, W, H);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = quality;
  ctx.drawImage(img.bmp, box[0], box[1], box[2] - box[0], box[3] - box[1], 0, 0, W, H);
  const rgba = ctx.getImageData(0, 0, W, H).data;
  return { rgb: compositeOnWhite(rgba), box };
}

function toModelInput(img) {
  const { H, W } = app.meta;
  if (RESIZE === "pillow") return resizeToModel(img.rgba, img.w, img.h, H, W);
  return canvasResize(img, H, W, RESIZE.slice(7));
}

// --- show ------------------------------------------------------------------------------------

function showInput(rgb, box, img) {
  const { H, W } = app.meta;
  const ctx = $("model-input").getContext("2d");
  const out = ctx.createImageData(W, H);
  for (let i = 0; i < W * H; i++) {
    out.data[i * 4] = rgb[i * 3];
    out.data[i * 4 + 1] = rgb[i * 3 + 1];
    out.data[i * 4 + 2] = rgb[i * 3 + 2];
    out.data[i * 4 + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
  $("views").hidden = false;
  // outline of the crop box over the displayed original (its CSS size may be scaled)
  const shown = $("original").getBoundingClientRect();
  const s = shown.width / img.w;
  Object.assign($("crop-outline").style, {
    left: `${box[0] * s}px`, top: `${box[1] * s}px`,
    width: `${(box[2] - box[0]) * s}px`, height: `${(box[3] - box[1]) * s}px`,
  });
  $("original-caption").textContent = `Your image, ${img.h}×${img.w} (H×W); the outline is the centre crop ` +
    `${box[3] - box[1]}×${box[2] - box[0]} at (x ${box[0]}, y ${box[1]})`;
  $("input-caption").textContent = `What the model saw: ${H}×${W} (H×W)` +
    (RESIZE === "pillow" ? " (Pillow's BILINEAR, as predict.py)" : ` (canvas drawImage, ${RESIZE.slice(7)})`);
}

function showResults(probs, name, ms) {
  const ul = $("bars");
  ul.replaceChildren();
  app.meta.attributes.forEach((attr, k) => {
    const p = probs[k];
    const li = document.createElement("li");
    li.dataset.attribute = attr;
    li.dataset.probability = String(p);
    li.className = p >= 0.5 ? "yes" : "no";
    const label = document.createElement("span");
    label.textContent = attr.replaceAll("_", " ");
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    bar.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = `${(100 * p).toFixed(1)}%`;
    li.append(label, bar, pct);
    ul.append(li);
  });
  $("result-note").className = "";
  $("result-note").textContent = `${name}: inference ${ms.toFixed(1)} ms in WebAssembly` +
    (app.meta.synthetic ? " · synthetic-data model: not a statement about this face" : "");
}

async function predict(source, name) {
  const results = $("results");
  if (!app.session) return;
  results.dataset.state = "running";
  try {
    const img = await decode(source);
    const { rgb, box } = toModelInput(img);
    const { H, W } = app.meta;
    const tensor = new ort.Tensor("uint8", rgb, [1, H, W, 3]);
    const t0 = performance.now();
    const out = await app.session.run({ image: tensor });
    const ms = performance.now() - t0;
    const probs = Array.from(out.probabilities.data);
    app.lastInput = rgb;
    app.lastBox = box;
    app.lastProbabilities = probs;
    showInput(rgb, box, img);
    showResults(probs, name, ms);
    results.dataset.image = name;
    results.dataset.resize = RESIZE;
    results.dataset.probabilities = JSON.stringify(Object.fromEntries(app.meta.attributes.map((a, k) => [a, probs[k]])));
    results.dataset.state = "done";
  } catch (err) {
    $("bars").replaceChildren();
    $("result-note").className = "error";
    $("result-note").textContent = `${name}: ${err.message || err} (is it an image this browser can decode?)`;
    results.dataset.image = name;
    results.dataset.state = "error";
  } finally {
    results.dataset.run = String(++app.run);
  }
}

// --- input: file, drop, camera ---------------------------------------------------------------

function wire() {
  const input = $("file-input"), zone = $("drop-zone");
  input.addEventListener("change", () => {
    if (input.files.length) predict(input.files[0], input.files[0].name);
    input.value = "";  // the same file chosen twice still fires "change"
  });
  for (const ev of ["dragenter", "dragover"]) {
    zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    zone.addEventListener(ev, () => zone.classList.remove("over"));
  }
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer.files[0];
    if (file) predict(file, file.name);
  });
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => e.preventDefault());  // a missed drop must not navigate away

  const start = $("camera-start"), shoot = $("camera-shoot"), video = $("camera-video");
  if (!navigator.mediaDevices?.getUserMedia) {
    start.disabled = true;
    start.title = "This browser (or an insecure origin) gives no camera access";
  }
  start.addEventListener("click", async () => {
    try {
      video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "user" } });
      await video.play();
      video.hidden = false;
      shoot.hidden = false;
    } catch (err) {
      $("result-note").className = "error";
      $("result-note").textContent = `No camera: ${err.message || err}`;
    }
  });
  shoot.addEventListener("click", () => {
    // a full-resolution frame goes through the same policy as a file
    predict(video, `camera ${video.videoWidth}×${video.videoHeight}`);
  });
}

wire();
loadModel();
