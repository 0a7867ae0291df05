"""`medsearch-api search`: a text search against a running medsearch API, over HTTP with an API key, so
that it sees what the key's role may see and is audited like the page."""

from __future__ import annotations

import json
import sys
from typing import Any, get_args

import click

from search_api.schemas.reports import Assertion, ModeIn

MODES, ASSERTIONS = list(get_args(ModeIn)), list(get_args(Assertion))


def marked(snippet: dict[str, Any]) -> str:
    """The snippet with its matched terms in [brackets], a finding's assertion after it."""
    text, out, at = snippet["text"], [], 0
    for mark in snippet["marks"]:
        out.append(text[at:mark["start"]])
        said = f":{mark['assertion']}" if mark.get("assertion") else ""
        out.append(f"[{text[mark['start']:mark['end']]}{said}]")
        at = mark["end"]
    return "".join(out) + text[at:]


def describe(result: dict[str, Any]) -> str:
    parts = [f"{result['rank']:>3}. image {result['image_id']}"]
    if result.get("score") is not None:
        parts.append(f"image score {result['score']:.3f}")
    match = result.get("match") or {}
    ranks = [f"{name} #{match[key]}" for name, key in (("report", "report_rank"), ("image", "image_rank"))
             if match.get(key) is not None]
    if ranks:
        parts.append("ranked " + ", ".join(ranks))
    metadata = result.get("metadata") or {}
    described = " ".join(str(v) for v in (metadata.get("modality"), metadata.get("body_part"),
                                          metadata.get("study_description")) if v)
    line = "  ".join(parts) + (f"  {described}" if described else "")
    if match.get("snippet"):
        line += "\n       " + marked(match["snippet"])
    return line


@click.command("search")
@click.argument("query")
@click.option("--url", envvar="MEDSEARCH_API_URL", default="http://127.0.0.1:8000", show_default=True,
              help="The running API (medsearch-api serve). [env MEDSEARCH_API_URL]")
@click.option("--key", envvar="MEDSEARCH_API_KEY", help="An API key (medsearch-api keys create); not needed for a "
              "server started with --open. [env MEDSEARCH_API_KEY]")
@click.option("--mode", type=click.Choice(MODES), help="hybrid: reports and images fused (the default where the "
              "index has reports); report: the reports only; image: image similarity only.")
@click.option("--assertion", multiple=True, type=click.Choice(ASSERTIONS), help="Only reports stating the query's "
              "findings so (repeatable), e.g. --assertion negated for the 'no pleural effusion' cases.")
@click.option("-k", type=click.IntRange(1, 1000), default=10, show_default=True, help="How many results.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer as it is.")
def search(query: str, url: str, key: str | None, mode: str | None, assertion: tuple[str, ...], k: int,
           as_json: bool) -> None:
    """Search the reports and images by text and print the ranked cases, each with why it matched: its
    report snippet with the matched terms in [brackets] and their assertion, its image score, and its
    rank in each list.

    \b
    medsearch-api search "right pleural effusion" --mode report
    medsearch-api search "pleural effusion" --assertion negated -k 20
    """
    import httpx

    body: dict[str, Any] = {"query": query, "k": k}
    if mode:
        body["mode"] = mode
    if assertion:
        body["filters"] = {"assertion": list(assertion)}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.post(f"{url.rstrip('/')}/search/text", json=body, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        click.echo(f"error: no medsearch API answers at {url} ({exc}): start one with `medsearch-api serve`, or "
                   "fix --url", err=True)
        sys.exit(2)
    if response.status_code != 200:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text[:300]
        said = detail if isinstance(detail, str) else "; ".join(
            f"{'.'.join(map(str, e.get('loc', [])[1:])) or 'request'}: {e.get('msg')}" for e in detail
            if isinstance(e, dict)) if isinstance(detail, list) else json.dumps(detail)
        click.echo(f"error: {url} answered {response.status_code}: {said}", err=True)
        sys.exit(2)
    answer = response.json()
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    total = answer.get("total")
    shown = f"{len(answer['results'])} shown" + (f" of {total}" if total is not None else "")
    click.echo(f"{answer['mode']} search, {shown}")
    for note in answer.get("notes", []):
        click.echo(f"note: {note}")
    for result in answer["results"]:
        click.echo(describe(result))
