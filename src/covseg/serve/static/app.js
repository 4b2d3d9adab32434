// covseg viewer: uploads, the case list, the slice viewer and the burden report.
// Everything is served by `covseg serve` itself; nothing is fetched from elsewhere.
//
// One rule keeps the page consistent: the highlighted case is the one the viewer and the report
// show (its images, its progress, or why it failed), and the toolbar shows the viewer's state.

import { setupCompare } from "./compare.js";
import { setupToolbar, windowOf } from "./controls.js";
import { byFolder, filesIn, SCAN_FILE, sendSeries } from "./folders.js";
import { fmt, renderNothing, renderPending, renderReport } from "./report.js";
import { ThresholdSlider } from "./threshold.js";
import { fetchBytes, send } from "./uploads.js";
import { Viewer } from "./viewer.js";
import { Volume } from "./volume.js";

const $ = (id) => document.getElementById(id);
const viewer = new Viewer($("viewer"));
const threshold = new ThresholdSlider(viewer); // re-thresholds the shown job's infection
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
let syncToolbar = () => {}; // the toolbar follows the viewer (controls.js)

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
/**
 * Upload files and folders ({name, files: Promise<[{file, path}]>}); the first of them the
 * server accepts, in the order given (not the order of the answers), is selected.
 */
function uploadAll(sources) {
  const batch = { epoch: state.epoch, results: sources.map(() => null), done: false };
  sources.forEach((source, i) => {
    performance.mark("covseg:upload", { detail: { name: source.name } });
    const sent = source instanceof File ? uploadOne(source) : uploadFolder(source.name, source.files);
    sent.then((id) => {
      batch.results[i] = id || "";
      settle(batch);
    });
  });
}

/** A folder: a DICOM series sent file by file, or, if it holds only scan files, those. */
async function uploadFolder(name, listing) {
  const id = `u${uploadCounter++}`;
  const up = { name: `${name}/`, loaded: 0, total: 0, files: true };
  state.uploads.set(id, up);
  renderCases();
  const fail = (message) => {
    state.uploads.delete(id);
    showError(message);
    poll();
    return "";
  };
  let files;
  try {
    files = await listing;
  } catch (err) {
    return fail(`${name}: the folder could not be read (${err.message || err})`);
  }
  if (!files.length) return fail(`${name}: the folder holds no files`);
  if (files.every((f) => SCAN_FILE.test(f.file.name))) {
    state.uploads.delete(id);
    const ids = await Promise.all(files.map((f) => uploadOne(f.file)));
    return ids.find(Boolean) || "";
  }
  up.total = files.length;
  renderCases();
  const { job, error } = await sendSeries(name, files, (sent) => {
    up.loaded = sent;
    renderCases();
  });
  if (error) return fail(error);
  state.uploads.delete(id);
  remember(mine, "covseg-mine", job.id);
  state.jobs.push(job);
  poll();
  return job.id;
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
      threshold.sync(job.id); // a recount away from the shipped threshold stays shown
    }
    if (state.shown !== job.id) load(job, label);
  }
}

function renderCases() {
  const list = $("cases");
  list.replaceChildren();
  for (const [id, up] of state.uploads) {
    let detail = `uploading ${Math.round((100 * up.loaded) / Math.max(up.total, 1))} %`;
    if (up.files) detail = up.total ? `uploading ${up.loaded} of ${up.total} files` : "reading the folder…";
    const li = item(up.name, "uploading", detail);
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
  threshold.detach();
  viewer.clear();
  document.body.dataset.shown = "";
}

/** Fetch a done job's arrays and show them; the page stays usable while they arrive. */
async function load(job, label) {
  const token = ++state.loadToken;
  state.shown = job.id;
  threshold.detach();
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
  // The threshold slider's probabilities (threshold.js), if written: they arrive alongside and
  // never hold the image back.
  const prob = job.display.probability;
  const levels = prob ? fetchBytes(prob.url, () => {}).catch(() => null) : Promise.resolve(null);
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
  levels.then((bytes) => {
    if (token === state.loadToken) threshold.attach(job, volume, bytes);
  });
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
    uploadAll(dropped(e.dataTransfer));
  });
}

/** What was dropped: files, and folders ({name, files}) read while they upload. */
function dropped(data) {
  const items = [...(data.items || [])].filter((i) => i.kind === "file");
  if (!items.length) return [...(data.files || [])];
  // Entries and files must be taken now: the drop's data is gone once this event ends.
  return items
    .map((item) => {
      const entry = item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
      if (entry && entry.isDirectory) return { name: entry.name, files: filesIn(entry) };
      return item.getAsFile();
    })
    .filter(Boolean);
}

function setupControls() {
  $("file-input").addEventListener("change", (e) => {
    uploadAll([...e.target.files]);
    e.target.value = "";
  });
  $("folder-input").addEventListener("change", (e) => {
    const groups = byFolder([...e.target.files]);
    uploadAll([...groups].map(([name, files]) => ({ name: name || "folder", files: Promise.resolve(files) })));
    e.target.value = "";
  });
  $("demo").addEventListener("click", demo);
  setupDrop();
  syncToolbar = setupToolbar(viewer, () => state.jobs.find((j) => j.id === state.shown));
  setupCompare(viewer, {
    jobs: () => state.jobs,
    names: labels,
    show: (id) => {
      state.epoch++;
      select(id, false);
    },
  });
  document.body.dataset.viewer = "ready";
}

setupControls();
loadStatus();
poll();
