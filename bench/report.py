"""Turn bench/results/*.json into bench/results/SUMMARY.md and PNG plots.

    .venv/bin/python -m bench.report
"""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.common import RESULTS


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def search_section(search: dict, lines: list[str]) -> None:
    lines += ["## Vector search", "", f"{search['dim']}-d synthetic embeddings (bench/search_data.py); recall@10 of "
              "held-out queries against exact search at the effort tuned on other queries, with its 95% bootstrap "
              "interval; text-like queries separately; single-query latency over interleaved rounds.", "",
              "| data | vectors | index | effort | build s | bytes/vector | p50 ms | p90 ms | x NumPy | recall@10 "
              "(95% CI) | text recall@10 |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in search["rows"]:
        ci = r.get("recall_95ci") or (1.0, 1.0)
        lines.append(f"| {r['data']} (top-64 {r['top64_variance_share']:.2f}, ID {r['intrinsic_dimension_mle']}) | "
                     f"{r['vectors']:,} | {r['kind']} | {r.get('search_effort', '-')} | {r['build_s']:.1f} | "
                     f"{r['bytes_per_vector']:.0f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
                     f"{r['speedup_vs_numpy']:.1f} | {r['recall_at_10']:.3f} ({ci[0]:.3f}-{ci[1]:.3f}) | "
                     f"{r['text_recall_at_10']:.3f} |")
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for size in sorted({r["vectors"] for r in search["rows"]}):
        rows = [r for r in search["rows"] if r["vectors"] == size and r["data"] == "clustered"]
        names = [f"{r['kind'].replace('numpy brute force', 'numpy')} {size // 1000}k" for r in rows]
        axes[0].bar(names, [r["p50_ms"] for r in rows], label=f"{size:,} vectors")
        axes[1].bar(names, [r["recall_at_10"] for r in rows], label=f"{size:,} vectors")
    axes[0].set_ylabel("single-query p50 (ms)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("recall@10 vs exact")
    for axis in axes:
        axis.tick_params(axis="x", labelsize=8, labelrotation=45)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(RESULTS / "search.png", dpi=110)
    lines += ["", "![search](search.png)", ""]


def api_section(api: dict, lines: list[str]) -> None:
    parts = ["decode_image", "encode_text", "encode_image", "vector_search", "metadata_fetch", "serialisation",
             "key_check", "audit_write", "text_cache_hit", "request_text", "request_text_cached", "request_image"]
    lines += ["## API latency (median ms)", "", "| part | " + " | ".join(m["model"] for m in api["models"]) + " |",
              "|---|" + "---:|" * len(api["models"])]
    for part in parts:
        lines.append(f"| {part} | " + " | ".join(f"{m['median_ms'].get(part, float('nan')):.2f}"
                                                  for m in api["models"]) + " |")
    lines += ["", "Over real HTTP (`medsearch-api serve`, a clinician key, the audit written, keep-alive), ms:", "",
              "| model | OMP_WAIT_POLICY | cached text query p50 (all overhead) | p90 | of which HTTP, gate and key "
              "(/whoami p50) | the rest: search, metadata, JSON, audit, FastAPI | fresh text query p50 |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for m in api["models"]:
        for policy, h in (m.get("http_with_key_and_audit") or {}).items():
            idle = h.get("whoami_p50_ms", float("nan"))
            lines.append(f"| {m['model']} | {policy} | {h['cached_text_p50_ms']:.2f} | {h['cached_text_p90_ms']:.2f} | "
                         f"{idle:.2f} | {h['cached_text_p50_ms'] - idle:.2f} | {h['fresh_text_p50_ms']:.2f} |")
    figure, axis = plt.subplots(figsize=(7, 4))
    split = ["decode_image", "encode_image", "vector_search", "metadata_fetch", "serialisation"]
    bottom = [0.0] * len(api["models"])
    for part in split:
        values = [m["median_ms"][part] for m in api["models"]]
        axis.bar([m["model"] for m in api["models"]], values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axis.set_ylabel("image query, ms (median)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(RESULTS / "api.png", dpi=110)
    lines += ["", "![api](api.png)", ""]


def indexing_section(results: list[dict], lines: list[str]) -> None:
    lines += ["## Indexing (DICOM input, images/s)", "",
              "| model | images | bare model | end to end | ratio | naive loop | end to end / naive | rerun fraction |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        naive = r.get("naive_loop_images_per_s")
        lines.append(f"| {r['model'].split('/')[-1]} | {r['images']} | {r['bare_model_images_per_s']} | "
                     f"{r['end_to_end_images_per_s']} | {r['ratio']} | {naive if naive else '-'} | "
                     f"{r.get('end_to_end_over_naive', '-')} | {r['rerun_fraction']} |")
    figure, axis = plt.subplots(figsize=(7, 4))
    names = [r["model"].split("/")[-1] for r in results]
    width = 0.25
    for offset, (key, label) in enumerate([("bare_model_images_per_s", "bare model"),
                                           ("end_to_end_images_per_s", "end to end"),
                                           ("naive_loop_images_per_s", "naive loop")]):
        axis.bar([i + offset * width for i in range(len(names))], [r.get(key) or 0 for r in results], width,
                 label=label)
    axis.set_xticks([i + width for i in range(len(names))], names)
    axis.set_ylabel("images/s")
    axis.set_yscale("log")
    axis.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "indexing.png", dpi=110)
    lines += ["", "![indexing](indexing.png)", ""]


def pipeline_section(results: list[dict], lines: list[str]) -> None:
    for r in results:
        cores = r["cores"]
        lines += [f"## The pipeline's own ceiling (null encoder, {r['input_size']} px processor)", "",
                  f"| class | per core images/s (full resolution) | {cores} cores images/s | bytes/image crossing "
                  "(before) | ESTIMATE cores for 500 images/s |", "|---|---:|---:|---:|---:|"]
        for row in r["rows"]:
            lines.append(f"| {row['class']} | {row['per_core_images_per_s']} "
                         f"({row['per_core_full_resolution_images_per_s']}) | "
                         f"{row[f'all_{cores}_cores_images_per_s']} | {row['bytes_per_image_crossing']:,} "
                         f"({row['bytes_per_image_before']:,}) | {row['ESTIMATE_cores_for_500_per_s']} |")
        ckpt = r["checkpoint"]
        lines += ["", f"Checkpoint of {ckpt['vectors']:,} x {ckpt['dim']} vectors: saved whole "
                  f"{ckpt['save_whole_s']} s, {ckpt['added']:,} added appended to the log {ckpt['append_to_log_s']} s "
                  f"({ckpt['ratio']}x).", ""]


def pacs_section(results: list[dict], lines: list[str]) -> None:
    lines += ["## PACS (Orthanc on loopback) against a folder, same files", "",
              "| model | instances | folder files/s | PACS instances/s | PACS / folder | fetch only inst/s | "
              "rerun, nothing new (full / --since last) | nightly command wall clock |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['model'].split('/')[-1]} | {r['instances']} | {r['folder_run']['files_per_s']} | "
                     f"{r['pacs_run']['instances_per_s']} | {r['pacs_over_folder']} | "
                     f"{r['fetch_only']['instances_per_s']} | {r['nightly_nothing_new_full_listing_s']} s / "
                     f"{r['nightly_nothing_new_since_last_s']} s | {r['nightly_command_nothing_new_wall_s']} s |")
    lines.append("")


def explain_section(explain: dict, lines: list[str]) -> None:
    lines += ["## Relevance maps", "", "Seconds per map on this machine's device; faithfulness over real DICOM "
              "image/query pairs: areas under the deletion (lower is better) and insertion (higher is better) "
              "curves beside random masking orders, and Spearman's correlation of the gradient map with occlusion.",
              "", "| model | grid | gradient p50 s | occlusion p50 s (passes) | map | deletion (random) | insertion "
              "(random) | wins del/ins | rho vs occlusion |", "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in explain["rows"]:
        estimated = " (est.)" if r.get("occlusion_estimated") else ""
        head = (f"| {r['model']} | {r['grid'][0]}x{r['grid'][1]} | {r['p50_s_gradient']:.3f} | "
                f"{r['p50_s_occlusion']:.2f}{estimated} ({r['occlusion_passes']}) |")
        if "faithfulness" not in r:
            lines.append(head + " - | - | - | - | - |")
            continue
        for name, f in r["faithfulness"].items():
            rho = r["spearman_gradient_occlusion"] if name == "gradient" else ""
            lines.append(f"{head} {name} | {f['deletion']:.4f} ({f['random_deletion']:.4f}) | "
                         f"{f['insertion']:.4f} ({f['random_insertion']:.4f}) | "
                         f"{f['deletion_wins']:.2f}/{f['insertion_wins']:.2f} | {rho} |")
            head = "| | | | |"
    lines.append("")


def main() -> None:
    lines = ["# medsearch benchmarks", ""]
    machine = None
    if search := load("search"):
        machine = search["machine"]
        search_section(search, lines)
    if api := load("api"):
        machine = machine or api["machine"]
        api_section(api, lines)
    indexing = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("indexing_*.json"))]
    if indexing:
        machine = machine or indexing[0]["machine"]
        indexing_section(indexing, lines)
    pipelines = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("pipeline_null_*.json"))]
    if pipelines:
        pipeline_section(pipelines, lines)
    pacs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("pacs_*.json"))]
    if pacs:
        machine = machine or pacs[0]["machine"]
        pacs_section(pacs, lines)
    if explain := load("explain"):
        machine = machine or explain["machine"]
        explain_section(explain, lines)
    if machine:
        lines[1:1] = ["", f"{machine['date']}, {machine['cores']} cores ({machine['cpu']}), Python "
                      f"{machine['python']}, " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
                      + f", commit {machine['commit']}.", ""]
    (RESULTS / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
