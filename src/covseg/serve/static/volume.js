// One case's arrays as the server sends them (covseg.serve.display): the scan and a label array
// (bit 0 lungs, bit 1 infection), both C-ordered (N, H, W) in the report's orientation: slices
// inferior -> superior, rows anterior -> posterior, columns patient right -> left.
//
// A plane's slice is drawn as an image of (u, v) pixels, u to the right and v down:
//   axial    (fixed slice k):  u = column w, v = row h          R|L left-right, A top
//   coronal  (fixed row h):    u = column w, v = N - 1 - k      R|L left-right, S top
//   sagittal (fixed column w): u = row h,    v = N - 1 - k      A|P left-right, S top

export const PLANES = ["axial", "coronal", "sagittal"];

// The overlay colours (RGB) and how they are mixed over the grey scan.
export const COLOURS = { lungs: [40, 220, 90], infection: [255, 30, 30] };

export class Volume {
  /**
   * @param {object} display the job's `display` JSON; ct and labels: ArrayBuffers
   * @param {boolean} hu whether the scan's values are Hounsfield units
   */
  constructor(display, ct, labels, hu) {
    this.hu = hu;
    const [n, h, w] = display.shape;
    this.shape = { n, h, w };
    this.ct = display.dtype === "int16" ? new Int16Array(ct) : new Float32Array(ct);
    this.labels = new Uint8Array(labels);
    if (this.ct.length !== n * h * w || this.labels.length !== n * h * w) {
      throw new Error(`the viewer's arrays do not hold ${n} × ${h} × ${w} voxels`);
    }
    this.range = display.range;
    this.integer = display.dtype === "int16";
    const s = display.spacing_mm; // (row, column, slice) mm, or null for a picture
    this.unit = s ? "mm" : "px";
    this.spacing = s ? { row: s[0], col: s[1], slice: s[2] } : { row: 1, col: 1, slice: 1 };
    this.affine = display.affine; // (column, row, slice, 1) -> RAS mm, or null
  }

  /** Slices along a plane. */
  count(plane) {
    return { axial: this.shape.n, coronal: this.shape.h, sagittal: this.shape.w }[plane];
  }

  /** [width, height] of a plane's slice image, in pixels. */
  size(plane) {
    const { n, h, w } = this.shape;
    return { axial: [w, h], coronal: [w, n], sagittal: [h, n] }[plane];
  }

  /** [mm per u pixel, mm per v pixel] of a plane's slice image. */
  pixelSize(plane) {
    const { row, col, slice } = this.spacing;
    return { axial: [col, row], coronal: [col, slice], sagittal: [row, slice] }[plane];
  }

  /** Which coordinate of the cursor {k, h, w} a plane's slice index is. */
  static axis(plane) {
    return { axial: "k", coronal: "h", sagittal: "w" }[plane];
  }

  /** The voxel {k, h, w} at pixel (u, v) (integers) of a plane's slice `index`. */
  voxel(plane, index, u, v) {
    const top = this.shape.n - 1 - v;
    if (plane === "axial") return { k: index, h: v, w: u };
    if (plane === "coronal") return { k: top, h: index, w: u };
    return { k: top, h: u, w: index };
  }

  /** The pixel (u, v) of a plane's slice that shows voxel {k, h, w}. */
  pixel(plane, { k, h, w }) {
    const top = this.shape.n - 1 - k;
    return { axial: [w, h], coronal: [w, top], sagittal: [h, top] }[plane];
  }

  contains({ k, h, w }) {
    const s = this.shape;
    return k >= 0 && h >= 0 && w >= 0 && k < s.n && h < s.h && w < s.w;
  }

  offset({ k, h, w }) {
    return (k * this.shape.h + h) * this.shape.w + w;
  }

  /** World RAS millimetres of voxel {k, h, w}, or null for a picture. */
  mm({ k, h, w }) {
    if (!this.affine) return null;
    return [0, 1, 2].map((r) => this.affine[r][0] * w + this.affine[r][1] * h + this.affine[r][2] * k + this.affine[r][3]);
  }

  /**
   * Draw one slice into `out` (Uint32 RGBA pixels of size(plane)).
   * @param {{lo: number, hi: number}} window grey scale: lo -> black, hi -> white
   * @param {{lungs: number, infection: number}} opacity 0 hides an overlay
   */
  draw(plane, index, window, opacity, out) {
    const { n, h: H, w: W } = this.shape;
    const [iw, ih] = this.size(plane);
    const grey = this.greyLevels(window);
    const mixed = mixTables(opacity);
    const { ct, labels } = this;
    // Infection lies inside the lungs: with its overlay off, the lung colour shows there.
    const lungs = opacity.lungs > 0 ? mixed.lungs : mixed.grey;
    const infection = opacity.infection > 0 ? mixed.infection : lungs;
    const du = plane === "sagittal" ? W : 1;
    let p = 0;
    for (let v = 0; v < ih; v++) {
      const k = plane === "axial" ? index : n - 1 - v;
      let o = plane === "axial" ? (k * H + v) * W : plane === "coronal" ? (k * H + index) * W : k * H * W + index;
      for (let u = 0; u < iw; u++, o += du) {
        const g = grey(ct[o]);
        const label = labels[o];
        out[p++] = label & 2 ? infection[g] : label & 1 ? lungs[g] : mixed.grey[g];
      }
    }
  }

  /** value -> grey level 0..255 for a window; a lookup table for int16 scans. */
  greyLevels({ lo, hi }) {
    const scale = 255 / Math.max(hi - lo, 1e-6);
    const level = (x) => Math.max(0, Math.min(255, Math.round((x - lo) * scale)));
    if (!this.integer) return level;
    const min = Math.floor(this.range[0]);
    const table = new Uint8Array(Math.ceil(this.range[1]) - min + 1);
    for (let i = 0; i < table.length; i++) table[i] = level(i + min);
    return (x) => table[x - min];
  }
}

/** Packed RGBA (little-endian ABGR) of each grey level, plain and under each overlay. */
function mixTables(opacity) {
  const pack = (r, g, b) => ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0;
  const tables = { grey: new Uint32Array(256), lungs: new Uint32Array(256), infection: new Uint32Array(256) };
  for (let g = 0; g < 256; g++) {
    tables.grey[g] = pack(g, g, g);
    for (const name of ["lungs", "infection"]) {
      const a = opacity[name];
      const [r, gg, b] = COLOURS[name].map((c) => Math.round(g * (1 - a) + c * a));
      tables[name][g] = pack(r, gg, b);
    }
  }
  return tables;
}
