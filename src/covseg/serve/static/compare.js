// Follow-up comparison: two done cases of one patient side by side, their slices kept at the same
// physical position, and the change in infection (GET /api/compare, covseg.serve.compare).
//
// The earlier scan stays in the page's own viewer (toolbar, keys, read-outs act on it); the later
// one gets a second Viewer of its own. A change of either's position is carried to the other
// through world coordinates: voxel -> world (its affine), the server's `transform` (identity, or
// the rigid registration), world -> the other's voxel, nearest; a slice beyond the other scan's
// ends says so. Window, overlays and view follow the earlier scan's.

import { fmt } from "./report.js";
import { fetchBytes } from "./uploads.js";
import { Viewer } from "./viewer.js";
import { Volume } from "./volume.js";

const $ = (id) => document.getElementById(id);
const REGIONS = [
  ["both", "Both lungs"],
  ["left", "Left lung"],
  ["right", "Right lung"],
];

/**
 * Wire the comparison controls.
 * @param {Viewer} viewer the page's viewer (the earlier scan)
 * @param {{jobs: () => object[], names: () => Map, show: (id: string) => void}} app the case
 *   list, the names it shows, and how to show one case in the page's viewer
 */
export function setupCompare(viewer, app) {
  const other = new Viewer($("viewer-b"));
  const run = { on: false, token: 0, before: null, after: null, forward: null, backward: null, syncing: false };

  for (const [box, which] of [[$("viewer"), "A (before)"], [$("viewer-b"), "B (after)"]]) {
    const el = document.createElement("p");
    el.className = "compare-outside";
    el.hidden = true;
    el.textContent = `outside scan ${which}`;
    box.append(el);
  }
  const choices = () => fillChoices(app);
  new MutationObserver(choices).observe($("cases"), { childList: true });
  choices();

  const stop = () => {
    if (!run.on) return;
    run.on = false;
    run.token++;
    document.body.classList.remove("comparing");
    other.clear();
    $("compare-stop").hidden = true;
    for (const el of document.querySelectorAll(".compare-caption")) el.remove();
    for (const el of document.querySelectorAll(".compare-outside")) el.hidden = true;
    $("viewer").dataset.outside = "";
    delete document.body.dataset.compared;
  };

  /** Carry `from`'s position (and the earlier scan's window, overlays, view) to `to`. */
  const follow = (from, to, matrix) => {
    if (!run.on || run.syncing || !from.volume || !to.volume) return;
    run.syncing = true;
    try {
      if (to === other) {
        if (other.view !== viewer.view) other.setView(viewer.view);
        if (other.active !== viewer.active) other.setActive(viewer.active);
        other.window = { ...viewer.window };
        other.opacity = { ...viewer.opacity };
      }
      const { pos, outside } = mapPosition(from.volume, to.volume, from.pos, matrix);
      to.pos = pos;
      to.changed();
      for (const v of [from, to]) {
        const box = v === other ? $("viewer-b") : $("viewer");
        box.dataset.outside = v === to && outside ? "1" : "";
        box.querySelector(".compare-outside").hidden = box.dataset.outside !== "1";
      }
      publish(viewer, other);
    } finally {
      run.syncing = false;
    }
  };
  viewer.addEventListener("change", () => follow(viewer, other, run.forward));
  other.addEventListener("change", () => follow(other, viewer, run.backward));

  $("compare-start").addEventListener("click", () => start());
  $("compare-stop").addEventListener("click", stop);
  // Another case chosen in the list, or an upload that takes the viewer: one scan again.
  $("cases").addEventListener("click", stop, true);
  new MutationObserver(() => {
    const shown = document.body.dataset.shown;
    if (run.on && shown && shown !== run.before) stop();
  }).observe(document.body, { attributes: true, attributeFilter: ["data-shown"] });

  async function start() {
    const [before, after] = [$("compare-before").value, $("compare-after").value];
    const register = $("compare-register").checked;
    const message = $("compare-message");
    message.textContent = "";
    if (!before || !after || before === after) {
      message.textContent = "Choose two different done scans.";
      return;
    }
    stop();
    const token = ++run.token;
    message.textContent = register ? "Registering the scans…" : "Comparing…";
    const url = `/api/compare?before=${before}&after=${after}${register ? "&register=1" : ""}`;
    let body;
    try {
      const response = await fetch(url, { cache: "no-store" });
      body = await response.json();
      if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    } catch (err) {
      if (token === run.token) message.textContent = `The comparison failed: ${err.message || err}`;
      return;
    }
    if (token !== run.token) return;
    message.textContent = "";
    Object.assign(run, { on: true, before, after, forward: body.transform, backward: invert(body.transform) });
    document.body.classList.add("comparing");
    $("compare-stop").hidden = false;
    renderChange(body, app.names());
    caption($("viewer"), `A · before: ${app.names().get(before)}`);
    caption($("viewer-b"), `B · after: ${app.names().get(after)}`);
    app.show(before);
    await loadOther(body.after, token);
  }

  async function loadOther(after, token) {
    const job = app.jobs().find((j) => j.id === after.id);
    const display = after.display;
    const [ct, labels] = await Promise.all([fetchBytes(display.ct, () => {}), fetchBytes(display.labels, () => {})]);
    if (token !== run.token) return;
    run.syncing = true; // its middle slice must not move the earlier scan
    try {
      other.show(new Volume(display, ct, labels, job.report.intensity_rule === "hu"), viewer.window);
    } finally {
      run.syncing = false;
    }
    follow(viewer, other, run.forward);
    document.body.dataset.compared = `${run.before}:${run.after}`;
  }
}

/** The done volumes as choices; the latest two preselected (earlier, later). */
function fillChoices(app) {
  const names = app.names();
  const done = app.jobs().filter((j) => j.state === "done" && j.display && j.display.shape[0] > 1);
  const ids = done.map((j) => j.id);
  const key = done.map((j) => `${j.id}=${names.get(j.id)}`).join("/");
  if ($("compare-before").dataset.key === key) return; // unchanged: an open list stays open
  $("compare-before").dataset.key = key;
  for (const [id, preset] of [["compare-before", ids[ids.length - 2]], ["compare-after", ids[ids.length - 1]]]) {
    const select = $(id);
    const keep = ids.includes(select.value) ? select.value : preset;
    select.replaceChildren(...done.map((j) => new Option(names.get(j.id), j.id)));
    select.value = keep || "";
  }
  $("compare-start").disabled = done.length < 2;
}

function caption(box, text) {
  const el = document.createElement("p");
  el.className = "compare-caption";
  el.textContent = text;
  box.append(el);
}

/** A position of one scan at the same place in the other; `outside` beyond its slices. */
export function mapPosition(from, to, pos, matrix) {
  const world = apply(matrix, from.mm(pos));
  const [w, h, k] = apply(invert(to.affine), world).map(Math.round);
  const { n, h: H, w: W } = to.shape;
  const clamp = (v, hi) => Math.max(0, Math.min(hi - 1, v));
  return { pos: { k: clamp(k, n), h: clamp(h, H), w: clamp(w, W) }, outside: k < 0 || k >= n };
}

function apply(m, [x, y, z]) {
  return [0, 1, 2].map((r) => m[r][0] * x + m[r][1] * y + m[r][2] * z + m[r][3]);
}

/** The inverse of an affine 4 x 4 (rows), by the cofactors of its 3 x 3 part. */
export function invert(m) {
  const [[a, b, c], [d, e, f], [g, h, i]] = m;
  const co = [
    [e * i - f * h, c * h - b * i, b * f - c * e],
    [f * g - d * i, a * i - c * g, c * d - a * f],
    [d * h - e * g, b * g - a * h, a * e - b * d],
  ];
  const det = a * co[0][0] + b * co[1][0] + c * co[2][0];
  const r = co.map((row) => row.map((v) => v / det));
  const t = [0, 1, 2].map((j) => -(r[j][0] * m[0][3] + r[j][1] * m[1][3] + r[j][2] * m[2][3]));
  return [...r.map((row, j) => [...row, t[j]]), [0, 0, 0, 1]];
}

/** Both positions, for the read-out and the tests. */
function publish(viewer, other) {
  const [a, b] = [viewer, other].map((v) => v.volume.mm(v.pos));
  const info = $("compare-sync");
  Object.assign(info.dataset, { a: viewer.pos.k, b: other.pos.k, az: a[2].toFixed(2), bz: b[2].toFixed(2) });
  const outside = $("viewer-b").dataset.outside === "1" ? "B" : $("viewer").dataset.outside === "1" ? "A" : "";
  info.dataset.outside = outside;
  info.textContent = `A: slice ${viewer.pos.k + 1} (z ${a[2].toFixed(1)} mm) · B: slice ${other.pos.k + 1} (z ${b[2].toFixed(1)} mm)${outside ? ` · outside scan ${outside}` : ""}`;
}

/** The change table: infected mL and % of lung, both lungs, left, right; before, after, change. */
function renderChange(body, names) {
  const { change } = body;
  $("compare-title").textContent = `${names.get(body.before.id)} → ${names.get(body.after.id)}`;
  const rows = [];
  const row = (cells, cls = "") => {
    const tr = document.createElement("tr");
    if (cls) tr.className = cls;
    for (const [tag, text, data] of cells) {
      const cell = document.createElement(tag);
      cell.textContent = text;
      if (data) Object.assign(cell.dataset, data);
      tr.append(cell);
    }
    rows.push(tr);
    return tr;
  };
  for (const [what, title, digits] of [
    ["ml", "Infected volume (mL)", 1],
    ["percent", "Infected (% of the lung)", 2],
  ]) {
    const head = row([["th", title]], "group");
    head.firstChild.colSpan = 4;
    for (const [region, label] of REGIONS) {
      const r = change.regions[region];
      const [b, a] = what === "ml" ? r.infection_ml : r.percent;
      const d = what === "ml" ? r.infection_change_ml : r.percent_change;
      const signed = d === null ? "–" : `${d > 0 ? "+" : ""}${fmt(d, digits)}`;
      const tr = row([
        ["th", label],
        ["td", fmt(b, digits), { value: JSON.stringify(b) }],
        ["td", fmt(a, digits), { value: JSON.stringify(a) }],
        ["td", signed, { value: JSON.stringify(d) }],
      ]);
      Object.assign(tr.dataset, { region, what });
    }
  }
  $("compare-table").tBodies[0].replaceChildren(...rows);
  const v = change.voxels;
  $("compare-voxels").textContent = v
    ? `Voxel by voxel${v.registered ? " (after registration)" : ""}: new ${fmt(v.new_ml, 1)} mL, resolved ${fmt(v.resolved_ml, 1)} mL, persisting ${fmt(v.persisting_ml, 1)} mL (Dice ${fmt(v.dice, 2)}).`
    : "";
  $("compare-notes").textContent = change.notes.join(" ");
  $("compare-how").textContent = body.registered ? ", after a rigid registration" : "";
}
