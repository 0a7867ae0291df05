// The search page: a text, an uploaded image or "more like this"; filters, facet counts, paging, a URL
// that reproduces the view, CSV/JSON export, keyboard navigation. Errors replace what was shown.
import {$, api, esc, fileName, postJSON, problem, saveBlob, showImage} from "./api.js";
import {classifyRequest, closeCase, loadChoices, openCase, openStudy, renderClassification, setupCase} from "./case.js";
import {card, gridKeys} from "./results.js";
import {loadWindowPresets} from "./viewer.js";

const FIELDS = {modality: "modality", body: "body_part", sex: "patient_sex", amin: "age_min", amax: "age_max",
  from: "study_date_from", to: "study_date_to", labels: "labels", desc: "description", mfr: "manufacturer",
  min: "min_score", group: "group_by", k: "k", assert: "assertion"};  // URL parameter -> form field
let query = null;  // {kind: "text", text} | {kind: "similar", id} | {kind: "image", file, name}
let mode = "hybrid";  // what a text query searches: hybrid | report | image (search_api/routes/modes.py)
let page = 0, total = null, role = {may_download: false}, openedCase = null, restoring = false;

const list = (id) => $(id).value.split(",").map((s) => s.trim()).filter(Boolean);
const num = (id) => $(id).value === "" ? null : Number($(id).value);
const perPage = () => Math.min(1000, Math.max(1, num("k") || 24));

function filters() {
  const f = {modality: list("modality"), body_part: list("body_part"), labels: list("labels"),
    patient_sex: $("patient_sex").value || null, age_min: num("age_min"), age_max: num("age_max"),
    study_date_from: $("study_date_from").value || null, study_date_to: $("study_date_to").value || null,
    description: $("description").value.trim() || null, manufacturer: $("manufacturer").value.trim() || null};
  return Object.values(f).some((v) => v && (!Array.isArray(v) || v.length)) ? f : null;
}
const options = (k, offset) => ({k, offset, filters: filters(), min_score: num("min_score"), group_by: $("group_by").value || null, facets: true});
function textOptions(k, offset) {  // a text query also says what it searches and which assertions it wants
  const opts = {...options(k, offset), mode};
  if ($("assertion").value) opts.filters = {...(opts.filters || {}), assertion: [$("assertion").value]};
  return opts;
}
function showMode(value) {
  mode = ["hybrid", "report", "image"].includes(value) ? value : "hybrid";
  for (const button of document.querySelectorAll("#modes button")) button.setAttribute("aria-pressed", String(button.dataset.mode === mode));
}

function status(text, error = false) { $("status").textContent = text; $("status").className = error ? "error" : ""; }

function fail(message) {  // an error replaces the results it would otherwise sit above
  $("results").replaceChildren(); $("facets").replaceChildren(); $("toolbar").hidden = true; total = null;
  status(message, true);
}

function request(k, offset, format = null) {  // the current query as a fetch
  const suffix = format ? `?format=${format}` : "";
  if (query.kind === "image") {
    const form = new FormData(), opts = options(k, offset);
    form.append("file", query.file); form.append("k", k); form.append("offset", offset); form.append("facets", "true");
    if (opts.filters) form.append("filters", JSON.stringify(opts.filters));
    if (opts.min_score != null) form.append("min_score", opts.min_score);
    if (opts.group_by) form.append("group_by", opts.group_by);
    return api(`/search/image${suffix}`, {method: "POST", body: form});
  }
  if (query.kind === "text") return postJSON(`/search/text${suffix}`, {query: query.text, ...textOptions(k, offset)});
  return postJSON(`/search/${query.kind}${suffix}`, {image_id: query.id, ...options(k, offset)});
}

async function run(push = true) {
  if (!query) return;
  const what = query.kind === "text" ? `"${query.text}"` : query.kind === "similar" ? `image ${query.id}` : query.name;
  status(`Searching ${what}...`);
  if (push) writeURL();
  const response = await request(perPage(), page * perPage());
  if (!response.ok) { fail(`${query.kind === "image" ? `${query.name}: ` : ""}${await problem(response)}`); return; }
  const body = await response.json();
  total = body.total;
  const open = (id, from) => openCase(id, from);
  $("results").replaceChildren(...body.results.map((r) => card(r, {open, study: openStudy})));
  const unit = $("group_by").value ? `${$("group_by").value === "study" ? "studies" : "patients"}` : "matches";
  const pages = total == null ? null : Math.max(1, Math.ceil(total / perPage()));
  const searched = query.kind === "text" ? {hybrid: " in reports and images", report: " in reports", image: " by image similarity"}[body.mode] || "" : "";
  status(`${body.results.length} results for ${what}${searched}` + (body.warning ? " (random model: meaningless)" : "") +
    (body.notes?.length ? `. ${body.notes.join(". ")}` : ""));
  $("summary").textContent = total == null ? "" : `${body.total_at_least ? "at least " : ""}${total} ${unit}`;
  $("page").textContent = `Page ${page + 1}${pages ? ` of ${pages}` : ""}`;
  $("prev").disabled = page === 0; $("next").disabled = pages ? page + 1 >= pages : body.results.length < perPage();
  $("toolbar").hidden = false; $("share").hidden = $("export-csv").hidden = false;
  facets(body.facets || {}, body.facets_counted);
}

const FACET_TITLES = {modality: "Modality", body_part: "Body part", patient_sex: "Sex", year: "Study year"};
function facets(found, counted) {
  const note = document.createElement("p");  // a large result set: the counts are of its first images only
  note.className = "muted"; note.dataset.facetsCounted = counted ?? "";
  note.textContent = counted ? `Counts of the first ${counted.toLocaleString()} matches: each at least that many` : "";
  $("facets").replaceChildren(...(counted ? [note] : []), ...Object.entries(found).filter(([, values]) => Object.keys(values).length).map(([name, values]) => {
    const box = document.createElement("div");
    box.dataset.facet = name;
    box.innerHTML = `<h4>${esc(FACET_TITLES[name] || name)}</h4>` + Object.entries(values).slice(0, 12).map(([value, count]) =>
      `<button type="button" class="secondary" data-value="${esc(value)}">${esc(value)} (${counted ? "≥" : ""}${count})</button>`).join("");
    box.addEventListener("click", (e) => { const b = e.target.closest("button"); if (b) pick(name, b.dataset.value); });
    return box;
  }));
}

function pick(name, value) {  // a facet value becomes a filter
  if (name === "year") { $("study_date_from").value = `${value}-01-01`; $("study_date_to").value = `${value}-12-31`; }
  else if (name === "patient_sex") $("patient_sex").value = value;
  else { const id = name === "modality" ? "modality" : "body_part"; $(id).value = [...new Set([...list(id), value])].join(", "); }
  page = 0; run();
}

function writeURL(push = true) {
  const params = new URLSearchParams();
  if (query?.kind === "text") params.set("q", query.text);
  if (query?.kind === "similar") params.set("similar", query.id);
  if (mode !== "hybrid") params.set("mode", mode);
  for (const [param, id] of Object.entries(FIELDS)) if ($(id).value.trim() && !(id === "k" && perPage() === 24)) params.set(param, $(id).value.trim());
  if (page) params.set("page", page + 1);
  if (openedCase != null) params.set("case", openedCase);
  const url = `${location.pathname}${params.size ? `?${params}` : ""}`;
  if (url !== location.pathname + location.search) history[push ? "pushState" : "replaceState"](null, "", url);
}

function readURL(initial = false) {  // a shared link: the same query, filters and page
  const params = new URLSearchParams(location.search);
  if (initial && !params.size) return;  // nothing to restore: leave what the user may have typed
  for (const [param, id] of Object.entries(FIELDS)) $(id).value = params.get(param) ?? (id === "k" ? "24" : "");
  page = Math.max(0, Number(params.get("page") || 1) - 1);
  showMode(params.get("mode"));
  const text = params.get("q"), similar = params.get("similar");
  query = text ? {kind: "text", text} : similar && /^\d+$/.test(similar) ? {kind: "similar", id: Number(similar)} : null;
  $("query").value = text || "";
  showQueryImage();
  if (query) run(false);
  const opened = params.get("case");
  if (opened && /^\d+$/.test(opened)) openCase(Number(opened));
}

async function showQueryImage() {  // the uploaded (or indexed) query image above its results
  $("query-image").hidden = !query || query.kind === "text";
  $("upload-classification").replaceChildren();
  $("classify-upload").hidden = query?.kind !== "image";
  if (!query || query.kind === "text") return;
  $("query-name").textContent = query.kind === "image" ? `Query image: ${query.name}` : `Cases like image ${query.id}`;
  try {
    if (query.kind === "image") {
      const form = new FormData(); form.append("file", query.file);
      await showImage($("query-preview"), "/render?size=384", {method: "POST", body: form});
    } else await showImage($("query-preview"), `/images/${query.id}/preview?size=384`);
  } catch (error) { $("query-preview").removeAttribute("src"); $("query-name").textContent += ` (${error.message})`; }
}

function searchText(event) {
  event?.preventDefault();
  const text = $("query").value.trim();
  if (!text) { fail("Type what you are looking for."); return; }
  query = {kind: "text", text}; page = 0; showQueryImage(); run();
}

function searchFile(file) {
  query = {kind: "image", file, name: file.name}; page = 0;
  $("query").value = "";  // the box shows only the current query
  writeURL(); showQueryImage(); run(false);
}

function searchLike(id) {
  query = {kind: "similar", id}; page = 0; $("query").value = ""; showQueryImage(); run();
}

async function exportAs(format) {
  const k = Math.min(1000, Math.max(1, total ?? perPage()));
  status(`Exporting ${k} results as ${format.toUpperCase()}...`);
  const response = await request(k, 0, format);
  if (!response.ok) { fail(await problem(response)); return; }
  saveBlob(await response.blob(), fileName(response, `medsearch-results.${format}`));
  status(`Exported ${k} results as ${format.toUpperCase()} (the export is recorded in the audit log).`);
}

async function classifyUpload() {
  const form = new FormData(), wanted = classifyRequest();
  form.append("file", query.file);
  if (wanted.probe) form.append("probe", wanted.probe);
  else if (wanted.preset) form.append("preset", wanted.preset);
  else if (wanted.labels.length) form.append("labels", wanted.labels.join(","));
  else form.append("preset", "chest-xray");  // a first look; the case view's form chooses others
  $("upload-classification").textContent = "Classifying...";
  const response = await api("/classify", {method: "POST", body: form});
  if (!response.ok) { $("upload-classification").textContent = await problem(response); return; }
  renderClassification($("upload-classification"), await response.json());
}

async function whoami() {
  const response = await api("/whoami");
  role = response.ok ? await response.json() : {may_download: false};
  $("role").textContent = response.ok ? `role: ${role.role}` : "";
  if (openedCase != null) $("download").hidden = !role.may_download;
}

$("searchbar").addEventListener("submit", searchText);
$("filters").addEventListener("submit", (e) => { e.preventDefault(); page = 0; if (query) run(); });
$("assertion").addEventListener("change", () => { page = 0; if (query?.kind === "text") run(); });
for (const button of document.querySelectorAll("#modes button")) {
  button.addEventListener("click", () => { showMode(button.dataset.mode); page = 0; if (query?.kind === "text") run(); });
}
$("file").addEventListener("change", (e) => e.target.files[0] && searchFile(e.target.files[0]));
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => e.dataTransfer.files[0] && searchFile(e.dataTransfer.files[0]));
$("prev").addEventListener("click", () => { page = Math.max(0, page - 1); run(); });
$("next").addEventListener("click", () => { page += 1; run(); });
$("share").addEventListener("click", async () => {
  if (query?.kind === "image") { status("An uploaded image cannot be put in a link; the filters are in the address."); return; }
  try { await navigator.clipboard.writeText(location.href); status("Link copied: it opens this query, its filters and this page."); }
  catch { status(`Copy this link: ${location.href}`); }
});
$("export-csv").addEventListener("click", () => exportAs("csv"));
$("export-json").addEventListener("click", () => exportAs("json"));
$("classify-upload").addEventListener("click", classifyUpload);
gridKeys($("results"));
addEventListener("popstate", () => { restoring = true; closeCase(); restoring = false; readURL(); });
$("apikey").value = sessionStorage.getItem("medsearch-key") || "";
$("apikey").addEventListener("change", () => {
  sessionStorage.setItem("medsearch-key", $("apikey").value.trim()); status("Key saved for this tab."); whoami(); loadChoices();
});
setupCase({query: () => (query && query.kind !== "text" ? query : null), search: () => query, role: () => role, searchLike, fail, filters,
  opened: (id) => { openedCase = id; if (!restoring && query?.kind !== "image") writeURL(false); }});
fetch("/health").then((r) => r.json()).then((h) => {
  $("model").textContent = `${h.model.name} · ${h.model.dim}-d · ${h.vectors} images indexed`;
  if (h.model.random_weights) { $("banner").textContent = h.model.warning; $("banner").hidden = false; }
});
// The role decides what a case view offers (download), so it is known before a linked case opens.
Promise.allSettled([whoami(), loadWindowPresets()]).then(() => readURL(true));
