// Distance and area on a slice: the numbers (in the volume's millimetres, or pixels for a
// picture of unknown pixel size) and how a measurement is drawn.
//
// Points are continuous slice-image coordinates (u, v): pixel (i, j) covers [i, i + 1) x [j, j + 1).

/** A finished measurement: its value and the text shown for it. */
export function measure(volume, draft) {
  const [su, sv] = volume.pixelSize(draft.plane);
  const mm = draft.points.map(([u, v]) => [u * su, v * sv]);
  const unit = volume.unit;
  if (draft.type === "distance") {
    const [[x1, y1], [x2, y2]] = mm;
    const length = Math.hypot(x2 - x1, y2 - y1);
    return { ...draft, value: length, text: `${length.toFixed(1)} ${unit}` };
  }
  const area = polygonArea(mm);
  const mean = meanInside(volume, draft);
  const size = unit === "mm" ? `${(area / 100).toFixed(2)} cm²` : `${area.toFixed(0)} px²`;
  const text = mean === null ? size : `${size}, mean ${mean.toFixed(0)}${volume.hu ? " HU" : ""}`;
  return { ...draft, value: area, mean, text };
}

/** Shoelace area of a closed polygon [[x, y], ...]. */
export function polygonArea(points) {
  let twice = 0;
  for (let i = 0; i < points.length; i++) {
    const [x1, y1] = points[i];
    const [x2, y2] = points[(i + 1) % points.length];
    twice += x1 * y2 - x2 * y1;
  }
  return Math.abs(twice) / 2;
}

/** Mean scan value over the pixels whose centres lie inside the polygon; null if none. */
function meanInside(volume, { plane, index, points }) {
  const [iw, ih] = volume.size(plane);
  const canvas = document.createElement("canvas");
  canvas.width = iw;
  canvas.height = ih;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.beginPath();
  points.forEach(([u, v], i) => (i ? ctx.lineTo(u, v) : ctx.moveTo(u, v)));
  ctx.closePath();
  let sum = 0;
  let count = 0;
  // isPointInPath on pixel centres: exact, and only over the polygon's bounding box.
  const us = points.map((p) => p[0]);
  const vs = points.map((p) => p[1]);
  const [u0, u1] = [Math.max(0, Math.floor(Math.min(...us))), Math.min(iw - 1, Math.ceil(Math.max(...us)))];
  const [v0, v1] = [Math.max(0, Math.floor(Math.min(...vs))), Math.min(ih - 1, Math.ceil(Math.max(...vs)))];
  for (let v = v0; v <= v1; v++) {
    for (let u = u0; u <= u1; u++) {
      if (!ctx.isPointInPath(u + 0.5, v + 0.5)) continue;
      sum += volume.ct[volume.offset(volume.voxel(plane, index, u, v))];
      count++;
    }
  }
  return count ? sum / count : null;
}

/** Draw a measurement (or the one being drawn) on the viewer's canvas. */
export function drawMeasurement(ctx, toCanvas, m) {
  const pts = m.points.map(([u, v]) => toCanvas(u, v));
  ctx.save();
  ctx.strokeStyle = "#ffd23f";
  ctx.fillStyle = "rgba(255, 210, 63, 0.12)";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
  if (m.type === "area") {
    ctx.closePath();
    ctx.fill();
  }
  ctx.stroke();
  if (m.text) {
    const [x, y] = pts[pts.length - 1];
    ctx.font = "12px system-ui, sans-serif";
    ctx.lineWidth = 3;
    ctx.strokeStyle = "rgba(0, 0, 0, 0.8)";
    ctx.fillStyle = "#ffd23f";
    ctx.strokeText(m.text, x + 6, y - 6);
    ctx.fillText(m.text, x + 6, y - 6);
  }
  ctx.restore();
}
