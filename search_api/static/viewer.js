// The image viewer of the case view: window presets and a custom centre/width (typed, or dragged on the
// image: left-right = width, up-down = centre), zoom, scrolling through the frames of a multi-frame file
// and through the images of a series (wheel, slider, arrow keys), and the modality value (HU on CT)
// under the pointer, and a relevance map of the current query laid over the image (toggle, opacity).
// Pixels are windowed by the server from the DICOM file, exactly as for indexing.
import {api, decodeFloats, esc, problem, showImage} from "./api.js";

export const windowing = {presets: {}};  // name -> [centre, width], from GET /windows

export async function loadWindowPresets() {
  const response = await fetch("/windows");
  if (response.ok) windowing.presets = (await response.json()).presets;
}

const TEMPLATE = `<div class="viewer-title"></div>
  <div class="tools"><span class="presets" role="group" aria-label="Window presets"></span>
    <label>C<input class="wc" type="number" step="1" aria-label="window centre"></label>
    <label>W<input class="ww" type="number" step="1" min="1" aria-label="window width"></label>
    <button type="button" class="apply secondary">Apply</button>
    <button type="button" class="zoom-out secondary" aria-label="zoom out">−</button><span class="zoom-level">fit</span>
    <button type="button" class="zoom-in secondary" aria-label="zoom in">+</button><button type="button" class="zoom-fit secondary">Fit</button>
    <button type="button" class="map-toggle secondary" aria-pressed="false" title="Where the model's score for the query is sensitive" hidden>Relevance map</button>
    <label class="map-opacity" hidden>Opacity<input type="range" class="opacity" min="0" max="100" value="60" aria-label="relevance map opacity"></label></div>
  <div class="stage" tabindex="0" aria-label="image: drag to window, wheel or arrow keys to scroll"><div class="layers"><img class="view" alt="the case image"><img class="overlay" alt="relevance map of the query" hidden></div></div>
  <div class="navs"><label class="frames" hidden>Frame<input type="range" class="frame" min="0" value="0" aria-label="frame"><span class="frame-label"></span></label>
    <label class="series" hidden>Series<input type="range" class="series-pos" min="0" value="0" aria-label="image in series"><span class="series-label"></span></label></div>
  <div class="readout"></div><div class="map-note" hidden></div>`;

export class Viewer {
  // explainQuery(): the fields of POST /images/{id}/explain that say what the shown image is compared
  // with ({text} | {query_image_id} | {file}), or null when there is nothing to explain
  constructor(root, {onWindow = () => {}, onError = () => {}, explainQuery = () => null} = {}) {
    this.root = root; this.onWindow = onWindow; this.onError = onError; this.explainQuery = explainQuery;
    root.innerHTML = TEMPLATE;
    this.q = (selector) => root.querySelector(selector);
    this.img = this.q("img.view"); this.overlay = this.q("img.overlay"); this.stage = this.q(".stage"); this.zoom = 0;  // 0: fit
    this.mapOn = false;
    this.q(".map-toggle").addEventListener("click", () => this.setMap(!this.mapOn));
    this.q(".opacity").addEventListener("input", () => this.setOpacity());
    this.q(".presets").addEventListener("click", (e) => { const b = e.target.closest("button"); if (b) this.setWindow(b.dataset.window || null); });
    this.q(".apply").addEventListener("click", () => this.setWindow(`${Number(this.q(".wc").value)}/${Math.max(1, Number(this.q(".ww").value))}`));
    this.q(".zoom-in").addEventListener("click", () => this.setZoom(this.scale() * 1.5));
    this.q(".zoom-out").addEventListener("click", () => this.setZoom(this.scale() / 1.5));
    this.q(".zoom-fit").addEventListener("click", () => this.setZoom(0));
    this.q(".frame").addEventListener("input", (e) => this.setFrame(Number(e.target.value)));
    this.q(".series-pos").addEventListener("input", (e) => this.setSeries(Number(e.target.value)));
    this.stage.addEventListener("wheel", (e) => this.wheel(e), {passive: false});
    this.stage.addEventListener("keydown", (e) => this.key(e));
    this.img.addEventListener("pointermove", (e) => this.readout(e));
    this.img.addEventListener("pointerleave", () => { this.q(".readout").textContent = ""; });
    this.img.addEventListener("pointerdown", (e) => this.drag(e));
    this.img.addEventListener("load", () => this.fit());
    new ResizeObserver(() => this.fit()).observe(this.stage);
  }

  // image: {id} of an indexed image, or {file} of an upload; meta: its metadata; frame: the indexed frame
  async show(image, meta = {}, frame = 0, title = "") {
    if (this.q(".presets").children.length !== Object.keys(windowing.presets).length + 1) {
      this.q(".presets").innerHTML = `<button type="button" class="secondary" data-window="">As indexed</button>` +
        Object.keys(windowing.presets).map((n) => `<button type="button" class="secondary preset" data-window="${esc(n)}">${esc(n)}</button>`).join("");
    }
    Object.assign(this, {image, meta, frame, frames: meta.frames || 1, series: null, seriesAt: 0, values: {}});
    this.grey = !/^(colour|palette)/.test(meta.window || "");  // colour has no window
    this.q(".viewer-title").textContent = title;
    this.center = this.width = null;
    const pair = /(-?[\d.]+)\/([\d.]+)/.exec(meta.window || "");
    if (pair) [this.center, this.width] = [Number(pair[1]), Number(pair[2])];
    this.window = null;
    for (const el of this.root.querySelectorAll(".presets button, .wc, .ww, .apply")) el.disabled = !this.grey;
    for (const b of this.root.querySelectorAll(".presets .preset")) b.disabled ||= meta.modality !== "CT";  // HU presets
    this.frameControls();
    this.q(".map-toggle").hidden = image.id == null || !this.explainQuery();
    if (this.q(".map-toggle").hidden) this.setMap(false);
    await this.render();
    if (image.id != null) this.loadSeries();
    if (this.center == null && this.grey && image.id != null) this.windowFromValues();
  }

  async windowFromValues() {  // a percentile window has no numbers: start dragging from the values' 0.5-99.5%
    const grid = await this.grid();
    if (!grid?.floats || this.center != null) return;
    const sorted = Float32Array.from(grid.floats).sort(), at = (q) => sorted[Math.floor(q * (sorted.length - 1))];
    const [low, high] = [at(0.005), at(0.995)];
    this.center = Math.round((low + high) / 2); this.width = Math.max(1, Math.round(high - low));
    this.q(".wc").value = this.center; this.q(".ww").value = this.width;
  }

  async grid() {  // the modality values of the shown frame, fetched once per frame
    const frameKey = `${this.image.id}:${this.frame}`;
    if (!(frameKey in this.values)) {
      this.values[frameKey] = (async () => {
        const response = await api(`/images/${this.image.id}/values?frame=${this.frame}&size=512`);
        if (!response.ok) return {error: await problem(response)};
        const found = await response.json();
        found.floats = decodeFloats(found.data);
        return found;
      })();
    }
    return this.values[frameKey];
  }

  frameControls() {
    this.q(".frames").hidden = this.frames < 2;
    Object.assign(this.q(".frame"), {max: this.frames - 1, value: this.frame});
    this.q(".frame-label").textContent = `${this.frame + 1} / ${this.frames}`;
  }

  async loadSeries() {
    const response = await api(`/images/${this.image.id}/series`);
    if (!response.ok) return;
    const series = await response.json();
    this.series = series.images; this.seriesAt = series.position;
    this.q(".series").hidden = this.series.length < 2;
    Object.assign(this.q(".series-pos"), {max: this.series.length - 1, value: this.seriesAt});
    this.seriesLabel();
  }

  seriesLabel() {
    const entry = this.series?.[this.seriesAt];
    this.q(".series-label").textContent = entry ? `${this.seriesAt + 1} / ${this.series.length}` + (entry.instance_number != null ? ` (instance ${entry.instance_number})` : "") : "";
  }

  async render() {
    const params = new URLSearchParams({size: 1024});
    if (this.window) params.set("window", this.window);
    this.root.dataset.window = this.window || "";
    for (const b of this.root.querySelectorAll(".presets button")) b.setAttribute("aria-pressed", String((b.dataset.window || null) === this.window));
    if (this.center != null) { this.q(".wc").value = this.center; this.q(".ww").value = this.width; }
    try {
      if (this.image.file) {
        const form = new FormData(); form.append("file", this.image.file);
        await showImage(this.img, `/render?${params}`, {method: "POST", body: form});
      } else {
        params.set("frame", this.frame);
        await showImage(this.img, `/images/${this.image.id}/preview?${params}`);
      }
      this.root.dataset.shown = `${this.image.id ?? "upload"}:${this.frame}:${this.window || ""}`;
    } catch (error) { this.onError(error.message); }
    if (this.mapOn) await this.showMap();
  }

  setMap(on) {
    this.mapOn = on;
    this.q(".map-toggle").setAttribute("aria-pressed", String(on));
    this.q(".map-opacity").hidden = !on; this.q(".map-note").hidden = !on;
    this.overlay.hidden = !on;
    if (!on) { delete this.root.dataset.map; return; }
    this.setOpacity();
    this.showMap();
  }

  setOpacity() { this.overlay.style.opacity = String(Number(this.q(".opacity").value) / 100); }

  async showMap() {  // the map of the shown frame for the current query, at the preview's size
    const fields = this.explainQuery();
    if (this.image.id == null || !fields) return;
    const form = new FormData();
    for (const [name, value] of Object.entries(fields)) form.append(name, value);
    form.append("frame", this.frame); form.append("size", 1024); form.append("format", "png");
    this.q(".map-note").textContent = "Computing the relevance map...";
    try {
      await showImage(this.overlay, `/images/${this.image.id}/explain`, {method: "POST", body: form});
      this.fit();
      this.root.dataset.map = `${this.image.id}:${this.frame}`;
      this.q(".map-note").textContent = "Where the model's score for the query is sensitive (brighter: more). Not a segmentation, not a diagnosis.";
    } catch (error) { this.q(".map-note").textContent = `No relevance map: ${error.message}`; }
  }

  setWindow(window, notify = true) {
    if (!this.grey) return;
    this.window = window;
    const pair = window && (windowing.presets[window] || window.split("/").map(Number));
    if (pair) [this.center, this.width] = pair;
    this.render();
    if (notify) this.onWindow(window);
  }

  setFrame(frame) {
    this.frame = Math.min(this.frames - 1, Math.max(0, frame));
    this.frameControls(); this.render();
  }

  setSeries(at) {
    if (!this.series) return;
    this.seriesAt = Math.min(this.series.length - 1, Math.max(0, at));
    const entry = this.series[this.seriesAt];
    Object.assign(this, {image: {id: entry.image_id}, frame: entry.frame_index, frames: entry.frames || 1, values: {}});
    this.q(".series-pos").value = this.seriesAt; this.seriesLabel(); this.frameControls(); this.render();
  }

  step(delta) { if (this.frames > 1) this.setFrame(this.frame + delta); else if (this.series?.length > 1) this.setSeries(this.seriesAt + delta); }

  wheel(e) {
    e.preventDefault();
    if (e.ctrlKey) this.setZoom(this.scale() * (e.deltaY < 0 ? 1.25 : 0.8)); else this.step(e.deltaY > 0 ? 1 : -1);
  }

  key(e) {
    const actions = {ArrowDown: () => this.step(1), ArrowUp: () => this.step(-1), PageDown: () => this.step(1), PageUp: () => this.step(-1),
      "+": () => this.setZoom(this.scale() * 1.5), "-": () => this.setZoom(this.scale() / 1.5), "0": () => this.setZoom(0)};
    if (actions[e.key]) { e.preventDefault(); e.stopPropagation(); actions[e.key](); }
  }

  scale() { return this.zoom || (this.img.naturalWidth ? this.img.width / this.img.naturalWidth : 1); }

  setZoom(zoom) { this.zoom = zoom ? Math.min(16, Math.max(0.1, zoom)) : 0; this.fit(); }

  fit() {
    const {naturalWidth: w, naturalHeight: h} = this.img;
    if (!w) return;
    const scale = this.zoom || Math.min(this.stage.clientWidth / w, this.stage.clientHeight / h);
    this.img.width = this.overlay.width = Math.round(w * scale); this.img.height = this.overlay.height = Math.round(h * scale);
    this.q(".zoom-level").textContent = this.zoom ? `${Math.round(scale * 100)}%` : "fit";
  }

  drag(e) {  // left-right changes the width, up-down the centre, relative to the current window
    if (e.button !== 0 || !this.grey || this.center == null) return;
    e.preventDefault();
    const start = {x: e.clientX, y: e.clientY, center: this.center, width: this.width};
    const move = (m) => {
      const per = Math.max(1, start.width) / 256;
      this.width = Math.max(1, Math.round(start.width + (m.clientX - start.x) * per));
      this.center = Math.round(start.center + (m.clientY - start.y) * per);
      this.q(".wc").value = this.center; this.q(".ww").value = this.width;
    };
    const up = () => {
      removeEventListener("pointermove", move); removeEventListener("pointerup", up);
      if (this.center !== start.center || this.width !== start.width) this.setWindow(`${this.center}/${this.width}`);
    };
    addEventListener("pointermove", move); addEventListener("pointerup", up);
  }

  async readout(e) {
    if (!this.grey || this.image.id == null) return;
    const rect = this.img.getBoundingClientRect();
    const u = (e.clientX - rect.left) / rect.width, v = (e.clientY - rect.top) / rect.height;
    const grid = await this.grid();
    if (!grid || grid.error) { this.q(".readout").textContent = grid?.error ? "no values for this image" : ""; return; }
    const col = Math.min(grid.width - 1, Math.floor(u * grid.width)), row = Math.min(grid.height - 1, Math.floor(v * grid.height));
    if (col < 0 || row < 0) return;
    const value = grid.floats[row * grid.width + col];
    this.q(".readout").textContent = `${grid.unit || "value"} ${Number.isInteger(value) ? value : value.toFixed(2)} at (${Math.floor(col * grid.scale)}, ${Math.floor(row * grid.scale)})`;
  }
}
