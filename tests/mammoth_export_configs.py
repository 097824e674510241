"""Parse ``--model M --dataset D --model_config best`` for every section of the given methods' configurations and
save the values of the keys each section sets.

``python tests/mammoth_export_configs.py {project|mammoth} OUT.json METHOD[,METHOD...]``: ``project`` parses with
this project's ``app.config`` (run from the repository root), ``mammoth`` with Mammoth's ``main.parse_args`` (run
from a Mammoth checkout holding the export, whose ``models/config/<method>.yaml`` it reads)."""
from __future__ import annotations

import json
import os
import sys

import yaml


def main(side: str, path: str, methods: str) -> None:
    sys.path.insert(0, os.getcwd())
    if side == "project":
        from app.config import parse_args
    else:
        from main import parse_args
    out: dict[str, dict] = {}
    for method in methods.split(","):
        with open(os.path.join("models", "config", f"{method}.yaml")) as fh:
            sections = yaml.safe_load(fh)
        for dataset, values in sections.items():
            args = parse_args(["--model", method, "--dataset", dataset, "--model_config", "best"])
            out[f"{method}/{dataset}"] = {key: getattr(args, key, "(missing)") for key in values}
    with open(path, "w") as fh:
        json.dump(out, fh, default=str, sort_keys=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
