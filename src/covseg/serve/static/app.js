// covseg viewer: uploads, the job list, the NiiVue viewer and the burden report.
// Everything is served by `covseg serve` itself; NiiVue is the copy that `make` vendored.

const VIEWER_MODULE = "/static/vendor/niivue/niivue.js";
// Window presets (width, level) in HU.
const PRESETS = { lung: [1500, -600], mediastinum: [350, 40] };
const COLORMAPS = {
  "covseg-lungs": { R: [0, 40], G: [0, 220], B: [0, 90], A: [0, 255], I: [0, 255] },
  "covseg-infection": { R: [0, 255], G: [0, 30], B: [0, 30], A: [0, 255], I: [0, 255] },
};
const DOWNLOADS = [
  ["lungs", "Lung mask"],
  ["infection", "Infection mask"],
  ["report", "Report (JSON)"],
  ["overlay", "Overlay figure"],
];

const $ = (id) => document.getElementById(id);
const state = {
  status: null,
  jobs: [],
  uploads: new Map(), // local id -> {name, loaded, total}
  selected: null, // job id shown (or waited for)
  shown: null, // job id whose volumes are in the viewer
  failedSeen: new Set(),
  nv: null,
  NV: null, // the NiiVue module
  fullRange: null,
};
let uploadCounter = 0;

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
function upload(file) {
  const limit = state.status ? state.status.max_upload_bytes : Infinity;
  if (file.size > limit) {
    showError(`${file.name}: larger than the upload limit of ${mib(limit)} (covseg serve --max-upload-mb raises it)`);
    return;
  }
  const id = `u${uploadCounter++}`;
  state.uploads.set(id, { name: file.name, loaded: 0, total: file.size });
  renderCases();
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `/api/jobs?name=${encodeURIComponent(file.name)}`);
  xhr.setRequestHeader("Content-Type", "application/octet-stream");
  xhr.upload.addEventListener("progress", (e) => {
    const entry = state.uploads.get(id);
    if (entry && e.lengthComputable) {
      entry.loaded = e.loaded;
      renderCases();
    }
  });
  xhr.addEventListener("load", () => {
    state.uploads.delete(id);
    let body = {};
    try {
      body = JSON.parse(xhr.responseText || "{}");
    } catch (_) {
      body = {};
    }
    if (xhr.status === 202) {
      state.selected = body.id;
    } else {
      showError(body.error || `${file.name}: the upload failed (HTTP ${xhr.status})`);
    }
    poll();
  });
  xhr.addEventListener("error", () => {
    state.uploads.delete(id);
    showError(`${file.name}: the upload failed (the server refused or the connection was lost)`);
    poll();
  });
  xhr.send(file);
}

function uploadAll(files) {
  for (const file of files) upload(file);
}

async function demo() {
  try {
    const response = await fetch("/api/demo", { method: "POST" });
    const body = await response.json();
    if (response.status === 202) state.selected = body.id;
    else showError(body.error || `demo: HTTP ${response.status}`);
  } catch (err) {
    showError(`demo: ${err}`);
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
    if (job.state === "failed" && !state.failedSeen.has(job.id)) {
      state.failedSeen.add(job.id);
      showError(job.error && job.error.startsWith(job.name) ? job.error : `${job.name}: ${job.error}`);
    }
  }
  renderCases();
  const selected = state.jobs.find((j) => j.id === state.selected);
  if (selected && selected.state === "done" && state.shown !== selected.id) show(selected);
  const busy = state.uploads.size || state.jobs.some((j) => j.state === "queued" || j.state === "running");
  pollTimer = setTimeout(poll, busy ? 500 : 2500);
}

function renderCases() {
  const list = $("cases");
  list.replaceChildren();
  for (const [id, up] of state.uploads) {
    const li = item(up.name, "uploading", `uploading ${Math.round((100 * up.loaded) / Math.max(up.total, 1))} %`);
    li.dataset.upload = id;
    list.append(li);
  }
  for (const job of [...state.jobs].reverse()) {
    let detail = job.stage;
    if (job.state === "queued") detail = job.position ? `waiting (${job.position} in the queue)` : "waiting";
    if (job.state === "done") detail = job.report.lung_found ? `${fmt(job.report.infection_percent, 2)} % infected` : "no lung found";
    if (job.state === "failed") detail = job.error;
    const li = item(job.name, job.state, detail);
    li.dataset.job = job.id;
    if (job.id === state.selected) li.classList.add("selected");
    li.addEventListener("click", () => {
      state.selected = job.id;
      if (job.state === "done") show(job);
      renderCases();
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
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.textContent = jobState;
  const info = document.createElement("span");
  info.className = "case-detail";
  info.textContent = detail || "";
  li.append(title, badge, info);
  return li;
}

// ---------------------------------------------------------------------------- report
function fmt(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function field(report, path) {
  return path.split(".").reduce((obj, key) => (obj == null ? null : obj[key]), report);
}

function renderReport(job) {
  const report = job.report;
  $("report-empty").hidden = true;
  $("report-body").hidden = false;
  $("report").dataset.job = job.id;
  $("report-title").textContent = job.case;
  for (const cell of $("burden").querySelectorAll("td[data-field]")) {
    const path = cell.dataset.field;
    const value = field(report, path);
    cell.dataset.value = JSON.stringify(value);
    if (path.endsWith("_percent")) cell.textContent = value === null ? "–" : `${fmt(value, 2)} %`;
    else if (value !== null) cell.textContent = `${fmt(value, 1)} mL`;
    else cell.textContent = `${field(report, path.replace("volume_ml", "voxels"))} px`;
  }
  const spacing = report.spacing_mm ? report.spacing_mm.map((v) => fmt(v, 2)).join(" × ") + " mm" : "pixel size unknown";
  $("report-meta").textContent = `${report.shape.join(" × ")} voxels, ${spacing}; intensities ${report.intensity_rule}; threshold ${report.threshold}; model ${report.model_id.slice(0, 12)}; covseg ${report.covseg_version}`;
  renderPlot(report);
  const list = $("downloads");
  list.replaceChildren();
  for (const [key, label] of DOWNLOADS) {
    const file = job.downloads[key];
    if (!file) continue;
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = file.url;
    a.download = file.filename;
    a.dataset.download = key;
    a.textContent = label;
    const name = document.createElement("span");
    name.className = "hint";
    name.textContent = ` ${file.filename}`;
    li.append(a, name);
    list.append(li);
  }
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

function renderPlot(report) {
  const plot = $("plot");
  const areas = report.infection_area_per_slice;
  const n = areas.length;
  const W = 320;
  const H = 150;
  const pad = { l: 44, r: 8, t: 10, b: 22 };
  const max = Math.max(...areas, 0);
  const unit = report.area_unit === "mm2" ? "mm²" : "px";
  plot.setAttribute("viewBox", `0 0 ${W} ${H}`);
  plot.replaceChildren();
  const bw = (W - pad.l - pad.r) / n;
  const y = (a) => H - pad.b - (max > 0 ? (a / max) * (H - pad.t - pad.b) : 0);
  plot.append(svg("line", { x1: pad.l, y1: H - pad.b, x2: W - pad.r, y2: H - pad.b, class: "axis" }));
  plot.append(svg("line", { x1: pad.l, y1: pad.t, x2: pad.l, y2: H - pad.b, class: "axis" }));
  const top = svg("text", { x: pad.l - 4, y: pad.t + 8, class: "tick", "text-anchor": "end" });
  top.textContent = max >= 100 ? Math.round(max) : fmt(max, 1);
  const zero = svg("text", { x: pad.l - 4, y: H - pad.b, class: "tick", "text-anchor": "end" });
  zero.textContent = "0";
  $("plot-unit").textContent = `(${unit} per slice)`;
  const first = svg("text", { x: pad.l, y: H - 6, class: "tick" });
  first.textContent = "1";
  const last = svg("text", { x: W - pad.r, y: H - 6, class: "tick", "text-anchor": "end" });
  last.textContent = String(n);
  plot.append(top, zero, first, last);
  areas.forEach((a, k) => {
    const x = pad.l + k * bw;
    const bar = svg("rect", { x: x + bw * 0.1, y: y(a), width: Math.max(bw * 0.8, 0.5), height: H - pad.b - y(a), class: "bar" });
    // A full-height hit area per slice: the whole column is clickable.
    const hit = svg("rect", { x, y: pad.t, width: bw, height: H - pad.t - pad.b, class: "hit", "data-slice": k });
    const title = svg("title", {});
    title.textContent = `slice ${k + 1} of ${n}: ${fmt(a, 1)} ${unit}`;
    hit.append(title);
    hit.addEventListener("click", () => jumpToSlice(k));
    plot.append(bar, hit);
  });
  plot.append(svg("line", { id: "plot-marker", x1: 0, y1: pad.t, x2: 0, y2: H - pad.b, class: "marker", visibility: "hidden" }));
  plot.dataset.slices = n;
  plot.dataset.left = pad.l;
  plot.dataset.width = W - pad.l - pad.r;
}

// ---------------------------------------------------------------------------- viewer
async function setupViewer() {
  try {
    const NV = await import(VIEWER_MODULE);
    const nv = new NV.Niivue({
      isRadiologicalConvention: true, // chest CT: the patient's right on the screen's left
      backColor: [0, 0, 0, 1],
      crosshairColor: [0.3, 0.7, 1, 0.6],
      crosshairWidth: 1,
      dragAndDropEnabled: false, // the page takes the drops: they become uploads
      isColorbar: false,
      show3Dcrosshair: false,
      logLevel: "warn",
      loadingText: "", // the page says what is going on
      multiplanarShowRender: NV.SHOW_RENDER.NEVER,
    });
    await nv.attachToCanvas($("gl"));
    for (const [name, cmap] of Object.entries(COLORMAPS)) nv.addColormap(name, cmap);
    nv.setSliceType(NV.SLICE_TYPE.AXIAL);
    nv.onLocationChange = () => updateSliceInfo();
    state.nv = nv;
    state.NV = NV;
    document.body.dataset.viewer = "ready";
    const waiting = state.jobs.find((j) => j.id === state.shown);
    if (waiting) show(waiting); // a case was chosen while the viewer was starting
  } catch (err) {
    document.body.dataset.viewer = "missing";
    $("viewer-empty").replaceChildren();
    const p = document.createElement("p");
    p.textContent = `The image viewer could not start (${err.message || err}). Reports and downloads still work. Is NiiVue installed (make install)? Does this browser have WebGL 2?`;
    $("viewer-empty").append(p);
  }
}

async function show(job) {
  state.shown = job.id;
  state.selected = job.id;
  renderReport(job);
  renderCases();
  const nv = state.nv;
  if (!nv) return;
  document.body.dataset.shown = "";
  const ext = (url) => (url.endsWith(".gz") ? ".nii.gz" : ".nii");
  try {
    await nv.loadVolumes([
      { url: job.views.ct, name: `ct${ext(job.views.ct)}`, colormap: "gray" },
      { url: job.views.lungs, name: `lungs${ext(job.views.lungs)}`, colormap: "covseg-lungs", cal_min: 0, cal_max: 1, opacity: 0.35 },
      { url: job.views.infection, name: `infection${ext(job.views.infection)}`, colormap: "covseg-infection", cal_min: 0, cal_max: 1, opacity: 0.7 },
    ]);
  } catch (err) {
    showError(`${job.name}: the viewer could not load the volumes (${err.message || err})`);
    return;
  }
  if (state.shown !== job.id) return; // another case was chosen meanwhile
  $("viewer-empty").hidden = true;
  const ct = nv.volumes[0];
  state.fullRange = [ct.cal_min, ct.cal_max];
  const hu = job.report.intensity_rule === "hu";
  for (const option of $("window").options) option.disabled = !hu && option.value !== "full";
  $("window").value = hu ? "lung" : "full";
  applyWindow();
  applyOverlays();
  updateSliceInfo();
  document.body.dataset.shown = job.id;
}

function applyWindow() {
  const nv = state.nv;
  if (!nv || !nv.volumes.length) return;
  const preset = PRESETS[$("window").value];
  const [lo, hi] = preset ? [preset[1] - preset[0] / 2, preset[1] + preset[0] / 2] : state.fullRange;
  nv.volumes[0].cal_min = lo;
  nv.volumes[0].cal_max = hi;
  nv.updateGLVolume();
}

function applyOverlays() {
  const nv = state.nv;
  if (!nv || nv.volumes.length < 3) return;
  const opacity = (what) => ($(`show-${what}`).checked ? Number($(`opacity-${what}`).value) / 100 : 0);
  nv.setOpacity(1, opacity("lungs"));
  nv.setOpacity(2, opacity("infection"));
}

function sliceCount() {
  const nv = state.nv;
  return nv && nv.volumes.length ? nv.volumes[0].dimsRAS[3] : 0;
}

function currentSlice() {
  const n = sliceCount();
  return Math.min(n - 1, Math.max(0, Math.floor(state.nv.scene.crosshairPos[2] * n)));
}

// Canonical slice k (inferior -> superior, the report's order) is RAS slice k: the viewer and
// covseg both take the voxel axis nearest to superior as the slice axis.
function jumpToSlice(k) {
  const nv = state.nv;
  const n = sliceCount();
  if (!nv || !n) return;
  const [x, y] = nv.scene.crosshairPos;
  nv.scene.crosshairPos = [x, y, (k + 0.5) / n];
  nv.drawScene();
  updateSliceInfo();
}

function updateSliceInfo() {
  const n = sliceCount();
  if (!n) return;
  const k = currentSlice();
  $("slice-info").textContent = `axial slice ${k + 1} of ${n}`;
  $("slice-info").dataset.slice = k;
  const marker = $("plot-marker");
  const plot = $("plot");
  if (marker && Number(plot.dataset.slices) === n) {
    const x = Number(plot.dataset.left) + ((k + 0.5) * Number(plot.dataset.width)) / n;
    marker.setAttribute("x1", x);
    marker.setAttribute("x2", x);
    marker.setAttribute("visibility", "visible");
  }
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
    model.textContent = {
      loading: "model loading…",
      ready: "model ready",
      failed: `model failed: ${status.model.error}`,
    }[status.model.state];
    if (status.model.state === "loading") setTimeout(loadStatus, 1000);
  } catch (_) {
    setTimeout(loadStatus, 2000);
  }
}

function setupControls() {
  $("file-input").addEventListener("change", (e) => {
    uploadAll([...e.target.files]);
    e.target.value = "";
  });
  $("demo").addEventListener("click", demo);
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
    const folders = new Set(
      items.map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter((en) => en && en.isDirectory).map((en) => en.name),
    );
    for (const name of folders) showError(`${name}: a folder; zip the DICOM series folder and drop the .zip`);
    uploadAll([...e.dataTransfer.files].filter((f) => !folders.has(f.name)));
  });
  for (const button of document.querySelectorAll("button.view")) {
    button.addEventListener("click", () => {
      if (!state.nv) return;
      state.nv.setSliceType(state.NV.SLICE_TYPE[button.dataset.view]);
      for (const b of document.querySelectorAll("button.view")) b.classList.toggle("active", b === button);
    });
  }
  $("window").addEventListener("change", applyWindow);
  for (const id of ["show-lungs", "show-infection", "opacity-lungs", "opacity-infection"]) {
    $(id).addEventListener("input", applyOverlays);
  }
}

setupControls();
loadStatus();
poll();
setupViewer();
