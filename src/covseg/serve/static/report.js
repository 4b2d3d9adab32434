// The burden report panel: the table, the infection along the scan, the downloads.

const DOWNLOADS = [
  ["lungs", "Lung mask"],
  ["infection", "Infection mask"],
  ["report", "Report (JSON)"],
  ["overlay", "Overlay figure"],
  ["probability", "Infection probability (uint8)"],
];
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

export function fmt(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function field(report, path) {
  return path.split(".").reduce((obj, key) => (obj == null ? null : obj[key]), report);
}

/** The panel for a job that is not done: what it is doing, or why it failed. */
export function renderPending(job, label) {
  $("report-empty").hidden = true;
  $("report-body").hidden = true;
  $("report-status").hidden = false;
  $("report").dataset.job = job.id;
  $("report-status-title").textContent = label;
  const text = job.state === "failed" ? `Failed: ${job.error}` : job.state === "queued" ? "Waiting for its turn…" : `${job.stage}…`;
  $("report-status-text").textContent = text;
  $("report-status").dataset.state = job.state;
}

export function renderNothing() {
  $("report-empty").hidden = false;
  $("report-body").hidden = true;
  $("report-status").hidden = true;
  delete $("report").dataset.job;
}

/** The report of a done job; `onSlice(k)` is called when a slice of the plot is clicked. */
export function renderReport(job, label, onSlice) {
  const report = job.report;
  $("report-empty").hidden = true;
  $("report-status").hidden = true;
  $("report-body").hidden = false;
  $("report").dataset.job = job.id;
  $("report-title").textContent = label;
  for (const cell of $("burden").querySelectorAll("td[data-field]")) {
    const path = cell.dataset.field;
    const value = field(report, path);
    cell.dataset.value = JSON.stringify(value);
    if (path.endsWith("_percent")) cell.textContent = value === null ? "–" : `${fmt(value, 2)} %`;
    else if (value !== null) cell.textContent = `${fmt(value, 1)} mL`;
    else cell.textContent = `${field(report, path.replace("volume_ml", "voxels"))} px`;
  }
  // A calibrated model's expected burden and its interval (out-of-fold coverage stated).
  const est = report.infection_estimate;
  const estEl = $("burden-estimate");
  estEl.hidden = !est;
  if (est) {
    const iv = est.interval_percent;
    const cover = est.interval_coverage_out_of_fold;
    estEl.textContent = `Calibrated estimate: ${fmt(est.expected_percent, 2)} % infected` +
      (iv ? `, interval ${fmt(iv[0], 2)}–${fmt(iv[1], 2)} %` : "") +
      (cover !== null && cover !== undefined ? ` (held the expert's burden for ${Math.round(100 * cover)} % of out-of-fold cases)` : "") +
      (est.headline === "expected" ? "; the expected value is the headline figure" : "");
  }
  const spacing = report.spacing_mm ? report.spacing_mm.map((v) => fmt(v, 2)).join(" × ") + " mm" : "pixel size unknown";
  $("report-meta").textContent = `${report.shape.join(" × ")} voxels, ${spacing}; intensities ${report.intensity_rule}; threshold ${Number(report.threshold).toFixed(3)}; model ${report.model_id.slice(0, 12)}; covseg ${report.covseg_version}`;
  // One slice (a picture) has no "along the scan".
  $("along").hidden = report.infection_area_per_slice.length < 2;
  renderPlot(report, onSlice);
  const list = $("downloads");
  list.replaceChildren();
  for (const [key, text] of DOWNLOADS) {
    const file = job.downloads[key];
    if (!file) continue;
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = file.url;
    a.download = file.filename;
    a.dataset.download = key;
    a.textContent = text;
    const name = document.createElement("span");
    name.className = "hint";
    name.textContent = ` ${file.filename}`;
    li.append(a, name);
    list.append(li);
  }
}

function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

function renderPlot(report, onSlice) {
  const plot = $("plot");
  const areas = report.infection_area_per_slice;
  const n = areas.length;
  const [W, H] = [320, 150];
  const pad = { l: 44, r: 8, t: 10, b: 22 };
  const max = Math.max(...areas, 0);
  const unit = report.area_unit === "mm2" ? "mm²" : "px";
  plot.setAttribute("viewBox", `0 0 ${W} ${H}`);
  plot.replaceChildren();
  const bw = (W - pad.l - pad.r) / n;
  const y = (a) => H - pad.b - (max > 0 ? (a / max) * (H - pad.t - pad.b) : 0);
  plot.append(svg("line", { x1: pad.l, y1: H - pad.b, x2: W - pad.r, y2: H - pad.b, class: "axis" }));
  plot.append(svg("line", { x1: pad.l, y1: pad.t, x2: pad.l, y2: H - pad.b, class: "axis" }));
  const text = (attrs, value) => {
    const el = svg("text", { class: "tick", ...attrs });
    el.textContent = value;
    plot.append(el);
  };
  text({ x: pad.l - 4, y: pad.t + 8, "text-anchor": "end" }, max >= 100 ? Math.round(max) : fmt(max, 1));
  text({ x: pad.l - 4, y: H - pad.b, "text-anchor": "end" }, "0");
  text({ x: pad.l, y: H - 6 }, "1");
  text({ x: W - pad.r, y: H - 6, "text-anchor": "end" }, String(n));
  $("plot-unit").textContent = `(${unit} per slice)`;
  areas.forEach((a, k) => {
    const x = pad.l + k * bw;
    const bar = svg("rect", { x: x + bw * 0.1, y: y(a), width: Math.max(bw * 0.8, 0.5), height: H - pad.b - y(a), class: "bar" });
    // A full-height hit area per slice: the whole column is clickable.
    const hit = svg("rect", { x, y: pad.t, width: bw, height: H - pad.t - pad.b, class: "hit", "data-slice": k });
    const title = svg("title", {});
    title.textContent = `slice ${k + 1} of ${n}: ${fmt(a, 1)} ${unit}`;
    hit.append(title);
    hit.addEventListener("click", () => onSlice(k));
    plot.append(bar, hit);
  });
  // Drawn last (on top), so it must let clicks through to the slice under it (CSS).
  plot.append(svg("line", { id: "plot-marker", x1: 0, y1: pad.t, x2: 0, y2: H - pad.b, class: "marker", visibility: "hidden" }));
  Object.assign(plot.dataset, { slices: n, left: pad.l, width: W - pad.l - pad.r });
}

/** Put the plot's marker on axial slice k (of n). */
export function markSlice(k, n) {
  const marker = $("plot-marker");
  const plot = $("plot");
  if (!marker || Number(plot.dataset.slices) !== n) return;
  const x = Number(plot.dataset.left) + ((k + 0.5) * Number(plot.dataset.width)) / n;
  marker.setAttribute("x1", x);
  marker.setAttribute("x2", x);
  marker.setAttribute("visibility", "visible");
}
