// The page: takes an image (drop, paste, file picker or `?src=`), hands it to the worker and
// shows progress, the before/after comparison and the download. Automation contract:
// `/?src=<same-origin url>&scale=<s>` upscales on load and sets `document.title` to `done`
// (the PNG is in `<img id="result">` as a data URL) or to `error: <message>`.
// Optional parameters, for tests and benchmarks: backend=wasm|webgpu, threads=N,
// tile=N&overlap=N (the Python upscaler's --tile/--overlap).

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const automated = params.has('src');

let config;
let worker;
let ready; // Promise of the worker's 'ready' message
let scale = 4;
let current = null; // {blob, name} of the image on show
let nextId = 0;
const pending = new Map(); // id -> {resolve, reject, onProgress}

function showError(message) {
  $('error').textContent = message;
  $('error').hidden = false;
  $('progress').hidden = true;
  $('message').textContent = '';
}

function intParam(name) {
  const value = params.get(name);
  if (value === null) return undefined;
  if (!/^\d+$/.test(value)) throw new Error(`${name}=${value}: expected a whole number`);
  return Number(value);
}

function startWorker() {
  worker = new Worker('worker.js', { type: 'module' });
  ready = new Promise((resolve, reject) => {
    worker.onmessage = ({ data }) => {
      if (data.type === 'ready') resolve(data);
      else if (data.type === 'fatal') reject(new Error(data.message));
      else {
        const job = pending.get(data.id);
        if (!job) return;
        if (data.type === 'progress') job.onProgress(data);
        else {
          pending.delete(data.id);
          if (data.type === 'done') job.resolve(data);
          else job.reject(new Error(data.message));
        }
      }
    };
    // A worker that dies (a script that failed to load, out of memory) fails whatever waits.
    worker.onerror = (event) => {
      event.preventDefault();
      const error = new Error(`the worker stopped: ${event.message || 'script error'}`);
      reject(error);
      for (const job of pending.values()) job.reject(error);
      pending.clear();
    };
  });
  const backend = params.get('backend');
  if (backend && !['wasm', 'webgpu'].includes(backend)) {
    throw new Error(`backend=${backend}: expected wasm or webgpu`);
  }
  worker.postMessage({
    type: 'init', config, preload: scale, params: { backend, threads: intParam('threads') },
  });
}

function describeProgress(p) {
  if (p.stage !== 'upscaling') return `${p.stage[0].toUpperCase()}${p.stage.slice(1)}…`;
  return p.total > 1 ? `Upscaling: tile ${p.done} of ${p.total}` : 'Upscaling…';
}

// Upscales `blob` by `s` in the worker -> the 'done' message (PNG blob and figures).
async function upscale(blob, name, s) {
  await ready;
  const id = nextId++;
  const tile = intParam('tile') ?? config.tile;
  const overlap = intParam('overlap') ?? config.overlap;
  return new Promise((resolve, reject) => {
    pending.set(id, {
      resolve, reject,
      onProgress(p) {
        $('progress').hidden = false;
        if (p.total) { $('progress').max = p.total; $('progress').value = p.done; }
        else $('progress').removeAttribute('value');
        $('message').textContent = describeProgress(p);
      },
    });
    worker.postMessage({ type: 'upscale', id, blob, name, scale: s, tile, overlap });
  });
}

function dataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

const objectUrls = [];
function objectUrl(blob) {
  const url = URL.createObjectURL(blob);
  objectUrls.push(url);
  return url;
}

async function show(result, blob, name, s) {
  while (objectUrls.length) URL.revokeObjectURL(objectUrls.pop());
  const loaded = (img) => new Promise((resolve, reject) => {
    img.onload = resolve;
    img.onerror = () => reject(new Error('the browser could not show the result'));
  });
  const after = loaded($('result'));
  $('result').src = await dataUrl(result.png);
  $('before').src = objectUrl(blob);
  await after;
  const stem = name.replace(/\.[^.]*$/, '') || 'image';
  $('download').href = objectUrl(result.png);
  $('download').download = `${stem}_x${s}.png`;
  $('compare').hidden = false;
  $('progress').hidden = true;
  const kind = { gray: 'gray', rgb: 'RGB', rgba: 'RGBA' }[result.kind];
  $('message').textContent = `${name}: ${result.inputWidth}×${result.inputHeight} ${kind} → ` +
    `${result.width}×${result.height} (×${s})`;
  const backend = result.backend === 'webgpu' ? 'WebGPU'
    : `WASM, ${result.threads} thread${result.threads > 1 ? 's' : ''}`;
  $('info').textContent = `${backend} · model ${(result.inferenceMs / 1000).toFixed(2)} s · ` +
    `total ${(result.totalMs / 1000).toFixed(2)} s`;
}

async function run(blob, name) {
  const s = scale;
  current = { blob, name };
  $('error').hidden = true;
  $('compare').hidden = true;
  const result = await upscale(blob, name, s);
  await show(result, blob, name, s);
  return result;
}

function runInteractive(blob, name) {
  run(blob, name).catch((e) => showError(e.message));
}

function setUpInput() {
  const drop = $('drop');
  $('file').addEventListener('change', () => {
    const file = $('file').files[0];
    if (file) runInteractive(file, file.name);
    $('file').value = '';
  });
  drop.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); $('file').click(); }
  });
  for (const type of ['dragenter', 'dragover']) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add('over'); });
  }
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    const file = e.dataTransfer.files[0];
    if (file) runInteractive(file, file.name);
    else showError('nothing to upscale: drop an image file');
  });
  document.addEventListener('paste', (e) => {
    const item = [...e.clipboardData.items].find((i) => i.kind === 'file');
    const file = item?.getAsFile();
    if (file) runInteractive(file, file.name || 'pasted.png');
  });
  for (const s of config.scales) {
    const label = document.createElement('label');
    label.innerHTML = `<input type="radio" name="scale" value="${s}"> ×${s}`;
    const radio = label.querySelector('input');
    radio.checked = s === scale;
    radio.addEventListener('change', () => {
      scale = s;
      if (current) runInteractive(current.blob, current.name);
    });
    $('scales').append(label);
  }
  $('split').addEventListener('input', () => {
    $('before').style.clipPath = `inset(0 ${100 - $('split').value}% 0 0)`;
  });
  const mp = (config.max_output_pixels / 1e6).toFixed(1);
  $('limit').textContent = `PNG, JPEG, WebP, GIF, BMP or AVIF; the result may have up to ${mp} ` +
    `megapixels (e.g. ${config.example_limits})`;
}

async function automate() {
  const src = new URL(params.get('src'), location.href);
  if (src.origin !== location.origin) throw new Error(`src=${src}: not on this site`);
  const response = await fetch(src);
  if (!response.ok) throw new Error(`src=${src.pathname}: HTTP ${response.status}`);
  const name = decodeURIComponent(src.pathname.split('/').pop()) || 'image';
  return run(await response.blob(), name);
}

async function main() {
  config = await (await fetch('config.json')).json();
  const requested = params.get('scale');
  if (requested !== null) {
    if (!config.scales.includes(Number(requested))) {
      throw new Error(`scale=${requested}: this build offers ${config.scales.join(', ')}`);
    }
    scale = Number(requested);
  } else if (!config.scales.includes(scale)) {
    scale = config.scales[config.scales.length - 1];
  }
  setUpInput();
  startWorker();
  const start = await ready;
  window.maffsrnStats.readyMs = performance.now();
  window.maffsrnStats.readyBytes = pageBytes() + start.bytes;
  const backend = start.backend === 'webgpu' ? 'WebGPU'
    : `WASM with ${start.threads} thread${start.threads > 1 ? 's' : ''}`;
  $('message').textContent = `Ready (${backend}).`;
  if (automated) {
    const result = await automate();
    window.maffsrnStats.last = { ...result, png: undefined, pageBytes: pageBytes() };
    document.title = 'done';
  }
}

function pageBytes() {
  return performance.getEntriesByType('resource').reduce((sum, e) => sum + e.transferSize, 0)
    + (performance.getEntriesByType('navigation')[0]?.transferSize ?? 0);
}

// For the benchmark: upscale a same-origin URL again in this page and return its figures.
window.maffsrnStats = {};
window.maffsrnRun = async (url, s) => {
  const blob = await (await fetch(url)).blob();
  const result = await upscale(blob, url, s);
  return { ...result, png: undefined };
};

main().catch((e) => {
  showError(e.message);
  if (automated) document.title = `error: ${e.message}`;
});
