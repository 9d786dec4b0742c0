// The page's arithmetic, shared by the worker and nothing else: tiling, blending, the
// gray/alpha rules and quantisation of `maffsrn_jax.upscale`, redone step for step in the same
// number formats (float32 where NumPy uses float32, float64 where it uses float64), so the
// page's PNG matches the Python upscaler's rather than merely resembling it.

const f32 = Math.fround;

// Python's round(): halves go to the even neighbour (`inference.tile_starts` uses it).
export function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x - Math.trunc(x)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

// `inference.tile_starts`: the fewest tiles of `tile` covering [0, size), spread evenly.
export function tileStarts(size, tile, overlap) {
  if (size <= tile) return [0];
  const n = Math.ceil((size - overlap) / (tile - overlap));
  const starts = [];
  for (let i = 0; i < n; i++) starts.push(roundHalfEven((i * (size - tile)) / (n - 1)));
  return starts;
}

// `inference._ramps`: per tile, float32 weights rising linearly over each overlap.
export function ramps(starts, length) {
  return starts.map((start, i) => {
    const w = new Float32Array(length).fill(1);
    if (i > 0) {
      const n = starts[i - 1] + length - start;
      for (let k = 0; k < n; k++) w[k] = (k + 0.5) / n;
    }
    if (i + 1 < starts.length) {
      const n = start + length - starts[i + 1];
      for (let k = 0; k < n; k++) {
        const j = length - n + k;
        w[j] = Math.min(w[j], (n - 1 - k + 0.5) / n);
      }
    }
    return w;
  });
}

function repeat(weights, scale) {
  const out = new Float32Array(weights.length * scale);
  for (let i = 0; i < out.length; i++) out[i] = weights[Math.floor(i / scale)];
  return out;
}

// A planar float32 RGB image: {data: Float32Array [3 * h * w] (CHW), h, w}.
function crop(image, y0, x0, h, w) {
  const out = new Float32Array(3 * h * w);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < h; y++) {
      const src = (c * image.h + y0 + y) * image.w + x0;
      out.set(image.data.subarray(src, src + w), (c * h + y) * w);
    }
  }
  return { data: out, h, w };
}

// `inference.padded_fn`: an image under the model's minimum is edge-padded on both sides
// (the smaller half before) and the output cropped back.
export async function runPadded(run, image, scale, minSize) {
  const ph = Math.max(0, minSize - image.h);
  const pw = Math.max(0, minSize - image.w);
  if (!ph && !pw) return run(image);
  const top = Math.floor(ph / 2);
  const left = Math.floor(pw / 2);
  const H = image.h + ph;
  const W = image.w + pw;
  const padded = new Float32Array(3 * H * W);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < H; y++) {
      const sy = Math.min(Math.max(y - top, 0), image.h - 1);
      for (let x = 0; x < W; x++) {
        const sx = Math.min(Math.max(x - left, 0), image.w - 1);
        padded[(c * H + y) * W + x] = image.data[(c * image.h + sy) * image.w + sx];
      }
    }
  }
  const out = await run({ data: padded, h: H, w: W });
  return crop(out, scale * top, scale * left, scale * image.h, scale * image.w);
}

// `inference.upscale_tiled` with `run` ({data, h, w} -> its x`scale` output, both planar):
// tiles of `tile` x `tile` (sides shorter than `tile` are not split), outputs blended with
// the ramps in float32 and divided by the summed weights. `onTile(done, total)` reports
// progress. One tile is the plain model output, as in Python.
export async function upscaleTiled(run, image, { scale, tile, overlap, onTile }) {
  const { h, w } = image;
  const th = Math.min(tile, h);
  const tw = Math.min(tile, w);
  const ys = tileStarts(h, tile, overlap);
  const xs = tileStarts(w, tile, overlap);
  const total = ys.length * xs.length;
  if (total === 1) {
    const out = await run(image);
    onTile?.(1, 1);
    return out;
  }
  const wy = ramps(ys, th).map((r) => repeat(r, scale));
  const wx = ramps(xs, tw).map((r) => repeat(r, scale));
  const H = scale * h;
  const W = scale * w;
  const out = new Float32Array(3 * H * W);
  const norm = new Float32Array(H * W);
  const sh = scale * th;
  const sw = scale * tw;
  let done = 0;
  for (let i = 0; i < ys.length; i++) {
    for (let j = 0; j < xs.length; j++) {
      const sr = await run(crop(image, ys[i], xs[j], th, tw));
      const ry = wy[i];
      const rx = wx[j];
      for (let y = 0; y < sh; y++) {
        const row = (scale * ys[i] + y) * W + scale * xs[j];
        for (let x = 0; x < sw; x++) {
          const weight = f32(ry[y] * rx[x]);
          norm[row + x] = f32(norm[row + x] + weight);
          for (let c = 0; c < 3; c++) {
            const k = c * H * W + row + x;
            out[k] = f32(out[k] + f32(weight * sr.data[(c * sh + y) * sw + x]));
          }
        }
      }
      onTile?.(++done, total);
    }
  }
  for (let c = 0; c < 3; c++) {
    for (let p = 0; p < H * W; p++) out[c * H * W + p] = f32(out[c * H * W + p] / norm[p]);
  }
  return { data: out, h: H, w: W };
}

// `metrics.quantize` for uint8: floor(clip(x, 0, 1) * 255 + 0.5), in float64.
export function quantize(x) {
  return Math.floor(Math.min(Math.max(x, 0), 1) * 255 + 0.5);
}

// --- MATLAB bicubic (`maffsrn_jax.imresize`), for the alpha channel ------------------------

function cubic(x) {
  const ax = Math.abs(x);
  const ax2 = ax * ax;
  const ax3 = ax2 * ax;
  const near = ax <= 1 ? 1.5 * ax3 - 2.5 * ax2 + 1.0 : 0;
  const far = ax > 1 && ax <= 2 ? -0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0 : 0;
  return near + far;
}

// `imresize._contributions` for an enlargement (scale >= 1, no antialiasing): per output
// pixel, 6 weights summing to one and their 0-based input indices, mirrored at the borders.
function contributions(inLen, outLen, scale) {
  const taps = 6;
  const weights = new Float64Array(outLen * taps);
  const indices = new Int32Array(outLen * taps);
  for (let i = 0; i < outLen; i++) {
    const u = (i + 1) / scale + 0.5 * (1 - 1 / scale);
    const left = Math.floor(u - 2);
    let sum = 0;
    for (let k = 0; k < taps; k++) {
      const wgt = cubic(u - (left + k));
      weights[i * taps + k] = wgt;
      sum += wgt;
    }
    for (let k = 0; k < taps; k++) {
      weights[i * taps + k] /= sum;
      const m = (((left + k - 1) % (2 * inLen)) + 2 * inLen) % (2 * inLen);
      indices[i * taps + k] = m < inLen ? m : 2 * inLen - 1 - m;
    }
  }
  return { weights, indices, taps };
}

// MATLAB's uint8 cast: round half away from zero (here: of non-negative values), saturate.
function roundUint8(x) {
  const m = Math.abs(x);
  const whole = Math.floor(m);
  const r = Math.sign(x) * (whole + (m - whole >= 0.5 ? 1 : 0));
  return Math.min(Math.max(r, 0), 255);
}

// `imresize(alpha, scale, output_shape=(scale * h, scale * w))` of a uint8 plane: rows first
// (equal scales keep that order), taps accumulated one by one in float64, as in Python.
export function imresizeUint8(plane, h, w, scale) {
  const H = scale * h;
  const W = scale * w;
  const rows = contributions(h, H, scale);
  const mid = new Float64Array(H * w);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < w; x++) {
      let acc = 0;
      for (let k = 0; k < rows.taps; k++) {
        const t = y * rows.taps + k;
        acc = k === 0 ? rows.weights[t] * plane[rows.indices[t] * w + x]
          : acc + rows.weights[t] * plane[rows.indices[t] * w + x];
      }
      mid[y * w + x] = acc;
    }
  }
  const cols = contributions(w, W, scale);
  const out = new Uint8Array(H * W);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      let acc = 0;
      for (let k = 0; k < cols.taps; k++) {
        const t = x * cols.taps + k;
        acc = k === 0 ? cols.weights[t] * mid[y * w + cols.indices[t]]
          : acc + cols.weights[t] * mid[y * w + cols.indices[t]];
      }
      out[y * W + x] = roundUint8(acc);
    }
  }
  return out;
}

// --- upscale.upscale_image_with ------------------------------------------------------------

// `rgba`: Uint8ClampedArray [h * w * 4] as decoded; `kind`: 'gray' | 'rgb' | 'rgba', the kind
// Pillow reads the file as (see sniff.js). Gray runs as RGB (the red channel replicated) and
// keeps the rounded mean of the output's channels; RGBA upscales its alpha by bicubic.
// Returns {pixels: Uint8Array (1, 3 or 4 channels interleaved), channels, h, w}.
export async function upscaleImage(runRgb, rgba, h, w, kind, scale) {
  const rgb = new Float32Array(3 * h * w);
  for (let p = 0; p < h * w; p++) {
    for (let c = 0; c < 3; c++) {
      rgb[c * h * w + p] = f32(rgba[4 * p + (kind === 'gray' ? 0 : c)] / 255);
    }
  }
  const sr = await runRgb({ data: rgb, h, w });
  const H = sr.h;
  const W = sr.w;
  const n = H * W;
  if (kind === 'gray') {
    const out = new Uint8Array(n);
    for (let p = 0; p < n; p++) {
      const sum = f32(f32(sr.data[p] + sr.data[n + p]) + sr.data[2 * n + p]);
      out[p] = quantize(f32(sum / 3));
    }
    return { pixels: out, channels: 1, h: H, w: W };
  }
  const channels = kind === 'rgba' ? 4 : 3;
  const out = new Uint8Array(n * channels);
  for (let p = 0; p < n; p++) {
    for (let c = 0; c < 3; c++) out[p * channels + c] = quantize(sr.data[c * n + p]);
  }
  if (channels === 4) {
    const alpha = new Uint8Array(h * w);
    for (let p = 0; p < h * w; p++) alpha[p] = rgba[4 * p + 3];
    const big = imresizeUint8(alpha, h, w, scale);
    for (let p = 0; p < n; p++) out[p * 4 + 3] = big[p];
  }
  return { pixels: out, channels, h: H, w: W };
}
