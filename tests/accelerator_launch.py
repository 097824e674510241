"""Run command lines of ``main.py`` on the test accelerator, in a process of their own, with per-task audits.

    python -m tests.accelerator_launch SPEC.json OUT.json

``SPEC.json`` is a list of ``{"name": ..., "argv": [...], "budget": bytes (optional)}``; each entry runs through
``app.runner.main`` (what ``main.py`` runs) after :func:`tests.accelerator_backend.register`, in this order and in
one process (the backend registers once per process). After every task the tensors of the model (parameters,
buffers, optimizer states, heads, statistics) are audited with :func:`utils.device_audit.misplaced_tensors`.
``OUT.json`` maps each name to ``{"exit_code", "error", "misplaced", "tasks_audited", "counts", "peak_bytes"}``.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def run_one(argv: list[str], budget: int | None) -> dict[str, Any]:
    """One command line on the test accelerator; its exit code, the audit and the traffic counts."""
    import app.runner as runner
    from tests import accelerator_backend as backend
    from utils.device_audit import misplaced_tensors

    device = backend.register()
    if budget:
        backend.set_memory_budget(budget)
    backend.reset_counts()
    backend.MEMORY.peak = backend.MEMORY.allocated
    audit: dict[str, Any] = {"misplaced": [], "tasks_audited": 0}
    real_train = runner.train

    def audited_train(model, dataset, args, *rest, on_task_end=None, **kwargs):
        def after_task(record):
            if on_task_end is not None:
                on_task_end(record)
            audit["misplaced"] += [f"task {record.tasks_done}: {m}" for m in
                                   misplaced_tensors(model, getattr(model, "device", device))]
            audit["tasks_audited"] += 1
        return real_train(model, dataset, args, *rest, on_task_end=after_task, **kwargs)

    runner.train = audited_train
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = runner.main(argv)
    except BaseException:  # noqa: BLE001 - a crash is a result to report
        code, err = 1, io.StringIO(err.getvalue() + traceback.format_exc())
    finally:
        runner.train = real_train
    return {"exit_code": code, "error": err.getvalue()[-4000:], **audit, "counts": dict(backend.COUNTS),
            "peak_bytes": backend.MEMORY.peak}


def main(argv: list[str]) -> int:
    spec_path, out_path = argv
    with open(spec_path) as fh:
        spec = json.load(fh)
    out = {}
    for entry in spec:
        out[entry["name"]] = run_one(entry["argv"], entry.get("budget"))
        with open(out_path, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
