// Sending files to the server: one scan file per request (the body is the file), with upload
// progress.

/**
 * POST `file` as the body to `url`.
 * @param {(loaded: number) => void} onProgress bytes sent so far
 * @returns {Promise<{status: number, body: object}>} status 0 when the connection failed
 */
export function send(url, file, onProgress) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.addEventListener("progress", (e) => e.lengthComputable && onProgress(e.loaded));
    xhr.addEventListener("load", () => {
      let body = {};
      try {
        body = JSON.parse(xhr.responseText || "{}");
      } catch (_) {
        body = {};
      }
      resolve({ status: xhr.status, body });
    });
    xhr.addEventListener("error", () => resolve({ status: 0, body: {} }));
    xhr.send(file);
  });
}

/** Fetch `url` into an ArrayBuffer, reporting (received, total) bytes as they arrive. */
export async function fetchBytes(url, onProgress) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  const total = Number(response.headers.get("content-length")) || 0;
  if (!total || !response.body) return response.arrayBuffer();
  const bytes = new Uint8Array(total);
  const reader = response.body.getReader();
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    bytes.set(value, received);
    received += value.length;
    onProgress(received, total);
  }
  if (received !== total) throw new Error(`${url}: ${received} of ${total} bytes received`);
  return bytes.buffer;
}
