"""Every command shown in README.md and docs/*.md runs, ends in one line with exit code 2 where it needs what is
absent here, or is listed with its reason in tests/documented_commands.py (read at test time)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import SHARED_DATA
from tests.documented_commands import ROOT, Command, entry_point, extract, is_template, rule_for

COMMANDS = extract()
# commands that read what an earlier one wrote run after it, in the order shown (one worker); the others in parallel
CHAIN = ("--ckpt_name ita_c100", "checkpoints/ita_c100/")


def sandbox(tmp) -> str:
    """A copy of the repository made of links (top-level folders as real folders, so that outputs such as
    ``benchmarks/out`` land in the sandbox), ``../shared`` beside it, and ``python`` this interpreter."""
    repo = tmp / "repo"
    repo.mkdir()
    for name in os.listdir(ROOT):
        if name.startswith(".") or name in ("checkpoints", "data", "runs"):
            continue
        src = os.path.join(ROOT, name)
        if os.path.isdir(src) and name != "tests":
            (repo / name).mkdir()
            for child in os.listdir(src):
                if child not in ("out", "__pycache__"):
                    os.symlink(os.path.join(src, child), repo / name / child)
        else:
            os.symlink(src, repo / name)
    shared = os.path.dirname(SHARED_DATA)
    if os.path.isdir(shared):
        os.symlink(shared, tmp / "shared")
    (tmp / "bin").mkdir()
    shim = tmp / "bin" / "python"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    return str(repo)


def run_command(command: Command, cwd: str, env: dict) -> dict:
    rule = rule_for(command)
    text = rule.rewrite(command.text) if rule.rewrite else command.text
    script = f"{command.prelude}; {text}" if command.prelude else text
    started = time.perf_counter()
    try:
        proc = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=rule.timeout)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = "timeout", str(exc.stdout or ""), str(exc.stderr or "")
    return {"code": code, "stdout": out[-2000:], "stderr": err, "seconds": time.perf_counter() - started,
            "script": script}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every command whose rule says run or exit2, each distinct text once: its exit code and output."""
    tmp = tmp_path_factory.mktemp("docs")
    cwd = sandbox(tmp)
    env = dict(os.environ, PATH=f"{tmp / 'bin'}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1",
               CL_NO_DOWNLOAD="1", HF_HOME=str(tmp / "hf"), TORCH_HOME=str(tmp / "torch"), OMP_NUM_THREADS="1",
               MPLBACKEND="Agg", CUDA_VISIBLE_DEVICES="", PYTHONDONTWRITEBYTECODE="1")
    todo: dict[str, Command] = {}
    for command in COMMANDS:
        rule = rule_for(command)
        if not is_template(command) and rule is not None and rule.action in ("run", "exit2"):
            todo.setdefault(command.text, command)
    chain = [c for c in todo.values() if any(marker in c.text for marker in CHAIN)]
    rest = [c for c in todo.values() if c not in chain]
    with ThreadPoolExecutor(2) as pool:
        chained = pool.submit(lambda: [(c.text, run_command(c, cwd, env)) for c in chain])
        others = list(pool.map(lambda c: (c.text, run_command(c, cwd, env)), rest))
        return dict(others + chained.result())


def test_every_documented_command_is_run_or_listed():
    """A command that no rule of tests/documented_commands.py covers fails here; templates name real files."""
    assert len(COMMANDS) > 20
    unknown = [c.where + ": " + c.text for c in COMMANDS if not is_template(c) and rule_for(c) is None]
    assert not unknown, "documented commands that are neither run nor listed: " + "; ".join(unknown)
    for command in COMMANDS:
        if is_template(command):
            words = command.text.split()
            target = entry_point(command.text) or next((w for w in words if w.endswith(".py")), None)
            if target is None:  # e.g. "torchrun ... --distributed ddp": the launcher only
                assert words[0] == "torchrun", f"{command.where}: {command.text}"
            else:
                assert os.path.exists(os.path.join(ROOT, target)), f"{command.where}: {command.text}"


RUNNABLE = [c for c in COMMANDS if not is_template(c) and rule_for(c) and rule_for(c).action in ("run", "exit2")]


@pytest.mark.timeout(1800)  # the first test waits for every command (2 at a time)
@pytest.mark.parametrize("command", RUNNABLE, ids=[c.where for c in RUNNABLE])
def test_documented_command(outcomes, command):
    out = outcomes[command.text]
    detail = f"{command.where}: {out['script']}\nexit {out['code']}\n{out['stderr'][-3000:]}"
    if rule_for(command).action == "run":
        assert out["code"] == 0, detail
    else:  # needs what is absent here: one line, exit 2, no traceback
        lines = [line for line in out["stderr"].splitlines() if line.strip()]
        assert out["code"] == 2 and "Traceback" not in out["stderr"], detail
        assert len(lines) == 1 and lines[0].startswith("error: "), detail
