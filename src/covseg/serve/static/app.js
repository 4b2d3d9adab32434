// covseg viewer: uploads, the case list, the slice viewer and the burden report.
// Everything is served by `covseg serve` itself; nothing is fetched from elsewhere.
//
// One rule keeps the page consistent: the highlighted case is the one the viewer and the report
// show (its images, its progress, or why it failed), and the toolbar shows the viewer's state.

import { fmt, markSlice, renderNothing, renderPending, renderReport } from "./report.js";
import { fetchBytes, send } from "./uploads.js";
import { LAYOUTS, Viewer } from "./viewer.js";
import { Volume } from "./volume.js";

// Window presets (width, level) in HU.
const PRESETS = { lung: [1500, -600], mediastinum: [350, 40], bone: [2000, 400] };
const VIEW_ORDER = Object.keys(LAYOUTS);
const PAGE = 10; // slices per Page Up / Page Down
const TITLES = { axial: "Axial", coronal: "Coronal", sagittal: "Sagittal" };

const $ = (id) => document.getElementById(id);
const viewer = new Viewer($("viewer"));
const state = {
  status: null,
  jobs: [],
  uploads: new Map(), // local id -> {name, loaded, total}
  selected: null, // the job the viewer and the report are about
  auto: false, // selected by an upload (not by a click): a failure goes back to `previous`
  previous: null, // the done job shown before an upload took the selection
  epoch: 0, // bumped by each click on a case: an upload batch no longer takes the selection
  shown: null, // the job whose arrays the viewer holds (or is loading)
  loadToken: 0,
};
// Failures this tab has already announced, and the jobs it submitted: a reload announces
// neither old failures again nor other tabs' failures.
const alerted = new Set(JSON.parse(sessionStorage.getItem("covseg-alerted") || "[]"));
const mine = new Set(JSON.parse(sessionStorage.getItem("covseg-mine") || "[]"));
let uploadCounter = 0;

function remember(set, key, id) {
  set.add(id);
  sessionStorage.setItem(key, JSON.stringify([...set]));
}

// ---------------------------------------------------------------------------- errors
function showError(message) {
  const box = document.createElement("div");
  box.className = "error";
  const text = document.createElement("span");
  text.className = "error-text";
  text.textContent = message;
  const close = document.createElement("button");
  close.type = "button";
  close.className = "close";
  close.setAttribute("aria-label", "Dismiss");
  close.textContent = "×";
  close.addEventListener("click", () => box.remove());
  box.append(text, close);
  $("errors").prepend(box);
}

// --------------------------------------------------------------------------- uploads
/** Upload files; the first of them the server accepts (in the order given) is selected. */
function uploadAll(files) {
  const batch = { epoch: state.epoch, results: files.map(() => null), done: false };
  files.forEach((file, i) => {
    performance.mark("covseg:upload", { detail: { name: file.name } });
    uploadOne(file).then((id) => {
      batch.results[i] = id || "";
      settle(batch);
    });
  });
}

function settle(batch) {
  if (batch.done || batch.epoch !== state.epoch) return;
  for (const id of batch.results) {
    if (id === null) return; // an earlier file is still on its way
    if (id) {
      batch.done = true;
      select(id, true);
      return;
    }
  }
}

/** One file; resolves to the new job's id, or "" when it was refused. */
async function uploadOne(file) {
  const limit = state.status ? state.status.max_upload_bytes : Infinity;
  if (file.size > limit) {
    showError(`${file.name}: larger than the upload limit of ${mib(limit)} (covseg serve --max-upload-mb raises it)`);
    return "";
  }
  const id = `u${uploadCounter++}`;
  state.uploads.set(id, { name: file.name, loaded: 0, total: file.size });
  renderCases();
  const url = `/api/jobs?name=${encodeURIComponent(file.name)}`;
  const { status, body } = await send(url, file, (loaded) => {
    state.uploads.get(id).loaded = loaded;
    renderCases();
  });
  state.uploads.delete(id);
  if (status !== 202) {
    const why = status ? `the upload failed (HTTP ${status})` : "the upload failed (the server refused or the connection was lost)";
    showError(body.error || `${file.name}: ${why}`);
    poll();
    return "";
  }
  remember(mine, "covseg-mine", body.id);
  state.jobs.push(body);
  poll();
  return body.id;
}

async function demo() {
  try {
    const response = await fetch("/api/demo", { method: "POST" });
    const body = await response.json();
    if (response.status !== 202) throw new Error(body.error || `HTTP ${response.status}`);
    remember(mine, "covseg-mine", body.id);
    state.jobs.push(body);
    state.epoch++;
    select(body.id, true);
  } catch (err) {
    showError(`demo: ${err.message || err}`);
  }
  poll();
}

// ------------------------------------------------------------------------------ jobs
let pollTimer = null;
async function poll() {
  clearTimeout(pollTimer);
  try {
    const response = await fetch("/api/jobs", { cache: "no-store" });
    state.jobs = (await response.json()).jobs;
  } catch (_) {
    // The server is gone (stopped) or busy: keep the page, try again.
  }
  for (const job of state.jobs) {
    if (job.state === "failed" && mine.has(job.id) && !alerted.has(job.id)) {
      remember(alerted, "covseg-alerted", job.id);
      showError(job.error && job.error.startsWith(job.name) ? job.error : `${job.name}: ${job.error}`);
      if (job.id === state.selected && state.auto) select(state.previous, false);
    }
  }
  if (state.selected) {
    const job = state.jobs.find((j) => j.id === state.selected);
    if (job && job.state === "done" && !performance.getEntriesByName(`covseg:done:${job.id}`).length) {
      performance.mark(`covseg:done:${job.id}`);
    }
  }
  refresh();
  const busy = state.uploads.size || state.jobs.some((j) => j.state === "queued" || j.state === "running");
  pollTimer = setTimeout(poll, busy ? 500 : 2500);
}

/** Names as the list shows them: a second upload of the same name is "name (2)". */
function labels() {
  const seen = new Map();
  const out = new Map();
  for (const job of state.jobs) {
    const n = (seen.get(job.name) || 0) + 1;
    seen.set(job.name, n);
    out.set(job.id, n > 1 ? `${job.name} (${n})` : job.name);
  }
  return out;
}

function select(id, auto) {
  const current = state.jobs.find((j) => j.id === state.selected);
  if (auto && current && current.state === "done") state.previous = current.id;
  state.selected = id;
  state.auto = auto;
  refresh();
}

/** Make the list, the report and the viewer show the selected job. */
function refresh() {
  renderCases();
  const job = state.jobs.find((j) => j.id === state.selected);
  const label = job ? labels().get(job.id) : "";
  if (!job) {
    renderNothing();
    if (state.shown) unload();
    showMessage("No scan shown yet.", true);
  } else if (job.state !== "done") {
    renderPending(job, label);
    if (state.shown) unload();
    const what = job.state === "failed" ? `Failed: ${job.error}` : `${label}: ${job.state === "queued" ? "waiting" : job.stage}…`;
    showMessage(what, false);
  } else {
    if (($("report").dataset.job || "") !== job.id || $("report-body").hidden) {
      renderReport(job, label, (k) => viewer.setSlice("axial", k));
    }
    if (state.shown !== job.id) load(job, label);
  }
}

function renderCases() {
  const list = $("cases");
  list.replaceChildren();
  for (const [id, up] of state.uploads) {
    const li = item(up.name, "uploading", `uploading ${Math.round((100 * up.loaded) / Math.max(up.total, 1))} %`);
    li.dataset.upload = id;
    list.append(li);
  }
  const names = labels();
  for (const job of [...state.jobs].reverse()) {
    let detail = job.stage;
    if (job.state === "queued") detail = job.position ? `waiting (${job.position} in the queue)` : "waiting";
    if (job.state === "done") detail = job.report.lung_found ? `${fmt(job.report.infection_percent, 2)} % infected` : "no lung found";
    if (job.state === "failed") detail = job.error;
    const when = new Date(job.submitted * 1000).toLocaleTimeString([], { hour12: false });
    const li = item(names.get(job.id), job.state, `${when} · ${detail || ""}`);
    li.dataset.job = job.id;
    if (job.id === state.selected) li.classList.add("selected");
    li.addEventListener("click", () => {
      state.epoch++;
      select(job.id, false);
    });
    list.append(li);
  }
  if (!list.children.length) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "None yet.";
    list.append(li);
  }
}

function item(name, jobState, detail) {
  const li = document.createElement("li");
  li.className = `case state-${jobState}`;
  li.dataset.state = jobState;
  const title = document.createElement("span");
  title.className = "case-name";
  title.textContent = name;
  title.title = name;
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.textContent = jobState;
  const info = document.createElement("span");
  info.className = "case-detail";
  info.textContent = detail || "";
  li.append(title, badge, info);
  return li;
}

// ---------------------------------------------------------------------------- viewer
function showMessage(text, intro) {
  $("viewer-message").textContent = text;
  $("viewer-intro").hidden = !intro;
  $("viewer-empty").hidden = false;
}

function unload() {
  state.shown = null;
  state.loadToken++;
  $("viewer-loading").hidden = true;
  viewer.clear();
  document.body.dataset.shown = "";
}

/** Fetch a done job's arrays and show them; the page stays usable while they arrive. */
async function load(job, label) {
  const token = ++state.loadToken;
  state.shown = job.id;
  viewer.clear();
  document.body.dataset.shown = "";
  $("viewer-empty").hidden = true;
  $("viewer-loading").hidden = false;
  $("loading-text").textContent = `Loading ${label}…`;
  syncToolbar();
  const voxels = job.display.shape.reduce((a, b) => a * b, 1);
  const total = voxels * (job.display.dtype === "int16" ? 3 : 5); // the scan and the labels
  const got = { ct: 0, labels: 0 };
  $("loading-bar").value = 0;
  const progress = (key) => (received) => {
    got[key] = received;
    if (token === state.loadToken) $("loading-bar").value = (got.ct + got.labels) / total;
  };
  let volume;
  try {
    const [ct, labels] = await Promise.all([fetchBytes(job.display.ct, progress("ct")), fetchBytes(job.display.labels, progress("labels"))]);
    if (token !== state.loadToken) return; // another case was chosen meanwhile
    volume = new Volume(job.display, ct, labels, job.report.intensity_rule === "hu");
  } catch (err) {
    if (token !== state.loadToken) return;
    $("viewer-loading").hidden = true;
    showMessage(`${label}: the viewer could not load the scan (${err.message || err})`, false);
    return;
  }
  $("viewer-loading").hidden = true;
  const hu = volume.hu;
  for (const option of $("window").options) option.disabled = !hu && option.value !== "full" && option.value !== "custom";
  viewer.show(volume, windowOf(hu ? "lung" : "full", volume));
  viewer.addEventListener(
    "render",
    () => {
      if (token !== state.loadToken) return;
      performance.mark("covseg:image", { detail: { job: job.id } });
      document.body.dataset.shown = job.id;
    },
    { once: true },
  );
}

function windowOf(preset, volume) {
  if (PRESETS[preset]) return { width: PRESETS[preset][0], level: PRESETS[preset][1] };
  const [lo, hi] = volume.range;
  return { width: Math.max(hi - lo, 1), level: (lo + hi) / 2 };
}

/** The toolbar and the read-outs show the viewer's state (called on each of its changes). */
function syncToolbar() {
  const volume = viewer.volume;
  // The case shown or loading: a picture (one slice) has no coronal or sagittal view.
  const job = state.jobs.find((j) => j.id === state.shown);
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
  renderSliceInfo();
  renderMeasurements();
}

function round(x) {
  return Math.round(x * 10) / 10;
}

function renderSliceInfo() {
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

function renderMeasurements() {
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

function renderProbe(detail) {
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

async function savePNG() {
  const job = state.jobs.find((j) => j.id === state.shown);
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

// ------------------------------------------------------------------------------ keys
/** Our keys, taken before anything else sees them; fields keep their own keys. */
function onKey(e) {
  const t = e.target;
  const field = t instanceof HTMLElement && t.matches("input:not([type=checkbox]), select, textarea");
  if (field || e.ctrlKey || e.metaKey || e.altKey || !viewer.volume) return;
  const n = viewer.count();
  const steps = { ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: PAGE, PageDown: -PAGE };
  if (e.key in steps) viewer.step(steps[e.key]);
  else if (e.key === "Home") viewer.setSlice(viewer.active, 0);
  else if (e.key === "End") viewer.setSlice(viewer.active, n - 1);
  else if (e.key === "v" || e.key === "V") nextView();
  else return;
  e.preventDefault();
  e.stopPropagation();
}

function nextView() {
  const usable = VIEW_ORDER.filter((v) => !document.querySelector(`button.view[data-view='${v}']`).disabled);
  viewer.setView(usable[(usable.indexOf(viewer.view) + 1) % usable.length]);
}

// ----------------------------------------------------------------------------- setup
function mib(bytes) {
  return `${Math.round(bytes / 2 ** 20)} MiB`;
}

async function loadStatus() {
  try {
    const status = await (await fetch("/api/status", { cache: "no-store" })).json();
    state.status = status;
    $("limit").textContent = `Up to ${mib(status.max_upload_bytes)} per file. Files stay on this machine.`;
    $("exposed").hidden = status.private;
    const model = $("model-status");
    model.dataset.state = status.model.state;
    model.textContent = { loading: "model loading…", ready: "model ready", failed: `model failed: ${status.model.error}` }[status.model.state];
    if (status.model.state === "loading") setTimeout(loadStatus, 1000);
  } catch (_) {
    setTimeout(loadStatus, 2000);
  }
}

function setupDrop() {
  const drop = document.body;
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    $("drop").classList.add("over");
  });
  drop.addEventListener("dragleave", (e) => {
    if (e.target === document.body || e.target === $("drop")) $("drop").classList.remove("over");
  });
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    $("drop").classList.remove("over");
    const items = [...(e.dataTransfer.items || [])];
    const folders = new Set(items.map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter((en) => en && en.isDirectory).map((en) => en.name));
    for (const name of folders) showError(`${name}: a folder; zip the DICOM series folder and drop the .zip`);
    uploadAll([...e.dataTransfer.files].filter((f) => !folders.has(f.name)));
  });
}

function setupControls() {
  $("file-input").addEventListener("change", (e) => {
    uploadAll([...e.target.files]);
    e.target.value = "";
  });
  $("demo").addEventListener("click", demo);
  setupDrop();
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
  $("save-png").addEventListener("click", savePNG);
  window.addEventListener("keydown", onKey, true);
  viewer.addEventListener("change", syncToolbar);
  viewer.addEventListener("probe", (e) => renderProbe(e.detail));
  syncToolbar();
  document.body.dataset.viewer = "ready";
}

setupControls();
loadStatus();
poll();
