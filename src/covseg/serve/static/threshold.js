// The threshold slider: the infection mask and its burden recounted live for another threshold
// on the calibrated infection probability (`segment --probabilities`, served as prob.raw).
//
// The recount is the threshold alone: infection = probability >= t within the lungs shown. The
// shipped rule also drops small components and keeps infection within a margin around the
// lungs, so away from the shipped threshold the figures are marked "not the shipped rule"; at
// the shipped threshold the page shows the shipped masks and the report's own figures. The
// report file, the downloads, the plot and the CSV always keep the shipped result.
//
// Labels (volume.js): bit 0 lungs, bit 1 infection, bit 2 left lung, bit 3 right lung (the
// report's split, covseg.inference.burden.lung_sides). A change rewrites bit 1 in one pass over
// the voxels, counting each side on the way, and asks the viewer for one redraw; slider events
// that come faster than frames are coalesced into one recount per frame.

import { fmt } from "./report.js";

const $ = (id) => document.getElementById(id);
const EPS = 1e-9;
const SIDES = [
  ["", 0],
  ["left.", 4],
  ["right.", 8],
];

/** The stored level of threshold t, as covseg.inference.probability.probability_level. */
export function levelOf(t, scale = 255) {
  return Math.min(scale, Math.floor(t * scale) + 1);
}

export class ThresholdSlider {
  /** @param {EventTarget & {invalidate: () => void}} viewer redrawn after each recount */
  constructor(viewer) {
    this.viewer = viewer;
    this.state = null; // {job, volume, levels, base labels, shipped threshold, t, counts}
    this.frame = 0;
    $("threshold-slider").addEventListener("input", () => this.schedule());
    $("threshold-reset").addEventListener("click", () => this.reset());
  }

  /** Offer the slider for a shown job; `prob` is its prob.raw (ArrayBuffer), or null. */
  attach(job, volume, prob) {
    this.detach();
    const info = job.display.probability;
    if (!info || !prob) return;
    const levels = new Uint8Array(prob);
    if (levels.length !== volume.labels.length) return; // not this scan's: no slider
    const shipped = job.report.threshold;
    if (levelOf(shipped, info.scale) !== info.threshold_level) return; // another quantisation
    this.state = { job, volume, levels, base: volume.labels.slice(), shipped, scale: info.scale, t: shipped, counts: null };
    const slider = $("threshold-slider");
    // Steps of 0.01 through the shipped threshold itself, whatever its decimals.
    slider.min = String(Number((shipped - Math.floor(shipped * 100 + EPS) / 100).toFixed(6)));
    slider.max = "1";
    slider.step = "0.01";
    slider.value = String(shipped);
    slider.disabled = false;
    $("threshold").hidden = false;
    this.render(null); // the shipped masks are what the viewer already shows
  }

  /** Show the recount again after the report table was redrawn for job `id`. */
  sync(id) {
    if (this.state && this.state.job.id === id) this.render(this.state.counts);
  }

  /** Forget the job (its volume is gone or another is shown). */
  detach() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.state = null;
    $("threshold").hidden = true;
    $("threshold-slider").disabled = true;
    this.mark(null);
  }

  reset() {
    if (!this.state) return;
    $("threshold-slider").value = String(this.state.shipped);
    this.schedule();
  }

  schedule() {
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        if (this.state) this.apply(Number($("threshold-slider").value));
      });
    }
  }

  /** Recount and redraw for threshold t (the shipped masks at the shipped threshold). */
  apply(t) {
    const s = this.state;
    const atShipped = Math.abs(t - s.shipped) < 1e-6;
    const labels = s.volume.labels;
    const counts = { 0: 0, 4: 0, 8: 0 }; // infection voxels: all, left lung, right lung
    if (atShipped) {
      labels.set(s.base);
    } else {
      const level = levelOf(t, s.scale);
      const { base, levels } = s;
      let [all, left, right] = [0, 0, 0];
      for (let i = 0; i < labels.length; i++) {
        const b = base[i];
        if (b & 1 && levels[i] >= level) {
          labels[i] = b | 2;
          all++;
          if (b & 4) left++;
          else if (b & 8) right++;
        } else {
          labels[i] = b & ~2;
        }
      }
      Object.assign(counts, { 0: all, 4: left, 8: right });
    }
    s.t = atShipped ? s.shipped : t;
    s.counts = atShipped ? null : counts;
    this.render(atShipped ? null : counts);
    this.viewer.invalidate();
  }

  /** The table's infection cells: the report's (counts null: the shipped threshold), else the
   * recount's, in the report's units. */
  render(counts) {
    const s = this.state;
    const report = s.job.report;
    const atShipped = counts === null;
    for (const [prefix, bit] of SIDES) {
      const side = prefix ? report[prefix.slice(0, -1)] : report;
      const voxels = atShipped ? side.infection_voxels : counts[bit];
      const ml = atShipped ? side.infection_volume_ml : report.voxel_volume_ml === null ? null : voxels * report.voxel_volume_ml;
      const pct = atShipped ? side.infection_percent : side.lung_voxels > 0 ? (100 * voxels) / side.lung_voxels : null;
      const mlCell = document.querySelector(`#burden td[data-field='${prefix}infection_volume_ml']`);
      const pctCell = document.querySelector(`#burden td[data-field='${prefix}infection_percent']`);
      mlCell.dataset.value = JSON.stringify(ml);
      mlCell.dataset.voxels = voxels;
      mlCell.textContent = ml === null ? `${voxels} px` : `${fmt(ml, 1)} mL`;
      pctCell.dataset.value = JSON.stringify(pct);
      pctCell.textContent = pct === null ? "–" : `${fmt(pct, 2)} %`;
    }
    $("threshold-value").textContent = label(s.t);
    $("threshold-reset").disabled = atShipped;
    this.mark(atShipped ? null : s.t);
  }

  /** Show (t) or hide (null) the "not the shipped rule" marker. */
  mark(t) {
    const marker = $("threshold-marker");
    const table = $("burden");
    marker.hidden = t === null;
    table.classList.toggle("not-shipped", t !== null);
    if (t === null) {
      delete table.dataset.threshold;
      return;
    }
    const shipped = this.state.shipped;
    table.dataset.threshold = String(t);
    marker.textContent = `threshold ${label(t)} (not the shipped rule)`;
    marker.title =
      `Infection recounted as calibrated probability ≥ ${label(t)} within the lungs shown, the threshold alone. ` +
      `The shipped rule (threshold ${label(shipped)}) also removes small components and keeps infection near the lungs; ` +
      "the report file, the downloads, the plot and the CSV keep the shipped result.";
  }
}

function label(t) {
  return String(Number(t.toFixed(4)));
}
