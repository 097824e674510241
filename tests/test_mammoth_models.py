"""Model files written for Mammoth (tests/mammoth_style/ and Mammoth's own, from its source snapshot) run unchanged;
the compatibility layer's pieces."""
import json
import os

import pytest
import torch
from torchvision import transforms as T

from mammoth_compat.buffer import Buffer
from mammoth_compat.model import filter_keywords
from mammoth_compat.transforms import DeNormalize, to_device_transform
from tests.conftest import make_npz, tiny_run_args
from tests.mammoth_style import mammoth_models  # noqa: F401 - fixture
from app.runner import run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_npz(str(tmp_path_factory.mktemp("mm") / "d.npz"), n_classes=6, per_class=6)


def mm_args(model, data, tmp_path, *extra):
    return ["--model", model, *tiny_run_args(data, tmp_path, n_tasks=3), "--plots", "0",
            "--results_file", str(tmp_path / "r.json"), *extra]


@pytest.mark.parametrize("model, extra", [
    ("mm_dark", ["--buffer_size", "10", "--minibatch_size", "3", "--alpha", "0.5"]),
    ("mm_anchor", ["--reg_weight", "0.1"]),
    ("mm_devaug", ["--buffer_size", "10", "--minibatch_size", "4"]),
])
def test_mammoth_style_models_run_end_to_end(mammoth_models, data, tmp_path, model, extra):
    res = run(mm_args(model, data, tmp_path, *extra))
    assert res["complete"] and [len(r) for r in res["accuracy_matrix_class_il"]] == [1, 2, 3]
    assert 0 <= res["final_class_il"] <= 100


def test_hooks_and_attributes_seen_by_a_mammoth_model(mammoth_models, data, tmp_path):
    log = tmp_path / "hooks.json"
    run(mm_args("mm_hooks", data, tmp_path, "--hooks_log", str(log), "--freeze_head", "1"))
    events = json.loads(log.read_text())
    assert [e["hook"] for e in events] == ["begin_task", "end_task", "end_eval"] * 3
    begins = [e for e in events if e["hook"] == "begin_task"]
    assert [(e["n_past"], e["n_seen"], e["n_cur"], e["remaining"]) for e in begins] == \
        [(0, 2, 2, 4), (2, 4, 2, 2), (4, 6, 2, 0)]
    assert [e["offsets"] for e in begins] == [[0, 2], [2, 4], [4, 6]]
    assert all(e["cpt"] == 2 and e["n_classes"] == e["num_classes"] == 6 and e["n_tasks"] == e["N_TASKS"] == 3
               and e["setting"] == "class-il" and e["freeze_head"] for e in begins)
    ends = [e for e in events if e["hook"] == "end_task"]
    # 36 train images / 3 tasks / batch 4 = 3 steps per task; end_task sees the task index, end_eval one more
    assert [(e["current_task"], e["steps"], e["task_iteration"]) for e in ends] == [(0, 3, 3), (1, 3, 3), (2, 3, 3)]
    assert [(e["current_task"], e["n_accs"]) for e in events if e["hook"] == "end_eval"] == [(1, 1), (2, 2), (3, 3)]


def test_mammoth_buffer_stores_logits_and_filters_tasks():
    torch.manual_seed(0)
    buf = Buffer(4)
    x = torch.arange(6 * 3, dtype=torch.float32).view(6, 3)
    logits = x * 10
    buf.add_data(examples=x[:3], logits=logits[:3], task_labels=torch.tensor([0, 0, 0]))
    buf.add_data(examples=x[3:], logits=logits[3:], task_labels=torch.tensor([1, 1, 1]))
    assert len(buf) == 4 and buf.num_seen_examples == 6 and buf.labels is None
    ex, lo, tl = buf.get_all_data()
    assert torch.equal(lo, ex * 10)  # each stored logit row stays with its example
    idx, ex, lo, tl = buf.get_data(10, return_index=True, mask_task_out=1)
    assert (tl == 0).all() and torch.equal(ex, buf.examples[idx]) and torch.equal(lo, ex * 10)
    ex2, lo2, _ = buf.get_data_by_index(idx, transform=lambda e: e + 1)
    assert torch.equal(ex2, ex + 1) and torch.equal(lo2, lo)
    state = buf.state_dict()
    other = Buffer(4)
    other.load_state_dict(state)
    assert torch.equal(other.get_all_data()[1], buf.get_all_data()[1])
    buf.empty()
    assert buf.is_empty() and buf.examples is None


def test_device_transform_matches_torchvision_on_deterministic_ops():
    torch.manual_seed(0)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    tv = T.Compose([T.ToPILImage(), T.Resize(12), T.CenterCrop(10), T.RandomHorizontalFlip(p=1.0),
                    T.ToTensor(), T.Normalize(mean, std)])
    dev = to_device_transform(tv)
    x = torch.rand(5, 3, 16, 16)
    out = dev(x)
    expected = torch.stack([T.Normalize(mean, std)(T.CenterCrop(10)(T.Resize(12)(img)).flip(-1)) for img in x])
    assert out.shape == (5, 3, 10, 10)
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(DeNormalize(mean, std)(out), T.CenterCrop(10)(T.Resize(12)(x)).flip(-1), atol=1e-5)
    assert dev(x[0]).shape == (3, 10, 10)


def test_device_transform_draws_random_crops_per_image():
    torch.manual_seed(0)
    dev = to_device_transform(T.Compose([T.RandomCrop(8, padding=2), T.ToTensor()]))
    x = torch.rand(1, 3, 8, 8).repeat(16, 1, 1, 1)
    out = dev(x)
    assert out.shape == (16, 3, 8, 8)
    distinct = {tuple(o.flatten()[:20].tolist()) for o in out}
    assert len(distinct) > 3  # one draw per image, not one per batch
    # every output is an 8x8 window of the zero-padded input
    padded = torch.nn.functional.pad(x[0], (2, 2, 2, 2))
    windows = [padded[:, i:i + 8, j:j + 8] for i in range(5) for j in range(5)]
    assert all(any(torch.equal(o, w) for w in windows) for o in out)


def test_observe_gets_only_the_keywords_it_declares():
    def observe_plain(inputs, labels, not_aug_inputs):
        pass

    def observe_epoch(inputs, labels, not_aug_inputs, epoch=None):
        pass

    def observe_any(inputs, labels, not_aug_inputs, **kwargs):
        pass

    given = {"epoch": 2, "true_labels": torch.zeros(2)}
    assert filter_keywords(observe_plain, given) == {}
    assert filter_keywords(observe_epoch, given) == {"epoch": 2}
    assert set(filter_keywords(observe_any, given)) == {"epoch", "true_labels"}


def test_not_augmented_view_is_built_when_a_mammoth_observe_uses_it(mammoth_models):
    from models import MODELS
    from models.utils.continual_model import ContinualModel
    from mammoth_compat.model import uses_not_aug
    found = {n: uses_not_aug(MODELS.get(n), ContinualModel) for n in ("mm_dark", "mm_devaug", "mm_anchor", "mm_hooks",
                                                                      "er", "sgd")}
    assert found == {"mm_dark": True, "mm_devaug": True, "mm_anchor": False, "mm_hooks": False, "er": True,
                     "sgd": False}  # undeclared: from observe's code; declared (er, sgd): USES_NOT_AUG


# ----- Mammoth's own model files (benchmarks/mammoth_models.py measures all of them) ---------------------------
# Each exercises framework modules Mammoth's files import: bn_track_stats, fill_buffer/icarl_replay, get_dataset
# (icarl); train_loader.dataset.data and attached per-sample logits (lwf); get_offsets(n_tasks) and replay with
# task labels (xder_ce); the LiDER base class and returnt='full' (er_ace_lider); get_backbone(args) (gdumb)
FIXED_MODELS = ["icarl", "lwf", "xder_ce", "er_ace_lider", "gdumb"]


@pytest.fixture(scope="module")
def mammoth_tree(tmp_path_factory):
    from benchmarks import mammoth_models as mm
    from tests.conftest import shared_missing
    if not os.path.isfile(mm.SNAPSHOT):
        shared_missing(mm.SNAPSHOT)
    return mm.extract(mm.SNAPSHOT, str(tmp_path_factory.mktemp("mammoth")))


def test_mammoth_model_files_run_unchanged(mammoth_tree, tmp_path):
    from benchmarks import mammoth_models as mm
    data = make_npz(str(tmp_path / "d.npz"), n_classes=10, per_class=4, size=16)
    results = mm.run_all(mammoth_tree, [(m, "seq-custom") for m in FIXED_MODELS], mm.ROOT, str(tmp_path), data,
                         timeout=300, parallel=2)
    assert [(r.model, r.outcome, r.first_error) for r in results] == [(m, "runs", "") for m in FIXED_MODELS]


def test_measurement_copies_method_code_and_classifies_outcomes(mammoth_tree):
    from benchmarks import mammoth_models as mm
    assert mm.method_code(mammoth_tree, "agem_r") == ["models/agem.py", "models/agem_r.py", "models/gem.py"]
    assert mm.method_code(mammoth_tree, "derpp_casper") == ["models/casper_utils", "models/derpp_casper.py"]
    assert mm.method_code(mammoth_tree, "icarl_lider") == ["models/icarl_lider.py"]  # models/utils is framework
    assert mm.required_flags(os.path.join(mammoth_tree, "models", "derpp.py")) == ["alpha", "beta", "buffer_size"]
    assert mm.classify(0, "") == ("runs", "")
    assert mm.classify(None, "") == ("timeout", "")
    assert mm.classify(2, "error: model 'x' cannot be used: importing models.x failed: ModuleNotFoundError: "
                          "No module named 'utils.nothing'")[0] == "import"
    assert mm.classify(2, "error: ... ModuleNotFoundError: No module named 'ftfy'")[0] == "package"
    trace = 'Traceback:\n  File "/x/utils/training.py", line 9, in train\nValueError: bad /tmp/a/b.py thing'
    assert mm.classify(1, trace) == ("training", "ValueError: bad b.py thing")
    assert mm.classify(2, "error: --buffer_size is required")[0] == "setup"


def test_mammoth_framework_helpers():
    from mammoth_compat.layers import bn_track_stats
    from mammoth_compat.ring_buffer import RingBuffer
    from mammoth_compat.losses import SupConLoss, batch_hard_triplet_loss, mixup
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    before = net[1].running_mean.clone()
    with bn_track_stats(net, False):
        net(torch.randn(4, 3, 2, 2))
    assert torch.equal(net[1].running_mean, before) and net[1].track_running_stats
    net(torch.randn(4, 3, 2, 2))
    assert not torch.equal(net[1].running_mean, before)
    ring = RingBuffer(6, n_tasks=2)
    ring.add_data(torch.arange(5.).view(5, 1), labels=torch.arange(5))
    assert sorted(ring.get_all_data()[1].tolist()) == [2, 3, 4]  # task 0's slice holds the last 3
    ring.task_number, ring.num_seen_examples = 1, 0
    ring.add_data(torch.arange(2.).view(2, 1), labels=torch.tensor([7, 8]))
    assert sorted(ring.get_all_data()[1].tolist()) == [2, 3, 4, 7, 8] and len(ring.get_data(10)[0]) == 5
    a, b = torch.zeros(3, 2), torch.ones(3, 2)
    assert torch.equal(mixup([(a, b)], 1.0, force_lambda=0.25), torch.full((3, 2), 0.75))
    labels, emb = torch.tensor([0, 0, 1, 1]), torch.tensor([[0.], [0.1], [5.], [5.2]])
    assert batch_hard_triplet_loss(labels, emb, k=1, margin_type="hard") == 0  # far negatives
    assert batch_hard_triplet_loss(torch.zeros(4).long(), emb, k=1) is None  # no negatives
    feats = torch.nn.functional.normalize(torch.randn(4, 2, 8), dim=2)
    assert SupConLoss()(feats, labels).item() > 0


def test_mammoth_buffer_selection_strategies():
    lars = Buffer(4, sample_selection_strategy="lars")
    lars.add_data(torch.zeros(4, 1), labels=torch.arange(4), sample_selection_scores=torch.tensor([1., 0, 0, 0]))
    lars.add_data(torch.ones(30, 1), labels=torch.full((30,), 9))
    assert lars.labels.tolist()[1:] == [1, 2, 3] and lars.labels[0] in (0, 9)  # only the top-scored slot is replaced
    balanced = Buffer(10, sample_selection_strategy="balancoir")
    balanced.add_data(torch.zeros(30, 1), labels=torch.zeros(30).long())
    balanced.add_data(torch.ones(8, 1), labels=torch.ones(8).long())
    assert balanced.labels.tolist().count(1) >= 5  # a class below the median always enters
    _, labels = balanced.get_balanced_data(4, n_classes=2)
    assert sorted(labels.tolist()) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="not available"):
        Buffer(4, sample_selection_strategy="unknown")

