// A PNG encoder for the result: 8-bit gray, RGB or RGBA exactly as computed. The canvas's own
// encoder would premultiply alpha (changing the colour of translucent pixels) and cannot
// write gray, so the page writes the file itself; zlib is the browser's CompressionStream.

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

async function zlib(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream('deflate'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// Paeth-filtered scanlines (what Pillow and image_io pick for photographs: small files).
function filterRows(pixels, h, rowBytes, bpp) {
  const out = new Uint8Array(h * (rowBytes + 1));
  for (let y = 0; y < h; y++) {
    const row = y * rowBytes;
    const dst = y * (rowBytes + 1);
    out[dst] = 4;
    for (let i = 0; i < rowBytes; i++) {
      const a = i >= bpp ? pixels[row + i - bpp] : 0;
      const b = y > 0 ? pixels[row - rowBytes + i] : 0;
      const c = y > 0 && i >= bpp ? pixels[row - rowBytes + i - bpp] : 0;
      const pa = Math.abs(b - c);
      const pb = Math.abs(a - c);
      const pc = Math.abs(a + b - 2 * c);
      const pred = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      out[dst + 1 + i] = (pixels[row + i] - pred) & 0xff;
    }
  }
  return out;
}

// `pixels`: Uint8Array [h * w * channels] interleaved; channels 1 (gray), 3 or 4. -> Blob.
export async function encodePng(pixels, w, h, channels) {
  const header = new Uint8Array(13);
  const view = new DataView(header.buffer);
  view.setUint32(0, w);
  view.setUint32(4, h);
  header[8] = 8;
  header[9] = { 1: 0, 3: 2, 4: 6 }[channels];
  const idat = await zlib(filterRows(pixels, h, w * channels, channels));
  const signature = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
  return new Blob(
    [signature, chunk('IHDR', header), chunk('IDAT', idat), chunk('IEND', new Uint8Array(0))],
    { type: 'image/png' },
  );
}

// --- decoding, for 8-bit PNGs with alpha only ----------------------------------------------
// A browser decodes into premultiplied storage, which changes the colour of every translucent
// pixel (and erases it under alpha 0), whereas Pillow keeps the stored colour. The page reads
// such files itself; every other image goes through the browser's decoder, which is exact
// for opaque pixels.

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function unfilter(raw, h, rowBytes, bpp) {
  const out = new Uint8Array(h * rowBytes);
  for (let y = 0; y < h; y++) {
    const type = raw[y * (rowBytes + 1)];
    const src = y * (rowBytes + 1) + 1;
    const row = y * rowBytes;
    for (let i = 0; i < rowBytes; i++) {
      const a = i >= bpp ? out[row + i - bpp] : 0;
      const b = y > 0 ? out[row - rowBytes + i] : 0;
      const c = y > 0 && i >= bpp ? out[row - rowBytes + i - bpp] : 0;
      let pred;
      if (type === 0) pred = 0;
      else if (type === 1) pred = a;
      else if (type === 2) pred = b;
      else if (type === 3) pred = (a + b) >> 1;
      else if (type === 4) {
        const pa = Math.abs(b - c);
        const pb = Math.abs(a - c);
        const pc = Math.abs(a + b - 2 * c);
        pred = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      } else throw new Error(`bad PNG filter type ${type}`);
      out[row + i] = (raw[src + i] + pred) & 0xff;
    }
  }
  return out;
}

// -> {rgba: Uint8ClampedArray, w, h} for a non-interlaced 8-bit PNG of colour type 3 (with
// tRNS), 4 or 6; null for any other PNG (the caller then lets the browser decode it).
// Throws on a damaged file.
export async function decodePngWithAlpha(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  let w = 0;
  let h = 0;
  let colourType = -1;
  let palette = null;
  let trns = null;
  const idat = [];
  for (let pos = 8; pos + 8 <= bytes.length;) {
    const length = view.getUint32(pos);
    const type = String.fromCharCode(...bytes.subarray(pos + 4, pos + 8));
    const data = bytes.subarray(pos + 8, pos + 8 + length);
    if (data.length !== length) throw new Error('truncated PNG');
    if (type === 'IHDR') {
      w = view.getUint32(pos + 8);
      h = view.getUint32(pos + 12);
      colourType = data[9];
      if (data[8] !== 8 || data[12] !== 0 || ![3, 4, 6].includes(colourType)) return null;
    } else if (type === 'PLTE') palette = data;
    else if (type === 'tRNS') trns = data;
    else if (type === 'IDAT') idat.push(data);
    else if (type === 'IEND') break;
    pos += 12 + length;
  }
  if (!w || !h || !idat.length || (colourType === 3 && !(palette && trns))) return null;
  const channels = { 3: 1, 4: 2, 6: 4 }[colourType];
  const rowBytes = w * channels;
  const raw = await inflate(new Blob(idat));
  if (raw.length < h * (rowBytes + 1)) throw new Error('truncated PNG data');
  const px = unfilter(raw, h, rowBytes, channels);
  const rgba = new Uint8ClampedArray(w * h * 4);
  for (let p = 0; p < w * h; p++) {
    if (colourType === 6) rgba.set(px.subarray(4 * p, 4 * p + 4), 4 * p);
    else if (colourType === 4) {
      rgba.fill(px[2 * p], 4 * p, 4 * p + 3);
      rgba[4 * p + 3] = px[2 * p + 1];
    } else {
      const i = px[p];
      rgba.set(palette.subarray(3 * i, 3 * i + 3), 4 * p);
      rgba[4 * p + 3] = i < trns.length ? trns[i] : 255;
    }
  }
  return { rgba, w, h };
}
