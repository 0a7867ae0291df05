"""The modules one text query passes through, from its route handler to FAISS and back.

    python -m bench.query_path --db data/demo-db-random-model [--query "pleural effusion"] [--mode image]

Serves the index in process (open mode), sends one warm-up and then one POST /search/text, and records
every call into our packages made while the route handler `search_text` runs (the handler's thread and
the threads it hands work to). It prints the path as a sequence of stops: a stop is a call that enters
another of our modules than its caller's, each distinct (caller, callee, function) once. Counted: the
stops, the modules, and the returns to a higher layer: stops whose callee sits in a higher layer than
its caller (core 0 < storage 1 < search_api's services, schemas and security 2 < its routes 3 < the
app 4), i.e. lower code calling back up; and the descents after the answer: calls from the routes'
modules down into services or storage made after the service's page returned.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

OURS = ("core", "storage", "indexer", "search_api")


def layer(module: str) -> int:
    top = module.split(".")[0]
    if top == "core":
        return 0
    if top == "storage":
        return 1
    if module.startswith(("search_api.routes", "search_api.views", "search_api.modes", "search_api.snippets",
                          "search_api.deps", "search_api.upload", "search_api.presets")):
        return 3
    if module in ("search_api.app", "search_api.cli"):
        return 4
    return 2


class Recorder:
    def __init__(self) -> None:
        self.on = False
        self.answered = False  # the service's page has returned
        self.calls: list[tuple[str, str, str]] = []  # (caller module, callee module, callee function)
        self.after: set[tuple[str, str, str]] = set()  # the calls made after the page returned

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        module = frame.f_globals.get("__name__", "")
        handler = frame.f_code.co_name == "search_text" and module.split(".")[0] == "search_api"
        if event == "return" and handler:
            self.on = False  # the handler answered: what follows is the framework's
        if event == "return" and self.on and frame.f_code.co_name == "page" and layer(module) == 2:
            self.answered = True
        if event != "call":
            return
        if handler and not self.calls:
            self.on = True
            self.calls.append(("(request)", module, "search_text"))
            return
        if not self.on or module.split(".")[0] not in OURS:
            return
        caller = frame.f_back
        while caller is not None and caller.f_globals.get("__name__", "").split(".")[0] not in OURS:
            caller = caller.f_back  # through a library (numpy, SQLAlchemy, FastAPI) to our caller
        call = (caller.f_globals.get("__name__", "") if caller else "(none)", module, frame.f_code.co_name)
        self.calls.append(call)
        if self.answered:
            self.after.add(call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--query", default="pleural effusion")
    parser.add_argument("--mode", default="image")
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from core.settings import Settings
    from search_api.app import build_access, create_app

    settings = Settings(db_dir=args.db)
    app = create_app(settings, access=build_access(settings, open_mode=True))
    body = {"query": args.query, "k": 5, "mode": args.mode}
    recorder = Recorder()
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.post("/search/text", json=body).status_code == 200  # warm: caches, lazy imports
        threading.setprofile(recorder)
        sys.setprofile(recorder)
        with TestClient(app, base_url="http://127.0.0.1") as second:  # new threads: the profile reaches them
            recorder.on = False
            answer = second.post("/search/text", json=body)
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
    assert answer.status_code == 200, answer.text
    stops = list(dict.fromkeys(call for call in recorder.calls if call[0] != call[1]))  # distinct, first seen
    modules = sorted({callee for _, callee, _ in stops})
    upward = [(caller, callee, name) for caller, callee, name in stops
              if caller.split(".")[0] in OURS and layer(callee) > layer(caller)]
    again = [call for call in stops if call in recorder.after and layer(call[0]) == 3 and layer(call[1]) in (1, 2)]
    for call in stops:
        mark = "  ^ back up" if call in upward else "  v down again after the answer" if call in again else ""
        print(f"  {call[0]:<34} -> {call[1]}.{call[2]}{mark}")
    print(f"{len(stops)} stops in {len(modules)} modules, {len(upward)} returns to a higher layer, {len(again)} "
          f"descents after the answer (mode={args.mode}, {len(recorder.calls)} calls into our code)")
    hops = list(dict.fromkeys((caller, callee) for caller, callee, _ in stops))
    print(f"{len(hops)} hops between modules: " + "; ".join(f"{a} -> {b}" for a, b in hops))
    print("modules: " + ", ".join(modules))


if __name__ == "__main__":
    main()
