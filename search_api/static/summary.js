// The case summary panel: statements built from evidence (GET /images/{id}/summary), each sentence with
// the probabilities or the cases it restates; a case id opens that case. It is never a diagnosis.
import {$, api, esc, problem} from "./api.js";

export async function showSummary(id, wanted, openCase) {
  const target = $("case-summary");
  target.textContent = "Summarising...";
  const params = new URLSearchParams({k: "8"});
  if (wanted.probe) params.set("probe", wanted.probe);
  else if (wanted.preset) params.set("preset", wanted.preset);
  else if (wanted.labels?.length) params.set("labels", wanted.labels.join(","));
  const response = await api(`/images/${id}/summary?${params}`);
  if (!response.ok) { target.innerHTML = `<p class="review">${esc(await problem(response))}</p>`; return; }
  const body = await response.json();
  const evidence = (e) => [...Object.entries(e.probabilities).map(([label, p]) => `<span class="chip">${esc(label)} p=${p.toFixed(2)}</span>`),
    ...e.image_ids.map((i) => `<button type="button" class="chip case-link" data-image-id="${i}">case ${i}</button>`)].join(" ");
  const cases = body.similar_cases.map((c) => `<tr><td><button type="button" class="chip case-link" data-image-id="${c.image_id}">${c.image_id}</button></td>
    <td>${c.score.toFixed(2)}</td><td>${esc(c.labels.join(", "))}</td><td>${esc(c.report_text || "")}</td></tr>`).join("");
  target.innerHTML = `<p class="method">Findings: ${esc(body.method)}</p>
    <ul class="statements">${body.statements.map((s) => `<li>${esc(s.text)}<div class="evidence">${evidence(s.evidence)}</div></li>`).join("")}</ul>
    <table class="cases"><tr><th>Case</th><th>cos</th><th>Labels</th><th>Report</th></tr>${cases}</table>
    <p class="disclaimer">${esc(body.disclaimer)}</p>` + (body.warning ? `<p class="review">${esc(body.warning)}</p>` : "");
  for (const link of target.querySelectorAll(".case-link")) {
    link.addEventListener("click", () => openCase(Number(link.dataset.imageId), link));
  }
}
