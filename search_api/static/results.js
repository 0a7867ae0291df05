// Result cards, and moving between them with the keyboard: Tab reaches each card, Enter opens it, the
// arrow keys move to the neighbouring card (up and down by a row of the grid).
import {esc, preview} from "./api.js";

function where(source) {  // a PACS instance by the ends of its UIDs, a file by its path
  if (!source.url) return source.path;
  const tail = (uid) => uid ? "…" + uid.slice(-8) : "?";
  return `PACS study ${tail(source.study_uid)} · series ${tail(source.series_uid)} · instance ${tail(source.sop_uid)}`;
}

const ASSERTED = {present: "asserted", negated: "negated", uncertain: "uncertain", historical: "historical",
  family: "family history", hypothetical: "hypothetical"};

function marked(snippet) {  // the snippet's text with its marks as <mark> elements, built as DOM nodes (never HTML)
  const p = document.createElement("div");
  p.className = "snippet";
  let at = 0;
  for (const m of [...snippet.marks].sort((a, b) => a.start - b.start)) {
    if (m.start < at) continue;
    p.append(snippet.text.slice(at, m.start));
    const mark = document.createElement("mark");
    mark.textContent = snippet.text.slice(m.start, m.end);
    if (m.assertion) { mark.dataset.assertion = m.assertion; mark.title = `${m.term}: ${ASSERTED[m.assertion]}`; }
    p.append(mark);
    at = m.end;
  }
  p.append(snippet.text.slice(at));
  return p;
}

function why(match) {  // how a report or hybrid result matched: its ranks, the findings' assertions, the snippet
  const box = document.createElement("div");
  box.className = "why";
  const ranks = [match.report_rank ? `report #${match.report_rank}` : "report: no match",
    match.image_rank ? `image #${match.image_rank}` : null].filter(Boolean).join(" · ");
  const line = document.createElement("div");
  line.className = "meta ranks"; line.textContent = ranks;
  box.append(line);
  for (const f of match.findings || []) {
    const badge = document.createElement("span");
    badge.className = `badge ${f.assertion}`; badge.textContent = `${f.term}: ${ASSERTED[f.assertion]}`;
    box.append(badge);
  }
  if (match.snippet) box.append(marked(match.snippet));
  return box;
}

export function card(r, {open, study}) {
  const m = r.metadata, prob = r.probability == null ? "" : ` · p ${r.probability.toFixed(3)}`;
  const div = document.createElement("div");
  div.className = "result"; div.tabIndex = 0; div.setAttribute("role", "listitem");
  div.dataset.imageId = r.image_id; div.dataset.path = r.source.path;
  const described = [m.modality, m.body_part, m.study_date].filter(Boolean).join(" · ");
  const studyLine = r.study_images ? `Study: ${r.study_images} image${r.study_images > 1 ? "s" : ""} in ${r.study_series} series` : "No study UID";
  div.innerHTML = `<img alt="${esc(`result ${r.rank}: ${described || r.source.path}`)}">
    <div class="score">#${r.rank}${r.score == null ? "" : ` · ${r.score.toFixed(3)}`}${prob}</div>
    <div class="meta">${esc(described)}</div>
    <div class="meta" title="${esc(r.source.path)}">${esc(where(r.source))}</div>
    <div class="meta"><button type="button" class="study-link" tabindex="-1">${esc(studyLine)}</button></div>` + (r.source.viewer_url ?
    `<div class="meta"><a class="pacs" href="${esc(r.source.viewer_url)}" target="_blank" rel="noopener noreferrer" tabindex="-1">Open in PACS viewer</a></div>` : "");
  if (r.match) div.querySelector(".score").after(why(r.match));
  div.querySelector("a.pacs")?.addEventListener("click", (e) => e.stopPropagation());
  div.querySelector(".study-link").addEventListener("click", (e) => { e.stopPropagation(); study(r.image_id, div); });
  div.addEventListener("click", () => open(r.image_id, div));
  div.addEventListener("keydown", (e) => { if (e.key === "Enter" && e.target === div) { e.preventDefault(); open(r.image_id, div); } });
  preview(div.querySelector("img"), r.image_id, 256);
  return div;
}

export function gridKeys(container) {
  container.addEventListener("keydown", (e) => {
    const cards = [...container.children], at = cards.indexOf(e.target);
    if (at < 0 || !["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "Home", "End"].includes(e.key)) return;
    const perRow = Math.max(1, cards.filter((c) => c.offsetTop === cards[0].offsetTop).length);
    const step = {ArrowLeft: -1, ArrowRight: 1, ArrowUp: -perRow, ArrowDown: perRow, Home: -at, End: cards.length - 1 - at}[e.key];
    const next = cards[Math.min(cards.length - 1, Math.max(0, at + step))];
    e.preventDefault(); next.focus();
  });
}
