// The views of stm_lab.analysis.invariance.view, computed in the browser on float images.
//
// An image is {c, h, w, data}: data a Float32Array of c*h*w values in [0, 1], channels first (as the models take
// it). view(img, S, {cropPct, angle, dy, dx}) follows the Python function step by step:
//   1. resizeShort: the short side to trunc(S / cropPct), the long side to round-half-even(long * short / short0),
//      antialiased bicubic (PyTorch's F.interpolate(mode='bicubic', antialias=True), i.e. the PIL filter with
//      a = -0.5 whose support widens with the scale factor when shrinking), then clamped to [0, 1];
//   2. rotate: counter-clockwise by `angle` degrees about the image centre, bilinear, black outside, as
//      torchvision.transforms.v2.functional.rotate(fill=0): the bilinear sample (zero padding) times the bilinear
//      sample of an all-ones mask; skipped at 0 degrees (torchvision returns the image unchanged there);
//   3. crop: the S x S window whose centre is the image centre ((h - S) // 2, (w - S) // 2) moved by (-dy, -dx),
//      so that the content moves by (dy, dx); black outside the image.
// tests/test_lab_browser.py compares the result with the Python function on the same decoded pixels.

export function pyRound(x) {
  // Python's round(): halves go to the even neighbour
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

function cubic(x) {
  const a = -0.5;
  x = Math.abs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

// per output index: the first input index and the normalized weights (antialiased bicubic, align_corners=False)
function weights(inSize, outSize) {
  const scale = inSize / outSize;
  const support = scale >= 1 ? 2 * scale : 2;
  const inv = scale >= 1 ? 1 / scale : 1;
  const out = [];
  for (let i = 0; i < outSize; i++) {
    const center = scale * (i + 0.5);
    const lo = Math.max(Math.trunc(center - support + 0.5), 0);
    const hi = Math.min(Math.trunc(center + support + 0.5), inSize);
    const w = new Float64Array(Math.max(hi - lo, 0));
    let total = 0;
    for (let j = 0; j < w.length; j++) {
      w[j] = cubic((j + lo - center + 0.5) * inv);
      total += w[j];
    }
    if (total !== 0) for (let j = 0; j < w.length; j++) w[j] /= total;
    out.push({lo, w});
  }
  return out;
}

export function resize(img, oh, ow) {
  const {c, h, w, data} = img;
  // width first, then height
  const wx = weights(w, ow), wy = weights(h, oh);
  const tmp = new Float64Array(c * h * ow);
  for (let k = 0; k < c; k++) {
    for (let y = 0; y < h; y++) {
      const row = (k * h + y) * w;
      for (let x = 0; x < ow; x++) {
        const {lo, w: ws} = wx[x];
        let s = 0;
        for (let j = 0; j < ws.length; j++) s += ws[j] * data[row + lo + j];
        tmp[(k * h + y) * ow + x] = s;
      }
    }
  }
  const out = new Float32Array(c * oh * ow);
  for (let k = 0; k < c; k++) {
    for (let y = 0; y < oh; y++) {
      const {lo, w: ws} = wy[y];
      for (let x = 0; x < ow; x++) {
        let s = 0;
        for (let j = 0; j < ws.length; j++) s += ws[j] * tmp[(k * h + lo + j) * ow + x];
        out[(k * oh + y) * ow + x] = Math.min(Math.max(s, 0), 1);
      }
    }
  }
  return {c, h: oh, w: ow, data: out};
}

export function resizeShort(img, size) {
  const {h, w} = img;
  if (Math.min(h, w) === size) return img;
  const [oh, ow] = h <= w ? [size, pyRound(w * size / h)] : [pyRound(h * size / w), size];
  return resize(img, oh, ow);
}

export function rotate(img, angle) {
  if (!angle) return img;
  const {c, h, w, data} = img;
  const t = angle * Math.PI / 180, cos = Math.cos(t), sin = Math.sin(t);
  const out = new Float32Array(c * h * w);
  const cx = (w - 1) / 2, cy = (h - 1) / 2;
  for (let i = 0; i < h; i++) {
    const Y = i - cy;
    for (let j = 0; j < w; j++) {
      const X = j - cx;
      const sx = cos * X - sin * Y + cx, sy = sin * X + cos * Y + cy;
      const x0 = Math.floor(sx), y0 = Math.floor(sy);
      const fx = sx - x0, fy = sy - y0;
      const taps = [[y0, x0, (1 - fy) * (1 - fx)], [y0, x0 + 1, (1 - fy) * fx],
                    [y0 + 1, x0, fy * (1 - fx)], [y0 + 1, x0 + 1, fy * fx]];
      let mask = 0;
      const acc = new Float64Array(c);
      for (const [yy, xx, wt] of taps) {
        if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
        mask += wt;
        for (let k = 0; k < c; k++) acc[k] += wt * data[(k * h + yy) * w + xx];
      }
      for (let k = 0; k < c; k++) out[(k * h + i) * w + j] = acc[k] * mask;
    }
  }
  return {c, h, w, data: out};
}

export function crop(img, size, dy = 0, dx = 0) {
  // window centred on the image centre moved by (dy, dx), as stm_lab.analysis.invariance.crop
  const {c, h, w, data} = img;
  const top = Math.floor((h - size) / 2) + dy, left = Math.floor((w - size) / 2) + dx;
  const out = new Float32Array(c * size * size);
  for (let k = 0; k < c; k++) {
    for (let i = 0; i < size; i++) {
      const y = top + i;
      if (y < 0 || y >= h) continue;
      for (let j = 0; j < size; j++) {
        const x = left + j;
        if (x < 0 || x >= w) continue;
        out[(k * size + i) * size + j] = data[(k * h + y) * w + x];
      }
    }
  }
  return {c, h: size, w: size, data: out};
}

// the scaled image (steps 1) is cached by the caller: it only changes with the photo and the crop ratio
export function scaled(img, size, cropPct) {
  return resizeShort(img, Math.trunc(size / cropPct));
}

export function viewOfScaled(scaledImg, size, {angle = 0, dy = 0, dx = 0} = {}) {
  return crop(rotate(scaledImg, angle), size, -dy, -dx);
}

export function view(img, size, {cropPct = 0.875, angle = 0, dy = 0, dx = 0} = {}) {
  return viewOfScaled(scaled(img, size, cropPct), size, {angle, dy, dx});
}

// RGBA bytes (canvas ImageData) -> float image in [0, 1]
export function fromRGBA(rgba, h, w) {
  const out = new Float32Array(3 * h * w);
  for (let p = 0; p < h * w; p++) {
    for (let k = 0; k < 3; k++) out[k * h * w + p] = rgba[4 * p + k] / 255;
  }
  return {c: 3, h, w, data: out};
}

// float image -> RGBA bytes for a canvas
export function toRGBA(img) {
  const {h, w, data} = img;
  const out = new Uint8ClampedArray(4 * h * w);
  for (let p = 0; p < h * w; p++) {
    for (let k = 0; k < 3; k++) out[4 * p + k] = Math.round(255 * data[k * h * w + p]);
    out[4 * p + 3] = 255;
  }
  return out;
}
