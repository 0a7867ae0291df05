// The case view (a viewer, the record, links, the original file, zero-shot labels, similar cases,
// side-by-side comparison with the query) and the study view (the study's series, a series' images in
// instance order). Escape closes the top one and gives the focus back to what opened it.
import {$, api, esc, fileName, postJSON, preview, problem, saveBlob} from "./api.js";
import {card, gridKeys} from "./results.js";
import {showSummary} from "./summary.js";
import {Viewer} from "./viewer.js";

const session = {id: null, opener: null, studyOpener: null, viewer: null, compare: null, context: null};

export function setupCase(context) {  // context: {query() (an image query), search() (any), role(), searchLike(id), filters()}
  session.context = context;
  session.viewer = new Viewer($("viewer-main"), {onWindow: (w) => session.compare?.setWindow(w, false), onError: caseError,
    explainQuery: caseQuery});
  session.compare = new Viewer($("viewer-query"), {onWindow: (w) => session.viewer.setWindow(w, false), onError: caseError,
    explainQuery: () => (session.id != null && session.context.query()?.id != null ? {query_image_id: session.id} : null)});
  $("close").addEventListener("click", closeCase);
  $("study-close").addEventListener("click", closeStudy);
  $("open-study").addEventListener("click", () => openStudy(session.id, $("open-study")));
  $("more-like-this").addEventListener("click", () => { const id = session.id; closeCase(); context.searchLike(id); });
  $("compare").addEventListener("click", toggleCompare);
  $("download").addEventListener("click", download);
  $("classify-form").addEventListener("submit", (e) => { e.preventDefault(); classifyCase(); });
  $("summarise").addEventListener("click", () => showSummary(session.id, classifyRequest(), openCase));
  gridKeys($("similar")); gridKeys($("series-images"));
  addEventListener("keydown", (e) => {
    if (e.key !== "Escape") return;
    if (!$("study").hidden) closeStudy(); else if (!$("case").hidden) closeCase();
  });
  loadChoices();
}

// Presets, and the site's probes usable with this index (they need the key: loaded again when it changes).
export async function loadChoices() {
  const presets = await (await fetch("/presets")).json();
  const response = await api("/probes");
  const probes = response.ok ? (await response.json()).probes.filter((p) => p.usable) : [];
  $("classify-preset").innerHTML = `<option value="">(labels below)</option>`
    + `<optgroup label="Zero-shot presets">${Object.keys(presets).map((n) => `<option>${esc(n)}</option>`).join("")}</optgroup>`
    + (probes.length ? `<optgroup label="Site probes (trained)">${probes.map((p) => `<option value="probe:${esc(p.name)}">${esc(p.name)}: ${esc(p.labels.join(", "))}</option>`).join("")}</optgroup>` : "");
}

// What the case's relevance map compares it with: the search's query (a text, an indexed image, an upload).
function caseQuery() {
  const query = session.context.search();
  if (!query) return null;
  if (query.kind === "text") return {text: query.text};
  if (query.id != null) return {query_image_id: query.id};
  return query.file ? {file: query.file} : null;
}

function caseError(message) { $("classification").innerHTML = `<p class="review">${esc(message)}</p>`; }

export async function openCase(id, opener) {
  const response = await api(`/images/${id}`);
  if (!response.ok) { session.context.fail(await problem(response)); return; }
  const image = await response.json(), m = image.metadata;
  session.id = id; session.opener = opener || document.activeElement;
  $("case").hidden = false; $("case").dataset.imageId = id; session.context.opened(id);
  $("case-title").textContent = [m.modality, m.body_part, m.study_description, m.study_date].filter(Boolean).join(" · ") || `Image ${id}`;
  $("close").focus();
  const rows = [["Source", image.sources.map((s) => s.url || s.path).join(", ")], ["Patient", m.patient_id],
    ["Sex / age", [m.patient_sex, m.patient_age].filter((v) => v != null).join(" / ")], ["Modality", m.modality],
    ["Body part", m.body_part], ["Study date", m.study_date], ["Study", m.study_description],
    ["Series", m.series_description], ["Instance", m.instance_number], ["Frames", m.frames > 1 ? m.frames : null],
    ["Labels", (m.labels || []).join(", ")], ["Report", m.report_text], ["Window", m.window], ["Size", m.columns && `${m.columns} × ${m.rows}`]];
  const link = (href, text) => `<a href="${esc(href)}" target="_blank" rel="noopener noreferrer">${esc(text)}</a>`;
  const pacs = image.sources.filter((s) => s.url || s.viewer_url).map((s) => [s.viewer_url && link(s.viewer_url, "Open study in PACS viewer"),
    s.url && link(s.url, "DICOM instance (WADO-RS)")].filter(Boolean).join(" · "));
  $("case-meta").innerHTML = rows.filter(([, v]) => v != null && v !== "").map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(v)}</td></tr>`).join("")
    + pacs.map((html) => `<tr><td>PACS</td><td class="pacs">${html}</td></tr>`).join("");
  $("download").hidden = !session.context.role().may_download;
  $("compare").hidden = !session.context.query(); $("compare").setAttribute("aria-pressed", "false");
  $("viewer-query").hidden = true; $("classification").innerHTML = ""; $("case-summary").innerHTML = "";
  session.viewer.show({id}, m, image.source.frame_index, "This case");
  const similar = await postJSON("/search/similar", {image_id: id, k: 12, filters: session.context.filters()});
  const open = (other, from) => openCase(other, from);
  if (similar.ok) $("similar").replaceChildren(...(await similar.json()).results.map((r) => card(r, {open, study: openStudy})));
  else $("similar").textContent = await problem(similar);
}

export function closeCase() {
  if ($("case").hidden) return;
  $("case").hidden = true; session.id = null; session.context.opened(null);
  if (session.opener?.isConnected) session.opener.focus();
}

async function toggleCompare() {
  const on = $("viewer-query").hidden, query = session.context.query();
  $("compare").setAttribute("aria-pressed", String(on));
  $("viewer-query").hidden = !on;
  if (!on || !query) return;
  let meta = {};
  if (query.id != null) {
    const response = await api(`/images/${query.id}`);
    if (response.ok) meta = (await response.json()).metadata;
  }
  await session.compare.show(query, meta, 0, query.id != null ? "Query image" : `Query: ${query.name}`);
  if (session.viewer.window) session.compare.setWindow(session.viewer.window, false);
}

async function download(e) {
  e.preventDefault();
  const response = await api(`/images/${session.id}/file`);
  if (!response.ok) { caseError(await problem(response)); return; }
  saveBlob(await response.blob(), fileName(response, `image-${session.id}.dcm`));
}

export function renderClassification(target, body) {
  const rows = body.labels.map((l) => `<tr><td>${esc(l.label)}</td><td>${l.probability.toFixed(3)}</td>
    <td class="barcell"><div class="bar" data-width="${Math.round(l.probability * 100)}"></div></td><td>${(l.softmax * 100).toFixed(1)}%</td></tr>`).join("");
  const votes = body.neighbour_votes.map((v) => `${esc(v.label)} (${v.count})`).join(", ") || "none";
  const source = body.probe ? `<p class="method">Probe ${esc(body.probe)}: calibrated probabilities</p>` : "";
  target.innerHTML = source + `<table class="labels"><tr><th>Label</th><th>p</th><th></th><th>share</th></tr>${rows}</table>
    <p>Entropy ${body.entropy.toFixed(2)} · ${body.requires_human_review ? `<span class="review">Requires human review: ${esc(body.review_reasons.join("; "))}</span>` : `<span class="ok">No review flag</span>`}</p>
    <p>Labels of the ${body.neighbours} nearest cases: ${votes}</p>` + (body.warning ? `<p class="review">${esc(body.warning)}</p>` : "");
  for (const bar of target.querySelectorAll(".bar")) bar.style.width = `${bar.dataset.width}%`;  // CSSOM: allowed by the policy
}

export function classifyRequest() {
  const preset = $("classify-preset").value, labels = $("classify-labels").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (preset.startsWith("probe:")) return {probe: preset.slice(6)};
  return preset ? {preset} : {labels};
}

async function classifyCase() {
  $("classification").textContent = "Classifying...";
  const response = await postJSON(`/images/${session.id}/classify`, classifyRequest());
  if (!response.ok) { $("classification").innerHTML = `<p class="review">${esc(await problem(response))}</p>`; return; }
  renderClassification($("classification"), await response.json());
}

export async function openStudy(id, opener) {
  const response = await api(`/images/${id}/study`);
  if (!response.ok) { session.context.fail(await problem(response)); return; }
  const study = await response.json();
  session.studyOpener = opener || document.activeElement;
  $("study").hidden = false;
  $("study-title").textContent = ["Study", study.description, study.study_date].filter(Boolean).join(" · ");
  $("study-info").textContent = `${study.images} image${study.images === 1 ? "" : "s"} in ${study.series.length} series` + (study.patient_id ? ` · patient ${study.patient_id}` : "");
  $("series-list").replaceChildren(...study.series.map((s, n) => {
    const button = document.createElement("button");
    button.type = "button"; button.className = "series"; button.dataset.firstImage = s.first_image_id;
    button.innerHTML = `<img alt="first image of series ${n + 1}"><div>${esc(s.description || `Series ${n + 1}`)}</div><div class="meta">${esc(s.modality || "")} · ${s.images} image${s.images === 1 ? "" : "s"}</div>`;
    button.addEventListener("click", () => showSeries(s.first_image_id, button));
    preview(button.querySelector("img"), s.first_image_id, 192);
    return button;
  }));
  $("series-images").replaceChildren(); $("series-title").textContent = "";
  $("study-close").focus();
  const own = study.series.find((s) => s.first_image_id === id) || study.series[0];
  if (own) showSeries(id, $("series-list").querySelector(`[data-first-image="${own.first_image_id}"]`));
}

async function showSeries(imageId, button) {
  for (const b of $("series-list").children) b.setAttribute("aria-pressed", String(b === button));
  const response = await api(`/images/${imageId}/series`);
  if (!response.ok) { $("series-title").textContent = await problem(response); return; }
  const series = await response.json();
  $("series-title").textContent = `${series.description || "Series"}: ${series.images.length} image${series.images.length === 1 ? "" : "s"} in instance order`;
  $("series-images").replaceChildren(...series.images.slice(0, 300).map((entry) => {
    const div = document.createElement("div");
    div.className = "result"; div.tabIndex = 0; div.setAttribute("role", "listitem"); div.dataset.imageId = entry.image_id;
    div.innerHTML = `<img alt="instance ${esc(entry.instance_number ?? "?")}"><div class="meta">Instance ${esc(entry.instance_number ?? "?")}${entry.frames > 1 ? ` · ${entry.frames} frames` : ""}</div>`;
    const open = () => { closeStudy(); openCase(entry.image_id, session.opener); };
    div.addEventListener("click", open);
    div.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); open(); } });
    preview(div.querySelector("img"), entry.image_id, 160);
    return div;
  }));
}

export function closeStudy() {
  $("study").hidden = true;
  if (session.studyOpener?.isConnected && !session.studyOpener.closest("[hidden]")) session.studyOpener.focus();
}
