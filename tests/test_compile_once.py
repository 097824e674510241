"""``-O 3`` compiles the training forward of ITA/IEL once for the whole run.

Multi-task runs through ``app.runner.main`` (tiny ViT, 3 tasks, a smaller last batch in every epoch) with a counting
``torch.compile`` backend around ``aot_eager`` (the same graph capture and autograd as inductor, no C++ toolchain):
exactly one frame is compiled, with no graph break, every training forward runs that graph (none falls back to
eager), and the trained weights after each task equal those of the uncompiled ``-O 2`` run (the same bf16 ops).
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import pytest
import torch
import torch._dynamo
from torch._dynamo.backends.registry import lookup_backend
from torch._dynamo.utils import counters

from app.runner import main
from models.second_order import SecondOrder
from tests.conftest import SECOND_ORDER_FAST, make_npz, tiny_run_args
from utils import optimization

N_TASKS = 3
PER_CLASS = 7  # 2 classes a task, batch size 4: batches of 4, 4, 4 and a smaller last one of 2


class CountingBackend:
    """``aot_eager`` that counts the graphs it compiles and, per batch size, the calls of those graphs."""

    def __init__(self) -> None:
        self.graphs = 0
        self.calls: Counter = Counter()

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        self.graphs += 1
        inner = lookup_backend("aot_eager")(gm, example_inputs)

        def run(*args: Any) -> Any:
            images = [a for a in args if torch.is_tensor(a) and a.dim() == 4]
            self.calls[images[0].shape[0] if images else None] += 1
            return inner(*args)
        return run


def run_recording(tmp_path, monkeypatch, level: int, *extra: str) -> tuple[list[dict[str, torch.Tensor]], Counter]:
    """Run ``main`` at ``-O level``; the model's state after each task and the training forwards' batch sizes."""
    states: list[dict[str, torch.Tensor]] = []
    forwards: Counter = Counter()
    end_task, masked_logits = SecondOrder.end_task, SecondOrder.masked_logits

    def recording_end_task(self, dataset) -> None:
        end_task(self, dataset)
        states.append({k: v.detach().float().clone() for k, v in self.state_dict().items()})

    def counting_masked_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        forwards[inputs.shape[0]] += 1
        return masked_logits(self, inputs)

    monkeypatch.setattr(SecondOrder, "end_task", recording_end_task)
    monkeypatch.setattr(SecondOrder, "masked_logits", counting_masked_logits)
    folder = tmp_path / f"O{level}"
    data = make_npz(str(tmp_path / "d.npz"), n_classes=2 * N_TASKS, per_class=PER_CLASS)
    argv = [*tiny_run_args(data, folder, n_tasks=N_TASKS), *SECOND_ORDER_FAST, "--optimizer", "sgd", "--plots", "0",
            "-O", str(level), *extra]
    assert main(argv) == 0
    monkeypatch.undo()
    return states, forwards


@pytest.mark.parametrize("extra", [("--model", "iel", "--beta_iel", "1"),
                                   ("--model", "ita", "--alpha_ita", "1", "--tuning_style", "ia3")])
def test_one_compilation_for_the_run_and_results_of_the_eager_run(tmp_path, monkeypatch, extra):
    backend = CountingBackend()
    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(optimization, "compile_backend", lambda: backend)
    compiled_states, forwards = run_recording(tmp_path, monkeypatch, 3, *extra)
    assert backend.graphs == 1 and counters["stats"]["unique_graphs"] == 1
    assert dict(counters["frames"]) == {"total": 1, "ok": 1}
    assert not counters["graph_break"] and not counters["recompiles"]
    # every training forward ran the compiled graph: 3 tasks x (4, 4, 4, 2), two batch sizes, one graph
    assert forwards == backend.calls == Counter({4: 3 * N_TASKS, 2: N_TASKS})

    eager_states, _ = run_recording(tmp_path, monkeypatch, 2, *extra)
    assert len(compiled_states) == len(eager_states) == N_TASKS
    for compiled, eager in zip(compiled_states, eager_states):
        assert compiled.keys() == eager.keys() and any(".deltas." in k for k in eager)
        for key, b in eager.items():  # measured: bitwise equal (aot_eager runs the eager kernels)
            assert float((compiled[key] - b).abs().max()) <= 1e-5 * max(1.0, float(b.abs().max())), key


def test_inflora_on_the_same_adapted_layers_compiles_once(tmp_path, monkeypatch):
    """InfLoRA trains one module per task on the same adapted layers, its whole network compiled
    (``ContinualModel.train_net``): one graph for the 3 tasks, run by every training forward."""
    backend = CountingBackend()
    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(optimization, "compile_backend", lambda: backend)
    data = make_npz(str(tmp_path / "d.npz"), n_classes=2 * N_TASKS, per_class=PER_CLASS)
    argv = ["--model", "inflora", *tiny_run_args(data, tmp_path, n_tasks=N_TASKS), "--inflora_rank", "2",
            "--plots", "0", "-O", "3"]
    assert main(argv) == 0
    assert backend.graphs == 1 and dict(counters["frames"]) == {"total": 1, "ok": 1}
    assert not counters["graph_break"]
    assert backend.calls == Counter({4: 3 * N_TASKS, 2: N_TASKS})
