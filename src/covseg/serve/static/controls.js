// The viewer's toolbar and read-outs: they show the viewer's state after each of its changes
// (never a state of their own), and turn clicks, fields and keys into the viewer's changes.

import { markSlice } from "./report.js";
import { LAYOUTS } from "./viewer.js";

// Window presets (width, level) in HU.
export const PRESETS = { lung: [1500, -600], mediastinum: [350, 40], bone: [2000, 400] };
const VIEW_ORDER = Object.keys(LAYOUTS);
const PAGE = 10; // slices per Page Up / Page Down
const TITLES = { axial: "Axial", coronal: "Coronal", sagittal: "Sagittal" };
const $ = (id) => document.getElementById(id);

/**
 * Wire the toolbar to `viewer`; `current()` is the job shown or loading (or undefined).
 * @returns {() => void} brings the toolbar up to date (also called on each viewer change)
 */
export function setupToolbar(viewer, current) {
  const sync = () => syncToolbar(viewer, current());
  for (const b of document.querySelectorAll("button.view")) b.addEventListener("click", () => viewer.setView(b.dataset.view));
  for (const b of document.querySelectorAll("button.tool")) b.addEventListener("click", () => viewer.setTool(b.dataset.tool));
  $("slice-slider").addEventListener("input", (e) => viewer.setSlice(viewer.active, Number(e.target.value) - 1));
  $("slice-number").addEventListener("change", (e) => viewer.setSlice(viewer.active, Number(e.target.value) - 1));
  $("window").addEventListener("change", (e) => {
    if (viewer.volume && e.target.value !== "custom") {
      const { width, level } = windowOf(e.target.value, viewer.volume);
      viewer.setWindow(width, level);
    }
  });
  for (const id of ["ww", "wl"]) $(id).addEventListener("change", () => viewer.setWindow(Number($("ww").value), Number($("wl").value)));
  const overlays = () => {
    for (const what of ["lungs", "infection"]) {
      viewer.setOpacity(what, $(`show-${what}`).checked ? Number($(`opacity-${what}`).value) / 100 : 0);
    }
  };
  for (const id of ["show-lungs", "show-infection", "opacity-lungs", "opacity-infection"]) $(id).addEventListener("input", overlays);
  $("clear-measurements").addEventListener("click", () => viewer.clearMeasurements());
  $("save-png").addEventListener("click", () => savePNG(viewer, current()));
  window.addEventListener("keydown", (e) => onKey(viewer, e), true);
  viewer.addEventListener("change", sync);
  viewer.addEventListener("probe", (e) => renderProbe(viewer, e.detail));
  sync();
  return sync;
}

/** The window {width, level} of a preset ("full": the scan's whole range). */
export function windowOf(preset, volume) {
  if (PRESETS[preset]) return { width: PRESETS[preset][0], level: PRESETS[preset][1] };
  const [lo, hi] = volume.range;
  return { width: Math.max(hi - lo, 1), level: (lo + hi) / 2 };
}

function syncToolbar(viewer, job) {
  const volume = viewer.volume;
  // A picture (one slice) has no coronal or sagittal view (known while it loads too).
  const single = job && job.display && job.display.shape[0] === 1;
  for (const b of document.querySelectorAll("button.view")) {
    b.classList.toggle("active", b.dataset.view === viewer.view);
    b.setAttribute("aria-pressed", String(b.dataset.view === viewer.view));
    b.disabled = single && b.dataset.view !== "AXIAL";
  }
  for (const b of document.querySelectorAll("button.tool")) b.classList.toggle("active", b.dataset.tool === viewer.tool);
  const n = viewer.count();
  const k = volume ? viewer.slice() + 1 : 1;
  $("slice-plane").textContent = TITLES[viewer.active];
  for (const input of [$("slice-slider"), $("slice-number")]) {
    input.max = Math.max(n, 1);
    if (document.activeElement !== input || input.type === "range") input.value = k;
    input.disabled = n < 2;
  }
  $("slice-count").textContent = `/ ${n || "–"}`;
  const { width, level } = viewer.window;
  if (document.activeElement !== $("ww")) $("ww").value = round(width);
  if (document.activeElement !== $("wl")) $("wl").value = round(level);
  const preset = Object.keys(PRESETS).find((p) => PRESETS[p][0] === width && PRESETS[p][1] === level);
  const full = volume && width === windowOf("full", volume).width && level === windowOf("full", volume).level;
  $("window").value = preset || (full ? "full" : "custom");
  $("save-png").disabled = !volume;
  $("clear-measurements").disabled = !viewer.measurements.length;
  renderSliceInfo(viewer);
  renderMeasurements(viewer);
}

function round(x) {
  return Math.round(x * 10) / 10;
}

function renderSliceInfo(viewer) {
  const info = $("slice-info");
  const volume = viewer.volume;
  if (!volume) {
    info.textContent = "";
    return;
  }
  const mm = volume.mm(viewer.pos);
  const parts = [];
  for (const [plane, axis] of [["axial", 2], ["coronal", 1], ["sagittal", 0]]) {
    if (volume.count(plane) < 2 && plane !== "axial") continue;
    const where = mm ? ` (${"xyz"[axis]} ${mm[axis].toFixed(1)} mm)` : "";
    parts.push(`${TITLES[plane]} ${viewer.slice(plane) + 1} / ${viewer.count(plane)}${where}`);
    info.dataset[plane] = viewer.slice(plane);
  }
  info.textContent = parts.join(" · ");
  info.dataset.slice = viewer.slice("axial"); // the report's slice
  markSlice(viewer.slice("axial"), volume.shape.n);
}

function renderMeasurements(viewer) {
  const list = $("measurements");
  list.replaceChildren();
  viewer.measurements.forEach((m, i) => {
    const li = document.createElement("li");
    li.dataset.type = m.type;
    li.dataset.value = m.value;
    if (m.mean !== undefined && m.mean !== null) li.dataset.mean = m.mean;
    li.textContent = `${m.type === "distance" ? "Distance" : "Area"} on ${m.plane} ${m.index + 1}: ${m.text}`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "close";
    remove.textContent = "×";
    remove.setAttribute("aria-label", "Remove the measurement");
    remove.addEventListener("click", () => {
      viewer.measurements.splice(i, 1);
      viewer.changed();
    });
    li.append(remove);
    list.append(li);
  });
}

function renderProbe(viewer, detail) {
  const probe = $("probe");
  if (!detail) {
    probe.textContent = "";
    delete probe.dataset.value;
    return;
  }
  const { voxel, value, label, mm } = detail;
  const volume = viewer.volume;
  const shown = volume.integer ? String(value) : value.toFixed(1);
  const what = label & 2 ? ", infection" : label & 1 ? ", lung" : "";
  const where = mm ? ` · (${mm.map((v) => v.toFixed(1)).join(", ")}) mm` : "";
  probe.textContent = `${shown}${volume.hu ? " HU" : ""}${what} · slice ${voxel.k + 1}, row ${voxel.h + 1}, column ${voxel.w + 1}${where}`;
  Object.assign(probe.dataset, { value, k: voxel.k, h: voxel.h, w: voxel.w, label });
}

async function savePNG(viewer, job) {
  const blob = await viewer.toPNG();
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  const plane = viewer.view === "ALL" ? "all" : viewer.active;
  a.download = `${job ? job.case : "view"}_${plane}_${viewer.slice() + 1}.png`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

/** Our keys, taken before anything else sees them; fields keep their own keys. */
function onKey(viewer, e) {
  const t = e.target;
  const field = t instanceof HTMLElement && t.matches("input:not([type=checkbox]), select, textarea");
  if (field || e.ctrlKey || e.metaKey || e.altKey || !viewer.volume) return;
  const n = viewer.count();
  const steps = { ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: PAGE, PageDown: -PAGE };
  if (e.key in steps) viewer.step(steps[e.key]);
  else if (e.key === "Home") viewer.setSlice(viewer.active, 0);
  else if (e.key === "End") viewer.setSlice(viewer.active, n - 1);
  else if (e.key === "v" || e.key === "V") nextView(viewer);
  else return;
  e.preventDefault();
  e.stopPropagation();
}

function nextView(viewer) {
  const usable = VIEW_ORDER.filter((v) => !document.querySelector(`button.view[data-view='${v}']`).disabled);
  viewer.setView(usable[(usable.indexOf(viewer.view) + 1) % usable.length]);
}
