import os
import subprocess
import sys

from backbone import BACKBONES
from datasets import DATASETS
from models import MODELS
from tests.conftest import ROOT


def test_core_entries_are_registered():
    assert {"sgd", "joint"} <= set(MODELS.names())
    assert {"seq-cifar10", "seq-custom"} <= set(DATASETS.names())
    assert {"resnet18", "vit-tiny"} <= set(BACKBONES.names())
    assert MODELS.get("SGD") is MODELS.get("sgd")
    assert DATASETS.get("seq_cifar10") is DATASETS.get("seq-cifar10")


def test_importing_the_packages_has_no_side_effects(tmp_path):
    code = ("import os, torch; t = torch.get_num_threads(); cwd = os.getcwd(); "
            "import models, datasets, backbone, app.runner, app.config; "
            "from models import MODELS; MODELS.names(); from datasets import DATASETS; DATASETS.names(); "
            "assert os.getcwd() == cwd, 'cwd changed'; assert torch.get_num_threads() == t, 'threads changed'; "
            "print('ok')")
    env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert not any(tmp_path.iterdir())  # nothing written
