"""The paper's published command lines resolve every published value (algorithm.md §6.3 and §7), in21k weights."""
import pytest

from app.config import parse_args
from utils.errors import UserError

C100, CROP = "seq-cifar100-224", "seq-cropdisease"
ITA_C100 = ["--model", "second_order", "--dataset", C100, "--model_config", "best"]
IEL_C100 = ["--model", "second_order", "--dataset", C100, "--tuning_style", "lora", "--use_iel", "1",
            "--beta_iel", "20", "--req_weight_cls", "0.1", "--simple_reg_weight_cls", "0.001", "--lr", "0.0003",
            "--batch_size", "8", "--virtual_bs_n", "16", "--num_epochs_pretuning", "3",
            "--learning_rate_pretuning", "0.01", "--dataset_config", "second_order_ta"]
ITA_CROP = ["--model", "second_order", "--dataset", CROP, "--model_config", "best"]

COMMON = {"backbone": "vit", "pretrain_type": "in21k", "pretrained": True, "pretrained_path": None,
          "optimizer": "adamw", "optim_wd": 0.0, "tuning_style": "lora", "lora_r": 16, "lr": 0.0003,
          "batch_size": 8, "virtual_bs_n": 16, "learning_rate_pretuning": 0.01, "num_epochs_align_pretuning": 10,
          "lr_align_pretuning": 0.01, "num_samples_align_pretuning": 256, "batch_size_align_pretuning": 128,
          "clip_grad": 100.0, "fisher_mc_classes": None, "fisher_sampled_labels": None, "penalty_step": "auto",
          "init_head_from_pretuned": False, "precision": "fp32", "permute_classes": False}
EXPECTED = {  # algorithm.md §6.3 table, column by column
    "ita_c100": {**COMMON, "n_epochs": 20, "use_iel": False, "alpha_ita": 0.02, "beta_iel": 0.0,
                 "req_weight_cls": 0.025, "simple_reg_weight_cls": 0.001, "num_epochs_pretuning": 3},
    "iel_c100": {**COMMON, "n_epochs": 20, "use_iel": True, "alpha_ita": 0.0, "beta_iel": 20.0,
                 "req_weight_cls": 0.1, "simple_reg_weight_cls": 0.001, "num_epochs_pretuning": 3},
    "ita_crop": {**COMMON, "n_epochs": 5, "use_iel": False, "alpha_ita": 5.0, "beta_iel": 0.0,
                 "req_weight_cls": 0.1, "simple_reg_weight_cls": 0.01, "num_epochs_pretuning": 1},
}
STRUCTURE = {C100: (10, 10, 100, [0.5] * 3), CROP: (7, 5, 35, [0.485, 0.456, 0.406])}
LINES = [
    ("ita_c100", "second_order", ITA_C100),
    ("ita_c100", "ita", ["--model", "ita", "--dataset", C100, "--model_config", "best"]),
    ("iel_c100", "second_order", IEL_C100),
    ("iel_c100", "iel", ["--model", "iel", "--dataset", C100, "--model_config", "best"]),
    ("ita_crop", "second_order", ITA_CROP),
    ("ita_crop", "ita", ["--model", "ita", "--dataset", CROP, "--model_config", "best"]),
]


@pytest.mark.parametrize("key, model, argv", LINES, ids=[f"{k}-{m}" for k, m, _ in LINES])
def test_published_command_line_resolves_every_published_value(key, model, argv):
    args = parse_args(argv)
    resolved = {name: getattr(args, name) for name in EXPECTED[key]}
    assert resolved == EXPECTED[key]
    assert args.model == model
    structure = args.dataset_structure  # datasets/configs/<dataset>/second_order_ta.yaml
    n_tasks, per_task, total, mean = STRUCTURE[args.dataset]
    assert (structure["N_TASKS"], structure["N_CLASSES_PER_TASK"], structure["N_CLASSES"], structure["MEAN"]) == \
        (n_tasks, per_task, total, mean)


def test_the_command_line_still_wins_and_other_backbones_keep_working():
    args = parse_args(ITA_C100 + ["--pretrain_type", "in21k-ft-in1k", "--alpha_ita", "0.5", "--n_epochs", "2"])
    assert (args.pretrain_type, args.alpha_ita, args.n_epochs, args.req_weight_cls) == ("in21k-ft-in1k", 0.5, 2, 0.025)
    args = parse_args(ITA_C100 + ["--backbone", "vit_tiny"])  # no --pretrain_type flag: the model default is skipped
    assert args.backbone == "vit_tiny" and not hasattr(args, "pretrain_type") and args.alpha_ita == 0.02
    args = parse_args(["--model", "sgd", "--dataset", C100, "--lr", "0.1"])  # other models keep vit's own default
    assert args.pretrain_type == "in21k-ft-in1k"


def test_iel_has_no_published_cropdisease_line():
    with pytest.raises(UserError, match="has no section for 'seq-cropdisease'"):
        parse_args(["--model", "iel", "--dataset", CROP, "--model_config", "best"])
