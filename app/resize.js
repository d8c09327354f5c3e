// tinyconv's resize policy in JavaScript: a port of tinyconv/data/resize.py and of the Pillow code
// it calls, so the page feeds the model the very pixels `predict.py` would.
//
//   RGBA pixels (w x h)  -> composite on white -> centre-crop to tw:th -> Pillow BILINEAR -> RGB (th x tw)
//
// Pillow's BILINEAR resize (src/libImaging/Resample.c) is a separable triangle filter whose support
// is scaled by the reduction factor (antialiasing), computed horizontally first with the
// intermediate rows rounded to 8 bits, then vertically. Its coefficients are normalised to sum 1
// in double precision, then turned into 22-bit fixed point (rounded half away from zero); each
// output is (sum + 2^21) >> 22 clipped to 0..255. All of that is integer or IEEE double arithmetic,
// which JavaScript reproduces exactly, so the output is bit-identical to Pillow's.
//
// A canvas's drawImage is not: Chromium's downscaling (bilinear/mipmaps/"high" = Lanczos-like)
// neither matches Pillow's filter nor its rounding; docs/app.md gives the measured difference.

const PRECISION_BITS = 32 - 8 - 2;  // 22, as in Pillow

/** The centre-crop box [left, top, right, bottom] for a w x h source and a th x tw target
 *  (tinyconv.data.resize.crop_box: crop size rounded half up, offsets floored). */
export function cropBox(w, h, th, tw) {
  let cw, ch;
  if (w * th > tw * h) {  // too wide: keep the full height
    cw = Math.min(w, Math.floor(h * tw / th + 0.5));
    ch = h;
  } else {                // too tall (or exact): keep the full width
    cw = w;
    ch = Math.min(h, Math.floor(w * th / tw + 0.5));
  }
  const left = Math.floor((w - cw) / 2), top = Math.floor((h - ch) / 2);
  return [left, top, left + cw, top + ch];
}

function triangle(x) {  // Pillow's bilinear_filter, support 1
  if (x < 0) x = -x;
  return x < 1 ? 1 - x : 0;
}

/** Pillow's precompute_coeffs + normalize_coeffs_8bpc for inSize -> outSize (box 0..inSize).
 *  Returns {ksize, bounds: Int32Array [xmin, count] per output, kk: Int32Array fixed-point taps}. */
export function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = 1.0 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  const ss = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5);  // C's (int) cast truncates
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const w = triangle((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0.0 ? k[x] / ww : k[x];
      // normalize_coeffs_8bpc: (int)(v * 2^22 +- 0.5), truncation toward zero
      kk[xx * ksize + x] = Math.trunc(v < 0 ? -0.5 + v * (1 << PRECISION_BITS) : 0.5 + v * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(s) {  // Pillow's clip8: s >> 22 (arithmetic shift) clamped to 0..255
  const v = s >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Pillow's Image.resize(..., BILINEAR) of an RGB image: Uint8Array (h, w, 3) -> (th, tw, 3). */
export function resizeBilinear(rgb, w, h, tw, th) {
  const needH = tw !== w, needV = th !== h;
  const vert = coefficients(h, th);
  let src = rgb, srcW = w, rowOffset = 0;
  let bv = vert.bounds;
  if (needH) {
    // Only the rows the vertical pass reads: [first, last) (ImagingResampleInner's ybox).
    const first = bv[0], last = bv[(th - 1) * 2] + bv[(th - 1) * 2 + 1];
    const hor = coefficients(w, tw);
    const rows = last - first;
    const tmp = new Uint8Array(rows * tw * 3);
    const half = 1 << (PRECISION_BITS - 1);
    for (let yy = 0; yy < rows; yy++) {
      const rowIn = (yy + first) * w * 3;
      for (let xx = 0; xx < tw; xx++) {
        const xmin = hor.bounds[xx * 2], xmax = hor.bounds[xx * 2 + 1], kOff = xx * hor.ksize;
        let s0 = half, s1 = half, s2 = half;
        for (let x = 0; x < xmax; x++) {
          const kx = hor.kk[kOff + x], p = rowIn + (x + xmin) * 3;
          s0 += rgb[p] * kx; s1 += rgb[p + 1] * kx; s2 += rgb[p + 2] * kx;
        }
        const q = (yy * tw + xx) * 3;
        tmp[q] = clip8(s0); tmp[q + 1] = clip8(s1); tmp[q + 2] = clip8(s2);
      }
    }
    src = tmp; srcW = tw; rowOffset = first;
  }
  if (!needV) {
    return src === rgb ? new Uint8Array(rgb) : src;  // (th == rows here: no vertical change)
  }
  const out = new Uint8Array(th * srcW * 3);
  const half = 1 << (PRECISION_BITS - 1);
  for (let yy = 0; yy < th; yy++) {
    const ymin = bv[yy * 2] - rowOffset, ymax = bv[yy * 2 + 1], kOff = yy * vert.ksize;
    for (let xx = 0; xx < srcW; xx++) {
      let s0 = half, s1 = half, s2 = half;
      for (let y = 0; y < ymax; y++) {
        const ky = vert.kk[kOff + y], p = ((y + ymin) * srcW + xx) * 3;
        s0 += src[p] * ky; s1 += src[p + 1] * ky; s2 += src[p + 2] * ky;
      }
      const q = (yy * srcW + xx) * 3;
      out[q] = clip8(s0); out[q + 1] = clip8(s1); out[q + 2] = clip8(s2);
    }
  }
  return out;
}

/** Crop an RGB Uint8Array (h, w, 3) to box [left, top, right, bottom]. */
export function cropRGB(rgb, w, box) {
  const [left, top, right, bottom] = box;
  const cw = right - left, ch = bottom - top;
  const out = new Uint8Array(cw * ch * 3);
  for (let y = 0; y < ch; y++) {
    const from = ((y + top) * w + left) * 3;
    out.set(rgb.subarray(from, from + cw * 3), y * cw * 3);
  }
  return out;
}

/** RGBA (as from getImageData) -> RGB, alpha composited on white with Pillow's alpha_composite
 *  arithmetic (Image.alpha_composite(white, rgba), AlphaComposite.c, 7 extra bits of precision). */
export function compositeOnWhite(rgba) {
  const n = rgba.length / 4;
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    const a = rgba[i * 4 + 3];
    for (let c = 0; c < 3; c++) {
      const v = rgba[i * 4 + c];
      let o;
      if (a === 255) o = v;
      else if (a === 0) o = 255;
      else {
        // dst is opaque white: outa255 = 255*255, coef1 = a*128, coef2 = (255-a)*128
        const t = v * a * 128 + 255 * (255 - a) * 128 + (0x80 << 7);
        o = (((t >> 8) + t) >> 8) >> 7;
      }
      out[i * 3 + c] = o;
    }
  }
  return out;
}

/** The whole policy: RGBA pixels (w x h) -> {rgb: Uint8Array (th, tw, 3), box}.
 *  Identity when the image already has the target size (no crop, no resampling). */
export function resizeToModel(rgba, w, h, th, tw) {
  const rgb = compositeOnWhite(rgba);
  if (w === tw && h === th) return { rgb, box: [0, 0, w, h] };
  const box = cropBox(w, h, th, tw);
  const cropped = cropRGB(rgb, w, box);
  return { rgb: resizeBilinear(cropped, box[2] - box[0], box[3] - box[1], tw, th), box };
}
