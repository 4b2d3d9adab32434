// Folders (dropped, or picked with "Choose a folder…"): the files under them, and a DICOM
// series sent to the server file by file (covseg.serve.series).

import { send } from "./uploads.js";

// Files that are scans of their own; a folder of only these is those scans, any other folder
// is one DICOM series.
export const SCAN_FILE = /\.(nii|nii\.gz|zip|png|jpe?g)$/i;
const PARALLEL = 4; // files in flight at once

/** Operating-system litter that is never part of a series. */
export function hidden(name) {
  return name.startsWith(".") || name === "__MACOSX" || name === "Thumbs.db" || name === "desktop.ini";
}

/** [{file, path}] under a dropped entry (a FileSystemEntry), hidden ones left out. */
export async function filesIn(entry, prefix = "") {
  if (hidden(entry.name)) return [];
  const path = prefix ? `${prefix}/${entry.name}` : entry.name;
  if (entry.isFile) return [{ file: await new Promise((ok, fail) => entry.file(ok, fail)), path }];
  const reader = entry.createReader();
  const out = [];
  for (;;) {
    // readEntries answers in batches (100 in Chromium) until it answers none.
    const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
    if (!batch.length) return out;
    for (const child of batch) out.push(...(await filesIn(child, path)));
  }
}

/** Files picked with a folder chooser, grouped by their top folder: Map name -> [{file, path}]. */
export function byFolder(files) {
  const groups = new Map();
  for (const file of files) {
    const path = file.webkitRelativePath || file.name;
    if (path.split("/").some(hidden)) continue;
    const top = path.includes("/") ? path.split("/")[0] : "";
    if (!groups.has(top)) groups.set(top, []);
    groups.get(top).push({ file, path });
  }
  return groups;
}

/**
 * Send a folder's files as one DICOM series.
 * @param {(sent: number) => void} onProgress files sent so far
 * @returns {Promise<{job?: object, error?: string}>} the queued job, or why it was refused
 */
export async function sendSeries(name, files, onProgress) {
  const opened = await post(`/api/series?name=${encodeURIComponent(name)}&files=${files.length}`);
  if (opened.status !== 201) return { error: opened.body.error || `${name}: the upload failed (HTTP ${opened.status})` };
  const id = opened.body.id;
  let next = 0;
  let sent = 0;
  let error = null;
  const worker = async () => {
    while (!error && next < files.length) {
      const { file, path } = files[next++];
      const { status, body } = await send(`/api/series/${id}/files?name=${encodeURIComponent(path)}`, file, () => {});
      if (status === 200) onProgress(++sent);
      else error = error || body.error || `${name}: ${path}: the upload failed (HTTP ${status || "no answer"})`;
    }
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL, files.length) }, worker));
  if (error) return { error };
  const done = await post(`/api/series/${id}/done`);
  return done.status === 202 ? { job: done.body } : { error: done.body.error || `${name}: HTTP ${done.status}` };
}

async function post(url) {
  try {
    const response = await fetch(url, { method: "POST" });
    return { status: response.status, body: await response.json().catch(() => ({})) };
  } catch (_) {
    return { status: 0, body: {} };
  }
}
