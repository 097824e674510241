"""Builders of malformed inputs (npz files, image folders, YAML configs) and the one-line-error check,
shared by tests/test_reliability_inputs_round2.py and tests/test_fuzz_inputs.py."""
from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image

from app.runner import main


def files_under(folder) -> set[str]:
    return {os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs}


def run_expecting_error(capsys, argv, folder, code=2) -> str:
    """``main(argv)`` must exit ``code`` with one ``error:`` line, no traceback and no new file under ``folder``."""
    before = files_under(folder)
    rc = main(list(argv))
    captured = capsys.readouterr()
    err = captured.err
    lines = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
    assert "Traceback" not in err, err
    assert rc == code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    new = files_under(folder) - before
    assert not new, f"new files: {sorted(new)}"
    return lines[0]


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_with_header(shape: tuple, dtype: str = "|u1", payload: bytes = b"\0" * 64) -> bytes:
    """An .npy whose header declares ``shape`` but whose data is only ``payload``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + payload  # the header writer also writes the magic string


def write_npz_members(path, members: dict[str, bytes]) -> str:
    """An npz (zip of ``<name>.npy``) from raw member bytes."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)
    return str(path)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (a decompression bomb as seen by PIL's check)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def write_image_folder(root, classes=("a", "b", "c", "d"), per_class=3, size=8, ext="png") -> str:
    """``root/train/<class>/`` and ``root/test/<class>/`` of tiny images, one colour per class."""
    for split, n in (("train", per_class), ("test", max(1, per_class // 2))):
        for c, name in enumerate(classes):
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(n):
                Image.new("RGB", (size, size), (60 * c % 256, 30 * i % 256, 90)).save(
                    os.path.join(root, split, name, f"{i}.{ext}"))
    return str(root)


def folder_run_args(root, tmp, *extra) -> list[str]:
    """A seconds-long seq-custom run on an image folder (8x8 images, tiny ViT)."""
    return ["--model", "sgd", "--dataset", "seq-custom", "--data_path", str(root), "--n_tasks", "2", "--img_size", "8",
            "--backbone", "vit_tiny", "--embed_dim", "32", "--depth", "1", "--num_heads", "2", "--lr", "0.05",
            "--n_epochs", "1", "--batch_size", "4", "--seed", "0", "--non_verbose", "--plots", "0",
            "--base_path", str(tmp / "data"), "--checkpoint_path", str(tmp / "ckpt"),
            "--results_file", str(tmp / "res" / "r.json"), *extra]
