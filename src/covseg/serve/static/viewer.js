// The slice viewer: axial / coronal / sagittal slices of one case drawn on a 2-D canvas, with
// the lung and infection overlays, a crosshair, window/level, the value under the pointer and
// distance/area measurements.
//
// Why a 2-D canvas and not a WebGL viewer: every window or overlay change there rebuilds 3-D
// textures of the whole volume, which software WebGL (no GPU) does at tens of seconds for a
// 512 x 512 x 31 scan; drawing the one slice shown costs milliseconds.
//
// State lives here; every change dispatches "change" (the toolbar follows it) and schedules one
// redraw on the next animation frame, however many changes came before it ("render" after).

import { drawMeasurement, measure } from "./measure.js";
import { Volume } from "./volume.js";

export const LAYOUTS = {
  AXIAL: ["axial"],
  CORONAL: ["coronal"],
  SAGITTAL: ["sagittal"],
  ALL: ["axial", "coronal", "sagittal"],
};
const TITLES = { axial: "Axial", coronal: "Coronal", sagittal: "Sagittal" };
// Radiological display: the patient's right on the screen's left.
export const ORIENTATION = {
  axial: { left: "R", right: "L", top: "A", bottom: "P" },
  coronal: { left: "R", right: "L", top: "S", bottom: "I" },
  sagittal: { left: "A", right: "P", top: "S", bottom: "I" },
};
const PAD = 20; // px around each slice, where its orientation letters sit
const CROSSHAIR = "rgba(77, 179, 255, 0.55)";

export class Viewer extends EventTarget {
  /** @param {HTMLElement} box holds the canvas and a `.pane-labels` layer */
  constructor(box) {
    super();
    this.box = box;
    this.canvas = box.querySelector("canvas");
    this.ctx = this.canvas.getContext("2d");
    this.labels = box.querySelector(".pane-labels");
    this.volume = null;
    this.view = "AXIAL";
    this.active = "axial"; // the plane that keys and the slider move
    this.pos = { k: 0, h: 0, w: 0 };
    this.window = { width: 1500, level: -600 };
    this.opacity = { lungs: 0.35, infection: 0.7 };
    this.tool = "crosshair";
    this.measurements = [];
    this.draft = null;
    this.drag = null;
    this.panes = [];
    this.buffers = {};
    this.renders = 0;
    this.frame = 0;
    new ResizeObserver(() => this.invalidate()).observe(box);
    this.listen();
  }

  // ------------------------------------------------------------------------ state
  /** Show a volume, at its middle slices, with a window {width, level}. */
  show(volume, window) {
    const { n, h, w } = volume.shape;
    this.volume = volume;
    this.pos = { k: Math.floor(n / 2), h: Math.floor(h / 2), w: Math.floor(w / 2) };
    this.window = { ...window };
    this.measurements = [];
    if (n === 1) this.view = "AXIAL"; // a picture: the other planes are lines
    this.active = LAYOUTS[this.view][0];
    this.changed();
  }

  clear() {
    this.volume = null;
    this.measurements = [];
    this.changed();
  }

  setView(view) {
    if (!LAYOUTS[view] || (this.volume && this.volume.shape.n === 1 && view !== "AXIAL")) return;
    this.view = view;
    if (!LAYOUTS[view].includes(this.active)) this.active = LAYOUTS[view][0];
    this.changed();
  }

  setActive(plane) {
    if (plane === this.active || !LAYOUTS[this.view].includes(plane)) return;
    this.active = plane;
    this.changed();
  }

  /** The shown slice index of a plane. */
  slice(plane = this.active) {
    return this.pos[Volume.axis(plane)];
  }

  count(plane = this.active) {
    return this.volume ? this.volume.count(plane) : 0;
  }

  setSlice(plane, index) {
    if (!this.volume) return;
    const clamped = Math.max(0, Math.min(this.count(plane) - 1, Math.round(index)));
    if (clamped === this.slice(plane)) return;
    this.pos = { ...this.pos, [Volume.axis(plane)]: clamped };
    this.changed();
  }

  step(delta, plane = this.active) {
    this.setSlice(plane, this.slice(plane) + delta);
  }

  setWindow(width, level) {
    if (!(width > 0) || !Number.isFinite(level)) return;
    this.window = { width, level };
    this.changed();
  }

  setOpacity(name, value) {
    if (this.opacity[name] === value) return;
    this.opacity = { ...this.opacity, [name]: value };
    this.changed();
  }

  setTool(tool) {
    this.tool = tool;
    this.draft = null;
    this.changed();
  }

  clearMeasurements() {
    this.measurements = [];
    this.changed();
  }

  changed() {
    this.dispatchEvent(new Event("change"));
    this.invalidate();
  }

  /** Redraw on the next animation frame (once, however often this is called before). */
  invalidate() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  // ------------------------------------------------------------------------ drawing
  render() {
    this.frame = 0;
    const t0 = performance.now();
    const dpr = window.devicePixelRatio || 1;
    const [cw, ch] = [this.box.clientWidth, this.box.clientHeight];
    if (this.canvas.width !== Math.round(cw * dpr) || this.canvas.height !== Math.round(ch * dpr)) {
      this.canvas.width = Math.round(cw * dpr);
      this.canvas.height = Math.round(ch * dpr);
    }
    const ctx = this.ctx;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, cw, ch);
    this.panes = this.volume ? this.layout(cw, ch) : [];
    for (const pane of this.panes) this.drawPane(pane);
    this.drawLabels();
    this.renders++;
    Object.assign(this.box.dataset, {
      renders: this.renders,
      renderMs: (performance.now() - t0).toFixed(1),
      view: this.volume ? this.view : "",
    });
    this.dispatchEvent(new Event("render"));
  }

  /** Where each plane of the view is drawn: its rectangle and its slice image's fit. */
  layout(cw, ch) {
    const planes = LAYOUTS[this.view];
    const cells = planes.length === 1 ? [[0, 0, cw, ch]] : [[0, 0], [cw / 2, 0], [0, ch / 2]].map(([x, y]) => [x, y, cw / 2, ch / 2]);
    return planes.map((plane, i) => {
      const [x, y, w, h] = cells[i];
      const [iw, ih] = this.volume.size(plane);
      const [su, sv] = this.volume.pixelSize(plane);
      const scale = Math.max(Math.min((w - 2 * PAD) / (iw * su), (h - 2 * PAD) / (ih * sv)), 1e-3);
      const [dw, dh] = [iw * su * scale, ih * sv * scale];
      return { plane, x, y, w, h, iw, ih, sx: su * scale, sy: sv * scale, x0: x + (w - dw) / 2, y0: y + (h - dh) / 2 };
    });
  }

  drawPane(pane) {
    const { plane, iw, ih } = pane;
    let buffer = this.buffers[plane];
    if (!buffer || buffer.canvas.width !== iw || buffer.canvas.height !== ih) {
      const canvas = document.createElement("canvas");
      [canvas.width, canvas.height] = [iw, ih];
      const image = new ImageData(iw, ih);
      buffer = { canvas, image, pixels: new Uint32Array(image.data.buffer) };
      this.buffers[plane] = buffer;
    }
    const { width, level } = this.window;
    this.volume.draw(plane, this.slice(plane), { lo: level - width / 2, hi: level + width / 2 }, this.opacity, buffer.pixels);
    buffer.canvas.getContext("2d").putImageData(buffer.image, 0, 0);
    const ctx = this.ctx;
    // Each voxel drawn as it is (no smoothing): the colour under the pointer is the voxel the
    // read-out names, and thin findings are not blurred away.
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(buffer.canvas, pane.x0, pane.y0, iw * pane.sx, ih * pane.sy);
    ctx.save();
    ctx.beginPath();
    ctx.rect(pane.x0, pane.y0, iw * pane.sx, ih * pane.sy);
    ctx.clip();
    this.drawCrosshair(pane);
    const toCanvas = (u, v) => this.toCanvas(pane, u, v);
    const index = this.slice(plane);
    for (const m of this.measurements) if (m.plane === plane && m.index === index) drawMeasurement(ctx, toCanvas, m);
    if (this.draft && this.draft.plane === plane) drawMeasurement(ctx, toCanvas, this.draft);
    ctx.restore();
    if (this.panes.length > 1 && plane === this.active) {
      ctx.strokeStyle = "rgba(77, 163, 255, 0.7)";
      ctx.strokeRect(pane.x + 1, pane.y + 1, pane.w - 2, pane.h - 2);
    }
  }

  drawCrosshair(pane) {
    if (this.volume.shape.n === 1 && this.panes.length === 1) return; // a picture: no other planes
    const [u, v] = this.volume.pixel(pane.plane, this.pos);
    const [x, y] = this.toCanvas(pane, u + 0.5, v + 0.5);
    const ctx = this.ctx;
    ctx.strokeStyle = CROSSHAIR;
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(Math.round(x) + 0.5, pane.y0);
    ctx.lineTo(Math.round(x) + 0.5, pane.y0 + pane.ih * pane.sy);
    ctx.moveTo(pane.x0, Math.round(y) + 0.5);
    ctx.lineTo(pane.x0 + pane.iw * pane.sx, Math.round(y) + 0.5);
    ctx.stroke();
  }

  /** Orientation letters and titles: page elements over the canvas, always inside its box. */
  drawLabels() {
    const spans = [];
    const span = (cls, text, style) => {
      const el = document.createElement("span");
      el.className = cls;
      el.textContent = text;
      Object.assign(el.style, style);
      spans.push(el);
      return el;
    };
    for (const pane of this.panes) {
      const { x, y, w, h, plane } = pane;
      const letters = ORIENTATION[plane];
      const where = { left: [x + 4, y + h / 2], right: [x + w - 4, y + h / 2], top: [x + w / 2, y + 3], bottom: [x + w / 2, y + h - 3] };
      for (const [side, [left, top]] of Object.entries(where)) {
        Object.assign(span("orient", letters[side], { left: `${left}px`, top: `${top}px` }).dataset, { plane, side });
      }
      const title = this.volume.count(plane) > 1 ? `${TITLES[plane]} ${this.slice(plane) + 1} / ${this.count(plane)}` : "";
      span("pane-title", title, { left: `${x + 6}px`, top: `${y + 4}px` }).dataset.plane = plane;
    }
    this.labels.replaceChildren(...spans);
  }

  toCanvas(pane, u, v) {
    return [pane.x0 + u * pane.sx, pane.y0 + v * pane.sy];
  }

  fromCanvas(pane, x, y) {
    return [(x - pane.x0) / pane.sx, (y - pane.y0) / pane.sy];
  }

  paneAt(x, y) {
    return this.panes.find((p) => x >= p.x && x < p.x + p.w && y >= p.y && y < p.y + p.h) || null;
  }

  /** The picture shown, orientation letters included, as a PNG blob. */
  async toPNG() {
    const out = document.createElement("canvas");
    [out.width, out.height] = [this.canvas.width, this.canvas.height];
    const ctx = out.getContext("2d");
    ctx.drawImage(this.canvas, 0, 0);
    const dpr = out.width / Math.max(this.box.clientWidth, 1);
    const box = this.box.getBoundingClientRect();
    ctx.scale(dpr, dpr);
    ctx.font = "bold 13px system-ui, sans-serif";
    ctx.fillStyle = "#e3e7ea";
    ctx.textBaseline = "top";
    for (const el of this.labels.children) {
      const r = el.getBoundingClientRect();
      ctx.fillText(el.textContent, r.left - box.left, r.top - box.top);
    }
    return new Promise((resolve) => out.toBlob(resolve, "image/png"));
  }

  // ------------------------------------------------------------------------ pointer
  listen() {
    const c = this.canvas;
    c.addEventListener("contextmenu", (e) => e.preventDefault());
    c.addEventListener("pointerdown", (e) => this.pointerDown(e));
    c.addEventListener("pointermove", (e) => this.pointerMove(e));
    c.addEventListener("pointerup", (e) => this.pointerUp(e));
    c.addEventListener("pointerleave", () => this.dispatchEvent(new CustomEvent("probe", { detail: null })));
    c.addEventListener("wheel", (e) => this.wheel(e), { passive: false });
  }

  /** The pane under an event and the continuous pixel (u, v) there, clamped to the slice. */
  hit(e, pane = null) {
    pane = pane || this.paneAt(e.offsetX, e.offsetY);
    if (!pane) return null;
    const [u, v] = this.fromCanvas(pane, e.offsetX, e.offsetY);
    return { pane, u: Math.max(0, Math.min(pane.iw, u)), v: Math.max(0, Math.min(pane.ih, v)), inside: u >= 0 && v >= 0 && u < pane.iw && v < pane.ih };
  }

  pointerDown(e) {
    const at = this.hit(e);
    if (!at) return;
    this.canvas.focus();
    this.setActive(at.pane.plane);
    const plane = at.pane.plane;
    const index = this.slice(plane);
    if (e.button === 2 || (e.button === 0 && this.tool === "window")) {
      this.drag = { kind: "window", x: e.clientX, y: e.clientY, start: { ...this.window } };
    } else if (e.button !== 0) {
      return;
    } else if (this.tool === "distance" || this.tool === "area") {
      this.draft = { type: this.tool, plane, index, points: [[at.u, at.v]] };
      if (this.tool === "distance") this.draft.points.push([at.u, at.v]);
      this.drag = { kind: "measure", pane: at.pane };
    } else {
      this.drag = { kind: "crosshair", pane: at.pane };
      this.moveCrosshair(at);
    }
    this.canvas.setPointerCapture(e.pointerId);
  }

  pointerMove(e) {
    const drag = this.drag;
    if (!drag) return this.probe(e);
    if (drag.kind === "window") {
      // Right: wider (less contrast); down: higher level (darker), as most CT workstations.
      const per = this.volume ? Math.max((this.volume.range[1] - this.volume.range[0]) / 1000, 0.01) : 1;
      const width = Math.max(per, drag.start.width + (e.clientX - drag.x) * 2 * per);
      this.setWindow(width, drag.start.level + (e.clientY - drag.y) * per);
      this.dispatchEvent(new Event("windowdrag"));
    } else if (drag.kind === "crosshair") {
      this.moveCrosshair(this.hit(e, drag.pane));
    } else if (this.draft) {
      const at = this.hit(e, drag.pane);
      if (this.draft.type === "distance") this.draft.points[1] = [at.u, at.v];
      else this.draft.points.push([at.u, at.v]);
      this.invalidate();
    }
    this.probe(e);
  }

  pointerUp(e) {
    const drag = this.drag;
    this.drag = null;
    if (!drag || drag.kind !== "measure" || !this.draft) return;
    const draft = this.draft;
    this.draft = null;
    const long = draft.type === "distance" ? Math.hypot(draft.points[1][0] - draft.points[0][0], draft.points[1][1] - draft.points[0][1]) > 0.5 : draft.points.length > 2;
    if (long) {
      const m = measure(this.volume, draft);
      this.measurements.push(m);
      this.dispatchEvent(new CustomEvent("measure", { detail: m }));
    }
    this.changed();
  }

  moveCrosshair(at) {
    if (!at || !this.volume) return;
    const { pane } = at;
    const u = Math.min(Math.floor(at.u), pane.iw - 1);
    const v = Math.min(Math.floor(at.v), pane.ih - 1);
    const voxel = this.volume.voxel(pane.plane, this.slice(pane.plane), u, v);
    if (voxel.k === this.pos.k && voxel.h === this.pos.h && voxel.w === this.pos.w) return;
    this.pos = voxel;
    this.changed();
  }

  probe(e) {
    const at = this.hit(e);
    if (!at || !at.inside) return this.dispatchEvent(new CustomEvent("probe", { detail: null }));
    const voxel = this.volume.voxel(at.pane.plane, this.slice(at.pane.plane), Math.floor(at.u), Math.floor(at.v));
    const o = this.volume.offset(voxel);
    const detail = { voxel, value: this.volume.ct[o], label: this.volume.labels[o], mm: this.volume.mm(voxel), plane: at.pane.plane };
    this.dispatchEvent(new CustomEvent("probe", { detail }));
  }

  wheel(e) {
    const pane = this.paneAt(e.offsetX, e.offsetY);
    if (!pane || !e.deltaY) return;
    e.preventDefault();
    this.setActive(pane.plane);
    this.step(e.deltaY < 0 ? 1 : -1, pane.plane);
  }
}
