"""Every shell command that README.md and docs/*.md show, and how the suite runs it (one table: :data:`RULES`).

:func:`extract` reads the files at call time: the lines of fenced shell blocks (backslash continuations joined,
comments dropped; directory trees, outputs and other non-commands skipped) and inline ``python ...``, ``make ...``,
``torchrun ...`` spans (with leading ``VAR=value`` assignments). Each command takes the first rule of :data:`RULES` whose pattern it matches:

* ``run``: run it (through ``bash``, ``python`` being this interpreter) in a sandbox that mirrors the repository,
  after the rule's cheap rewrite (``--debug_mode 1``, one seed, ...); it must exit 0;
* ``exit2``: it needs what is absent here (a GPU, a download); it must end in one line on stderr, exit code 2,
  no traceback;
* ``listed``: not run, for the reason given (a cluster, tens of minutes);
* a command with placeholders (``C``, ``<run>``, ``...``) is a template: its entry point must exist.

A command that no rule matches fails the test: a new documented command is either run or listed here.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import shlex
from typing import Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND_WORDS = ("python", "make", "torchrun", "srun", "bash", "export", "sbatch")
INLINE = re.compile(r"`((?:[A-Z_][A-Z0-9_]*=\S+ )*(?:python|make|torchrun) [^`]*)`")  # leading VAR=value too
FENCE = re.compile(r"^```(\w*)\s*$")
PLACEHOLDER = re.compile(r"\.\.\.|<[^>]+>|\[[^\]]*\]|\s[A-Z]{1,3}(?=\s|$)|\b(?:TINY_C10|DIR)\b|\$NODE_RANK|"
                         r"my_method|seq-my-data")


@dataclasses.dataclass
class Command:
    """A documented command: where it is shown, its text, and the shell variables set before it in its block."""
    source: str
    line: int
    text: str
    prelude: str = ""

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def _is_command(text: str) -> bool:
    words = text.split()
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # leading environment assignments
        words = words[1:]
    return bool(words) and (words[0] in COMMAND_WORDS or words[0].startswith("#!"))


def extract(root: str = ROOT) -> list[Command]:
    """The commands of ``README.md`` and ``docs/*.md`` under ``root``, in the order they are shown."""
    out: list[Command] = []
    for path in [os.path.join(root, "README.md"), *sorted(glob.glob(os.path.join(root, "docs", "*.md")))]:
        source = os.path.relpath(path, root)
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        fenced, lang, pending, start, prelude = False, "", "", 0, []
        for number, raw in enumerate(lines, 1):
            fence = FENCE.match(raw.strip())
            if fence:
                fenced, lang, pending, prelude = not fenced, fence.group(1), "", []
                continue
            if not fenced:
                out += [Command(source, number, m.group(1).strip()) for m in INLINE.finditer(raw)]
                continue
            if lang not in ("", "bash", "sh", "shell", "console"):
                continue
            text = raw.strip()
            if not pending:
                start = number
                if text.startswith("#") and not text.startswith("#!"):
                    continue
            joined = pending + " " + text if pending else text
            if joined.endswith("\\"):
                pending = joined[:-1].rstrip()
                continue
            pending = ""
            joined = _strip_comment(joined)
            assignment = re.match(r'^([A-Z_][A-Z0-9_]*)=("[^"]*"|\S*)$', joined)
            if assignment:  # a shell variable the next commands of the block use
                prelude.append(joined)
                continue
            if _is_command(joined):
                out.append(Command(source, start, joined, "; ".join(prelude)))
    return out


def _strip_comment(text: str) -> str:
    """``text`` without a trailing ``# comment`` (outside quotes)."""
    quote = None
    for i, ch in enumerate(text):
        if ch in "\"'" and quote in (None, ch):
            quote = None if quote else ch
        elif ch == "#" and quote is None and i > 0 and text[i - 1] == " ":
            return text[:i].rstrip()
    return text.rstrip()


def is_template(command: Command) -> bool:
    return bool(PLACEHOLDER.search(command.text))


def entry_point(text: str) -> Optional[str]:
    """The file a ``python -m X`` / ``python path.py`` command runs (relative to the repository), if any."""
    words = shlex.split(text.replace("$", ""))
    if "python" not in words:
        return next((w for w in words if w.endswith(".py")), None)
    rest = words[words.index("python") + 1:]
    if rest[:1] == ["-m"] and len(rest) > 1:
        module = rest[1].replace(".", os.sep)
        return module + ".py" if os.path.isfile(os.path.join(ROOT, module + ".py")) else \
            os.path.join(module, "__main__.py")
    return rest[0] if rest and rest[0].endswith(".py") else None


# ----- cheap rewrites ------------------------------------------------------------------------------------------
def _append(*flags: str) -> Callable[[str], str]:
    return lambda text: text + " " + " ".join(flags)


def _set_flag(text: str, flag: str, value: str) -> str:
    return re.sub(rf"{flag} \S+", f"{flag} {value}", text)


def _compare_cheaply(text: str) -> str:
    """One model, one seed, debug-sized runs (flags after ``--`` reach every run)."""
    text = _set_flag(text, "--seeds", "1")
    first = re.search(r"--models (\S+)", text).group(1).split(",")[0]
    text = re.sub(r"--models \S+", f"--models {first}", text)
    text = re.sub(r'--extra "(\w+):[^"]*"', lambda m: m.group(0) if m.group(1) == first else "", text)
    return text + " --debug_mode 1"


@dataclasses.dataclass
class Rule:
    pattern: str
    action: str  # run | exit2 | listed
    reason: str
    rewrite: Optional[Callable[[str], str]] = None
    timeout: int = 300


RULES: list[Rule] = [
    Rule(r"^(?:[A-Z_][A-Z0-9_]*=\S+ )*make test\b", "listed", "the test suite itself"),
    Rule(r"^make demo\b", "listed", "creates a virtual environment and trains for about 3.5 minutes; app.demo's "
                                    "runs are covered by tests/test_second_order_real.py and tests/test_demo.py"),
    Rule(r"^(#!|export MASTER_HOST|srun )", "listed", "a SLURM job script: needs a cluster of GPU nodes"),
    Rule(r"^torchrun ", "listed", "needs several GPUs (NCCL); the DDP path runs on CPU processes with gloo in "
                                  "tests/test_torchrun_launch.py"),
    Rule(r"main\.py .*--help", "run", "prints every flag"),
    Rule(r"main\.py --model \S+ --dataset seq-cifar100-224 --model_config best", "exit2",
         "the published line: full CIFAR-100 and the ViT-B/16 weights are not available offline"),
    Rule(r"main\.py --model sgd --dataset seq-cifar10 ", "exit2", "full CIFAR-10 is a download"),
    Rule(r"--data_path my_data\.npz", "exit2", "my_data.npz is the user's own file"),
    Rule(r"main\.py --model ita --dataset seq-custom --data_path \.\./shared/data/cifar100_mini\.npz", "run",
         "debug-sized (--debug_mode 1)", _append("--debug_mode", "1")),
    Rule(r"-m app\.edit --checkpoint checkpoints/ita_c100/task_10\.pt", "run", "edits the previous command's model"),
    Rule(r"-m benchmarks\.compare ", "run", "one model, one seed, debug-sized runs", _compare_cheaply, 300),
    Rule(r"benchmarks/speed\.py --quick\b", "run", "the README's speed command, as printed (65 s on 2 idle cores)",
         None, 600),
    Rule(r"benchmarks/speed\.py --device cuda", "exit2", "needs CUDA"),
    Rule(r"benchmarks/speed\.py --out ", "listed", "64 px and 128 Fisher images: tens of minutes on a CPU; "
                                                   "--quick runs the same code"),
    Rule(r"-m benchmarks\.gpu_check --out", "exit2", "needs CUDA (its CPU size is tests/test_gpu_check.py)"),
    Rule(r"benchmarks/fisher_accuracy\.py", "listed", "12 minutes on 2 cores; tests/test_fisher_accuracy_benchmark.py "
                                                      "runs it small"),
    Rule(r"-m benchmarks\.paper ", "listed", "runs the paper's table on seq-cifar100-224 with ViT-B/16: GPU, data "
                                             "and weights needed; tests/test_paper_table.py runs it small"),
    Rule(r"-m benchmarks\.sweep ", "listed", "a grid of full runs (tens of minutes); tests/test_sweep.py runs the "
                                             "same entry point small"),
    Rule(r"-m benchmarks\.editing\b", "listed", "30 full runs (about an hour); tests/test_editing_benchmark.py "
                                               "runs it small"),
    Rule(r"-m benchmarks\.mini_data ", "run", "writes the class-balanced subsets (seconds)"),
    Rule(r"bash benchmarks/\w+\.sh", "listed", "a batch of full comparisons (hours)"),
    Rule(r"^python -m benchmarks\.alignment$", "listed", "a timing of the alignment step (minutes on a CPU)"),
    Rule(r"main\.py --loadcheck checkpoints/ita_c100/edited\.pt", "run",
         "evaluates the model that the app.edit command before it saved"),
    Rule(r"^python -m benchmarks\.malloc_env$", "listed", "a timing of two child processes (a minute on a CPU)"),
    Rule(r"-m benchmarks\.fisher_precision\b", "listed", "the precision study (tens of minutes on a CPU); "
                                                         "tests/test_fisher_precision_benchmark.py runs it small"),
    Rule(r"-m benchmarks\.gpu_check --device cpu", "listed", "tests/test_gpu_check.py runs exactly this"),
    Rule(r"-m benchmarks\.gpu_check --full --out", "exit2", "needs CUDA (its CPU size is tests/test_gpu_check.py)"),
    Rule(r"-m benchmarks\.fisher_reference\b", "listed", "the Fisher beside the reference implementation (minutes on "
                                                       "a CPU); tests/test_fisher_reference_benchmark.py runs it small"),
    Rule(r"^python -m benchmarks\.phases --estimate h(100|200)( --fisher_precision \w+)?( --train_precision \w+)?"
         r"( --square_sum \w+)?$", "run", "prints the run-time model (seconds)"),
    Rule(r"^python -m benchmarks\.split_gemm --quick$", "run", "bf16x3 beside fp32 at a quarter of the shapes "
                                                               "(seconds on a CPU)"),
    Rule(r"^python -m benchmarks\.split_gemm --device cuda", "exit2", "needs CUDA"),
    Rule(r"^python -m benchmarks\.cpu_products --quick$", "run", "torch's products beside oneDNN's at width 192 "
                                                                 "(seconds on a CPU)"),
    Rule(r"^python -m benchmarks\.cpu_products$", "listed", "the same at ViT-B/16's width too (a minute on a CPU); "
                                                            "the --quick variant runs"),
    Rule(r"^python -m benchmarks\.compile_step$", "listed", "compiles ViT-B/16 with inductor on a CPU (up to 8 minutes) "
         "and times 2 tasks' steps (about 5 minutes more); the quick variant below runs the same script"),
    Rule(r"^python -m benchmarks\.compile_step --backbone vit_tiny ", "run", "the tiny ViT with aot_eager (seconds)"),
    Rule(r"^python -m benchmarks\.square_sum$", "listed", "a measurement of a minute on a CPU; tests/test_gpu_check.py "
                                                         "times its forms small"),
    Rule(r"^python -m benchmarks\.(feature_stats|debug_lines|checkpoint_size)$", "listed",
         "a measurement of minutes on a CPU; its test runs it small"),
    Rule(r"^python -m app\.(edit|report)$", "listed", "names the entry point only (usage shown next to it)"),
    Rule(r"^python main\.py$", "listed", "names the entry point only"),
    Rule(r"-m app\.demo ", "listed", "make demo's run (about 3.5 minutes); tests/test_demo.py runs its --debug_mode 1 "
                                      "smoke variant"),
    Rule(r"-m benchmarks\.mammoth_models\b", "listed", "runs Mammoth's 70 model files twice (tens of minutes); "
                                                      "tests/test_mammoth_models.py runs a fixed list of them"),
    Rule(r"-m app\.export_mammoth --to path/to/mammoth", "exit2", "needs a Mammoth checkout at that path; "
                                                               "tests/test_mammoth_export.py exports into one"),
    Rule(r"main\.py --model tmc --dataset seq-cifar10 .*--debug_mode 1", "listed",
         "runs inside the Mammoth checkout the export wrote (tests/test_mammoth_export.py runs it there)"),
    Rule(r"-m benchmarks\.claims\b", "listed", "the editing table on four datasets, three seeds (about an hour); "
                                             "tests/test_claims.py runs its MNIST part"),
    Rule(r"-m benchmarks\.module_lr\b", "listed", "first-task runs under several learning rates (tens of minutes); "
                                                 "tests/test_module_lr.py runs it small"),
    Rule(r"-m app\.report benchmarks/out/readme/results", "listed", "reads the README comparison's results "
                                                                    "(written by the compare command above)"),
]


def rule_for(command: Command) -> Optional[Rule]:
    for rule in RULES:
        if re.search(rule.pattern, command.text):
            return rule
    return None
