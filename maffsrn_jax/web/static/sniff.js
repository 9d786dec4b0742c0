// What a file is, read from its first bytes before the browser decodes it: the format, the
// size (so an oversized image is refused before it is decoded) and the kind of pixels Pillow
// would give `maffsrn_jax.image_io.load_image` ('gray', 'rgb' or 'rgba'), which decides how
// the result is made (gray out for gray in, alpha upscaled for alpha in).

function ascii(bytes, start, length) {
  return String.fromCharCode(...bytes.subarray(start, start + length));
}

function png(bytes, view) {
  if (bytes.length < 33 || ascii(bytes, 12, 4) !== 'IHDR') return { format: 'PNG' };
  const colourType = bytes[25];
  let kind = { 0: 'gray', 2: 'rgb', 4: 'rgba', 6: 'rgba' }[colourType] ?? 'rgb';
  if (colourType === 3) {
    // A palette with a tRNS chunk is RGBA in Pillow, without one RGB.
    kind = 'rgb';
    for (let pos = 8; pos + 8 <= bytes.length;) {
      const length = view.getUint32(pos);
      const type = ascii(bytes, pos + 4, 4);
      if (type === 'tRNS') kind = 'rgba';
      if (type === 'IDAT' || type === 'IEND') break;
      pos += 12 + length;
    }
  }
  return { format: 'PNG', width: view.getUint32(16), height: view.getUint32(20), kind };
}

function jpeg(bytes, view) {
  // Walk the markers to the first start-of-frame, which holds the size and component count.
  for (let pos = 2; pos + 9 < bytes.length;) {
    if (bytes[pos] !== 0xff) return { format: 'JPEG' };
    const marker = bytes[pos + 1];
    if (marker === 0xff) { pos += 1; continue; }
    const sof = marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker);
    if (sof) {
      return {
        format: 'JPEG',
        height: view.getUint16(pos + 5),
        width: view.getUint16(pos + 7),
        kind: bytes[pos + 9] === 1 ? 'gray' : 'rgb',
      };
    }
    pos += 2 + view.getUint16(pos + 2);
  }
  return { format: 'JPEG' };
}

// -> {format, width?, height?, kind?}; format null for bytes no browser decodes as an image.
// `kind` is absent where the header does not tell (then it follows the decoded alpha).
export function sniff(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  if (bytes.length >= 8 && bytes[0] === 0x89 && ascii(bytes, 1, 3) === 'PNG') {
    return png(bytes, view);
  }
  if (bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) {
    return jpeg(bytes, view);
  }
  if (ascii(bytes, 0, 4) === 'GIF8') {
    return { format: 'GIF', width: view.getUint16(6, true), height: view.getUint16(8, true) };
  }
  if (ascii(bytes, 0, 2) === 'BM') return { format: 'BMP' };
  if (ascii(bytes, 0, 4) === 'RIFF' && ascii(bytes, 8, 4) === 'WEBP') return { format: 'WebP' };
  if (ascii(bytes, 4, 8) === 'ftypavif' || ascii(bytes, 4, 8) === 'ftypavis') {
    return { format: 'AVIF' };
  }
  if (bytes.length >= 6 && ascii(bytes, 0, 5) === '<?xml' || ascii(bytes, 0, 4) === '<svg') {
    return { format: null, reason: 'an SVG drawing, not a raster image' };
  }
  return { format: null };
}
