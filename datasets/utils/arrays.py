"""Readers for datasets stored as arrays (npz of uint8 images, torch uint8 tensors), with clear errors."""
from __future__ import annotations

import json
import os
import zipfile
from typing import Optional

import numpy as np
import torch

from datasets.utils.download import verify_file
from datasets.utils.paths import check_regular
from datasets.utils.sources import ImageSource
from utils.errors import UserError
from utils.resources import check_fits, human

NPY_MAGIC = b"\x93NUMPY"


def npz_headers(path: str, fix: str = "the file is corrupt or of another format"
                ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{array name: (shape, dtype)}`` of an npz, read from the array headers only (nothing is loaded).

    A ``.npy`` file, a file that is not a zip archive, or an array whose header declares more bytes
    than the archive stores (a corrupt header, or a truncated file) is a one-line :class:`UserError`.
    """
    check_regular(path, "data file")
    try:
        with open(path, "rb") as fh:
            start = fh.read(len(NPY_MAGIC))
        if start == NPY_MAGIC:
            raise UserError(f"{path} is a .npy file (a single array), not an .npz archive; save the arrays "
                            f"together with numpy.savez(path, ...) and pass that .npz")
        headers = {}
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(member)
                    header_bytes = member.tell()
                declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if not dtype.hasobject and declared > info.file_size - header_bytes:
                    raise UserError(f"{path}: array {info.filename[:-4]} declares shape {tuple(shape)} ({human(declared)})"
                                    f" but the file stores {human(info.file_size)}; {fix}")
                headers[info.filename[:-4]] = (tuple(int(d) for d in shape), dtype)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, NotImplementedError) as exc:
        raise UserError(f"cannot read {path} as an npz file ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); {fix}") from None
    return headers


def check_npz_fits(path: str, headers: dict[str, tuple[tuple[int, ...], np.dtype]], names: tuple[str, ...]) -> None:
    """The arrays ``names`` of ``path`` must fit in memory (checked from their headers, before loading)."""
    sizes = {n: int(np.prod(headers[n][0], dtype=object)) * headers[n][1].itemsize for n in names if n in headers}
    if sizes:
        largest = max(sizes, key=sizes.get)
        check_fits(sum(sizes.values()), f"{path} (array {largest} of shape {headers[largest][0]}, and the others)",
                   "the file's shapes are wrong or the data is too large for this machine: use a smaller file")


def _check_images(data: np.ndarray, targets: np.ndarray, where: str) -> None:
    if data.dtype != np.uint8 or data.ndim != 4 or data.shape[3] != 3:
        raise UserError(f"{where}: expected uint8 images (N, H, W, 3), got {data.dtype} {data.shape}")
    if targets.ndim != 1 or len(targets) != len(data) or not np.issubdtype(targets.dtype, np.integer):
        raise UserError(f"{where}: expected {len(data)} integer labels, got {targets.dtype} {targets.shape}")


def read_npz_split(path: str) -> tuple[ImageSource, Optional[list[str]]]:
    """``data`` (uint8 NHWC) and ``targets`` of a Mammoth-style npz, plus ``classes`` if stored."""
    verify_file(path)
    check_npz_fits(path, npz_headers(path, "the file is corrupted or incomplete: delete it to download it again"),
                   ("data", "targets"))
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("data", "targets") if k not in npz.files]
            if missing:
                raise UserError(f"{path} lacks the arrays {', '.join(missing)} (has {', '.join(npz.files)}); "
                                f"the file is not the expected one: delete it")
            data, targets = npz["data"], npz["targets"]
            classes = [str(c) for c in npz["classes"]] if "classes" in npz.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise UserError(f"cannot read {path} ({type(exc).__name__}: {str(exc).splitlines()[0]}); the file is "
                        f"corrupted or incomplete: delete it to download it again") from None
    _check_images(data, targets, path)
    return ImageSource(np.ascontiguousarray(data), targets.astype(np.int64)), classes


def read_tensor(path: str) -> torch.Tensor:
    """A tensor saved with ``torch.save`` (loaded with ``weights_only=True``)."""
    check_regular(path, "data file")
    verify_file(path)
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/corrupt files
        raise UserError(f"cannot read {path} ({type(exc).__name__}); the file is corrupted or incomplete: "
                        f"delete it to download it again") from None
    if not isinstance(value, torch.Tensor):
        raise UserError(f"{path} holds a {type(value).__name__}, expected a tensor")
    return value


def read_pt_split(images_path: str, labels_path: str) -> ImageSource:
    """uint8 (N, 3, H, W) images and (N,) labels saved as tensors -> NHWC source."""
    images, labels = read_tensor(images_path), read_tensor(labels_path)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise UserError(f"{images_path}: expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    data = images.permute(0, 2, 3, 1).contiguous().numpy()
    targets = labels.numpy().astype(np.int64) if labels.ndim == 1 else np.asarray([])
    _check_images(data, targets, labels_path)
    return ImageSource(data, targets)


def read_class_names(folder: str) -> Optional[list[str]]:
    """``class_names.json`` (a list, or a mapping id -> name) if present."""
    path = os.path.join(folder, "class_names.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as fh:
            names = json.load(fh)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path} ({exc}); delete it") from None
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=lambda k: int(k))]
    return [str(n) for n in names]
