// Shared by the page's modules: the element lookup, escaping, calls that carry the API key, errors as a
// person can read them, images fetched with the key (an <img src> could not send it), downloads.
export const $ = (id) => document.getElementById(id);
export const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
export const key = () => sessionStorage.getItem("medsearch-key") || "";

export function api(url, options = {}) {  // the server answers 401 without a key (unless in open mode)
  const headers = {...(options.headers || {}), ...(key() ? {"Authorization": `Bearer ${key()}`} : {})};
  return fetch(url, {...options, headers});
}
export const postJSON = (url, body) => api(url, {method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(body)});

export async function problem(response) {
  if (response.status === 401) return "This server needs an API key: paste yours in the box at the top right.";
  try {
    const body = await response.json();
    return Array.isArray(body.detail) ? body.detail.map((d) => `${d.loc.slice(1).join(".")}: ${d.msg}`).join("; ") : String(body.detail);
  } catch { return `HTTP ${response.status}`; }
}

export async function showImage(img, url, options = {}) {  // replaces the image only once the new one is here
  const response = await api(url, options);
  if (!response.ok) throw new Error(await problem(response));
  const blob = await response.blob(), previous = img.dataset.blob;
  const loaded = new Promise((resolve) => { img.onload = img.onerror = resolve; });
  img.src = img.dataset.blob = URL.createObjectURL(blob);
  await loaded;
  if (previous) URL.revokeObjectURL(previous);
}

export function preview(img, id, size) {  // thumbnails: errors leave the image empty
  showImage(img, `/images/${id}/preview?size=${size}`).catch(() => { img.alt = "no preview: the file cannot be read"; });
}

export function saveBlob(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob); link.download = name;
  document.body.append(link); link.click(); link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
}

export function fileName(response, fallback) {
  const match = /filename="([^"]+)"/.exec(response.headers.get("content-disposition") || "");
  return match ? match[1] : fallback;
}

export function decodeFloats(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new Float32Array(bytes.buffer);
}
