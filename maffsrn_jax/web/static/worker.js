// The page's Web Worker: decodes the image, runs MAFFSRN's ONNX model in ONNX Runtime Web
// (WebGPU where the browser offers it, else WASM on as many threads as the page may use),
// tiles and blends as `maffsrn_jax.upscale` does (core.js) and encodes the PNG (png.js), so
// the page stays responsive however long an image takes.

import { runPadded, upscaleImage, upscaleTiled } from './core.js';
import { decodePngWithAlpha, encodePng } from './png.js';
import { sniff } from './sniff.js';

let config = null;
let ort = null;
let backend = null; // 'webgpu' or 'wasm': what the sessions below run on
let threads = 1;
const sessions = new Map(); // scale -> Promise<InferenceSession>

class InputError extends Error {}

function post(message, transfer) {
  self.postMessage(message, transfer ?? []);
}

function bytesTransferred() {
  return performance.getEntriesByType('resource').reduce((sum, e) => sum + e.transferSize, 0);
}

// Multi-threaded WASM needs SharedArrayBuffer, which only a cross-origin isolated page has
// (`serve` sends the COOP/COEP headers for it); a plain static host gets one thread.
function threadCount(requested) {
  const most = self.crossOriginIsolated ? navigator.hardwareConcurrency || 1 : 1;
  return requested ? Math.max(1, Math.min(requested, most)) : most;
}

async function webgpuAdapter() {
  if (!('gpu' in navigator)) return null;
  try {
    const adapter = await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' });
    // A software fallback adapter (SwiftShader on a machine without a GPU) is many times
    // slower than WASM: only a real GPU counts as WebGPU here.
    if (!adapter || adapter.info?.isFallbackAdapter || adapter.isFallbackAdapter) return null;
    return adapter;
  } catch {
    return null;
  }
}

async function init(params) {
  const useGpu = params.backend !== 'wasm' && (await webgpuAdapter()) !== null;
  if (params.backend === 'webgpu' && !useGpu) {
    throw new Error('WebGPU is not available in this browser (no hardware adapter)');
  }
  // The WebGPU build also holds the WASM provider, the fallback if a WebGPU session fails;
  // the WASM-only build is half the download.
  ort = await import(useGpu ? './ort/ort.webgpu.min.mjs' : './ort/ort.wasm.min.mjs');
  backend = useGpu ? 'webgpu' : 'wasm';
  threads = threadCount(params.threads);
  ort.env.wasm.wasmPaths = new URL('ort/', self.location.href).href;
  ort.env.wasm.numThreads = threads;
  ort.env.logLevel = 'error';
}

async function createSession(scale) {
  const file = config.models[String(scale)];
  if (!file) throw new InputError(`this build has no x${scale} model`);
  const response = await fetch(`models/${file}`);
  if (!response.ok) throw new Error(`models/${file}: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  if (backend === 'webgpu') {
    try {
      return await ort.InferenceSession.create(bytes, { executionProviders: ['webgpu'] });
    } catch (e) {
      console.warn(`WebGPU session failed, falling back to WASM: ${e}`);
      backend = 'wasm';
    }
  }
  return ort.InferenceSession.create(bytes, { executionProviders: ['wasm'] });
}

function session(scale) {
  if (!sessions.has(scale)) {
    const pending = createSession(scale);
    sessions.set(scale, pending);
    pending.catch(() => sessions.delete(scale));
  }
  return sessions.get(scale);
}

async function decode(blob, name) {
  if (blob.size === 0) throw new InputError(`${name} is empty`);
  if (blob.size > config.max_file_bytes) {
    throw new InputError(`${name} is ${(blob.size / 2 ** 20).toFixed(1)} MiB, above the ` +
      `page's limit of ${config.max_file_bytes / 2 ** 20} MiB`);
  }
  const head = sniff(await blob.slice(0, 256 * 1024).arrayBuffer());
  if (!head.format) {
    throw new InputError(`${name} is not an image file` + (head.reason ? ` (${head.reason})` : ''));
  }
  if (head.width !== undefined) checkSize(head.width, head.height, name);
  if (head.format === 'PNG' && head.kind === 'rgba') {
    let own;
    try {
      own = await decodePngWithAlpha(await blob.arrayBuffer());
    } catch (e) {
      throw new InputError(`${name} could not be decoded (a damaged PNG file: ${e.message})`);
    }
    if (own) return { ...own, kind: 'rgba', format: 'PNG' };
  }
  let bitmap;
  try {
    // The stored pixels, as Pillow reads them: no colour management, no premultiplication.
    bitmap = await createImageBitmap(blob, {
      colorSpaceConversion: 'none', premultiplyAlpha: 'none',
    });
  } catch {
    throw new InputError(`${name} could not be decoded (a damaged or unsupported ` +
      `${head.format} file)`);
  }
  const { width: w, height: h } = bitmap;
  checkSize(w, h, name);
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = ctx.getImageData(0, 0, w, h).data;
  let kind = head.kind;
  if (!kind) {
    kind = 'rgb';
    for (let p = 3; p < rgba.length; p += 4) if (rgba[p] !== 255) { kind = 'rgba'; break; }
  }
  return { rgba, w, h, kind, format: head.format };
}

let currentScale = 1;
function checkSize(w, h, name) {
  if (w < 1 || h < 1) throw new InputError(`${name} is an empty image (${w}x${h})`);
  const out = w * h * currentScale * currentScale;
  if (out > config.max_output_pixels) {
    throw new InputError(`${name} is ${w}x${h}: its x${currentScale} result would have ` +
      `${(out / 1e6).toFixed(1)} megapixels, above the page's limit of ` +
      `${(config.max_output_pixels / 1e6).toFixed(1)} (a smaller image or scale fits)`);
  }
}

async function upscale({ id, blob, name, scale, tile, overlap }) {
  const start = performance.now();
  currentScale = scale;
  post({ type: 'progress', id, stage: 'reading the image' });
  const image = await decode(blob, name);
  post({ type: 'progress', id, stage: 'loading the model' });
  const model = await session(scale);
  let inferenceMs = 0;
  const run = async (tileImage) => {
    const t0 = performance.now();
    const input = new ort.Tensor('float32', tileImage.data, [1, 3, tileImage.h, tileImage.w]);
    const { sr } = await model.run({ lr: input });
    const out = { data: await sr.getData(), h: sr.dims[2], w: sr.dims[3] };
    input.dispose();
    sr.dispose();
    inferenceMs += performance.now() - t0;
    return out;
  };
  const onTile = (done, total) => post({ type: 'progress', id, stage: 'upscaling', done, total });
  onTile(0, 1);
  const runRgb = (rgb) => upscaleTiled((t) => runPadded(run, t, scale, config.min_input_size),
    rgb, { scale, tile, overlap, onTile });
  const result = await upscaleImage(runRgb, image.rgba, image.h, image.w, image.kind, scale);
  post({ type: 'progress', id, stage: 'encoding the PNG' });
  const png = await encodePng(result.pixels, result.w, result.h, result.channels);
  post({
    type: 'done', id, png, width: result.w, height: result.h, inputWidth: image.w,
    inputHeight: image.h, kind: image.kind, format: image.format, backend, threads,
    inferenceMs, totalMs: performance.now() - start, bytes: bytesTransferred(),
  });
}

self.onmessage = async ({ data }) => {
  if (data.type === 'init') {
    try {
      config = data.config;
      await init(data.params);
      await session(data.preload);
      post({ type: 'ready', backend, threads, bytes: bytesTransferred() });
    } catch (e) {
      post({ type: 'fatal', message: `cannot start ONNX Runtime Web: ${e.message ?? e}` });
    }
    return;
  }
  try {
    await upscale(data);
  } catch (e) {
    const message = e instanceof InputError ? e.message : `upscaling failed: ${e.message ?? e}`;
    post({ type: 'error', id: data.id, message });
  }
};
