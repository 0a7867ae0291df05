"""MkDocs hook: the HTTP API reference (docs/reference/api.md) written from the application's own OpenAPI
schema at build time, so that the page cannot drift from the routes; the schema itself is published
beside it as reference/openapi.json."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

MARK = "<!-- openapi -->"


@cache
def schema() -> dict[str, Any]:
    from core.settings import Settings
    from search_api.app import build_access, create_app

    with TemporaryDirectory() as folder:  # the schema needs no index: nothing is opened before the lifespan
        settings = Settings(db_dir=Path(folder))
        return create_app(settings, access=build_access(settings, open_mode=True)).openapi()


def cell(text: object) -> str:
    return " ".join(str(text or "").split()).replace("|", "\\|")


def type_of(spec: dict[str, Any]) -> str:
    if "$ref" in spec:
        name = spec["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in spec:
        return " or ".join(type_of(option) for option in spec["anyOf"])
    if spec.get("type") == "array":
        return f"array of {type_of(spec.get('items', {}))}"
    if "enum" in spec:
        return " \\| ".join(f"`{value}`" for value in spec["enum"])
    return str(spec.get("type", "any"))


def operation(method: str, path: str, spec: dict[str, Any]) -> list[str]:
    lines = [f"### `{method.upper()} {path}`", ""]
    if spec.get("description") or spec.get("summary"):
        lines += [str(spec.get("description") or spec["summary"]).strip(), ""]
    parameters = spec.get("parameters", [])
    if parameters:
        lines += ["| parameter | in | type | required | description |", "|---|---|---|---|---|"]
        lines += [f"| `{p['name']}` | {p['in']} | {cell(type_of(p.get('schema', {})))} | "
                  f"{'yes' if p.get('required') else 'no'} | {cell(p.get('description'))} |" for p in parameters]
        lines.append("")
    body = spec.get("requestBody", {}).get("content", {})
    for media, content in body.items():
        lines += [f"Body ({media}): {type_of(content.get('schema', {}))}", ""]
    responses = spec.get("responses", {})
    if responses:
        lines += ["| status | answer |", "|---|---|"]
        for status, answer in responses.items():
            shape = next(iter(answer.get("content", {}).values()), {}).get("schema")
            lines.append(f"| {status} | {cell(answer.get('description'))}"
                         f"{' - ' + type_of(shape) if shape else ''} |")
        lines.append("")
    return lines


def render(api: dict[str, Any]) -> str:
    tags: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, methods in api["paths"].items():
        for method, spec in methods.items():
            tags.setdefault((spec.get("tags") or ["other"])[0], []).append((method, path, spec))
    lines: list[str] = [f"OpenAPI {api['openapi']}, API version {api['info']['version']}: "
                        "[openapi.json](openapi.json).", ""]
    for tag, operations in tags.items():
        lines += [f"## {tag}", ""]
        for method, path, spec in operations:
            lines += operation(method, path, spec)
    lines += ["## Schemas", ""]
    for name, spec in sorted(api.get("components", {}).get("schemas", {}).items()):
        lines += [f"### {name}", ""]
        if spec.get("description"):
            lines += [cell(spec["description"]), ""]
        properties = spec.get("properties", {})
        if properties:
            required = set(spec.get("required", []))
            lines += ["| field | type | required | description |", "|---|---|---|---|"]
            lines += [f"| `{field}` | {cell(type_of(value))} | {'yes' if field in required else 'no'} | "
                      f"{cell(value.get('description'))} |" for field, value in properties.items()]
            lines.append("")
        elif "enum" in spec:
            lines += [type_of(spec), ""]
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return markdown.replace(MARK, render(schema())) if MARK in markdown else markdown


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    files.append(File.generated(config, "reference/openapi.json", content=json.dumps(schema(), indent=1)))
    return files
