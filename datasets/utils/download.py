"""Downloads for the benchmarks: resumable, verified, atomically renamed; safe archive extraction; HF hub.

* :func:`download_file` streams ``url`` into ``<dest>.part`` (resuming it with an HTTP ``Range``
  request), checks the size, sha256 and/or md5 it was given, then renames it onto ``dest``.
  Without a known sha256 it records the file's sha256 in ``<dest>.sha256`` (a sidecar) so that
  later runs can detect a changed or truncated file (:func:`verify_file`).
* :func:`safe_extract` unpacks tar/zip archives, refusing absolute paths, ``..``, links that
  point outside the target folder and special files.
* :func:`hf_snapshot` / :func:`hf_file` fetch Hugging Face dataset repos, failing at once
  (never retrying) when ``HF_HUB_OFFLINE`` is set or the hub cannot be reached.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
from typing import Any, Callable, Iterable, Optional

from tqdm import tqdm

from datasets.utils.paths import make_folder
from utils.errors import UserError

CHUNK = 1 << 20


class DownloadError(UserError):
    """A download or verification failed (one-line message)."""


def downloads_disabled() -> bool:
    """True when ``CL_NO_DOWNLOAD`` is set: missing data is then an immediate error, no network is used."""
    return os.environ.get("CL_NO_DOWNLOAD", "").strip().lower() in ("1", "true", "yes", "on")


def file_digest(path: str, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_path(path: str) -> str:
    return path + ".sha256"


def check_digests(path: str, sha256: Optional[str] = None, md5: Optional[str] = None,
                  size: Optional[int] = None) -> None:
    """Raise :class:`DownloadError` unless ``path`` has the given size and digests."""
    if size is not None and os.path.getsize(path) != size:
        raise DownloadError(f"{path} has {os.path.getsize(path)} bytes, expected {size}: incomplete or wrong file; "
                            f"delete it and retry")
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected and file_digest(path, algorithm) != expected.lower():
            raise DownloadError(f"{algorithm} mismatch for {path} (expected {expected}): corrupted or wrong file; "
                                f"delete it and retry")


def verify_file(path: str, sha256: Optional[str] = None, md5: Optional[str] = None,
                size: Optional[int] = None) -> None:
    """Check ``path`` against known digests, else against its recorded sidecar sha256 (if any)."""
    if sha256 or md5 or size is not None:
        check_digests(path, sha256, md5, size)
        return
    side = sidecar_path(path)
    if os.path.isfile(side):
        with open(side) as fh:
            recorded = (fh.read().split() or [""])[0]
        if file_digest(path) != recorded:
            raise DownloadError(f"{path} no longer matches the sha256 recorded at download time in {side}; "
                                f"delete both files to download again")


def _open(url: str, start: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "cl-framework", **(
        {"Range": f"bytes={start}-"} if start else {})})
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - URLs are fixed in the dataset files


def download_file(url: str, dest: str, sha256: Optional[str] = None, md5: Optional[str] = None,
                  size: Optional[int] = None, timeout: float = 30.0, progress: bool = True) -> str:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify it and rename it into place.

    Returns ``dest``. An existing ``dest`` is verified, not downloaded again.
    """
    if os.path.isfile(dest):
        verify_file(dest, sha256, md5, size)
        return dest
    if downloads_disabled():
        raise DownloadError(f"downloads are disabled (CL_NO_DOWNLOAD is set): cannot fetch {url}")
    make_folder(os.path.dirname(os.path.abspath(dest)), "download folder")
    part = dest + ".part"
    start = os.path.getsize(part) if os.path.isfile(part) else 0
    try:
        response = _open(url, start, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # the partial file is already complete
            response = None
        else:
            raise DownloadError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot download {url}: {reason}") from None
    if response is not None:
        with response:
            resumed = start > 0 and getattr(response, "status", 200) == 206
            if not resumed:
                start = 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length is not None else size
            name = os.path.basename(dest)
            try:
                with open(part, "ab" if resumed else "wb") as out, \
                        tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=f"download {name}",
                             disable=not progress, leave=False) as bar:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        out.write(block)
                        bar.update(len(block))
            except (OSError, urllib.error.URLError) as exc:
                raise DownloadError(f"download of {url} interrupted ({exc}); run again to resume from "
                                    f"{os.path.getsize(part)} bytes") from None
    try:
        check_digests(part, sha256, md5, size)
    except DownloadError:
        os.remove(part)
        raise
    os.replace(part, dest)
    if not sha256:
        record_sidecar(dest)
    return dest


def record_sidecar(path: str) -> None:
    """Write ``<path>.sha256`` so that later loads can detect a changed or truncated file."""
    with open(sidecar_path(path), "w") as fh:
        fh.write(f"{file_digest(path)}  {os.path.basename(path)}\n")


def ensure_data(present: Callable[[], bool], fetch: Callable[[], None], dataset: str, wanted: str) -> None:
    """Run ``fetch`` when ``present()`` is false; a one-line error naming ``wanted`` if that fails."""
    if present():
        return
    try:
        fetch()
    except UserError as exc:
        raise missing_data_error(dataset, wanted, exc) from None
    if not present():
        raise missing_data_error(dataset, wanted, "the download did not produce the expected files")


def _check_member(name: str, target: str, link: Optional[str] = None) -> str:
    """The absolute path of archive member ``name`` inside ``target``, or a DownloadError."""
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DownloadError(f"unsafe archive: absolute path '{name}'")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise DownloadError(f"unsafe archive: path '{name}' escapes the target folder")
    path = os.path.realpath(os.path.join(target, name))
    root = os.path.realpath(target)
    if os.path.commonpath([path, root]) != root:
        raise DownloadError(f"unsafe archive: path '{name}' escapes the target folder")
    if link is not None:
        base = os.path.dirname(path)
        resolved = os.path.realpath(link if os.path.isabs(link) else os.path.join(base, link))
        if os.path.isabs(link) or os.path.commonpath([resolved, root]) != root:
            raise DownloadError(f"unsafe archive: link '{name}' -> '{link}' points outside the target folder")
    return path


def safe_extract(archive: str, target: str, progress: bool = True) -> None:
    """Extract a tar (any compression) or zip archive into ``target`` after checking every member."""
    make_folder(target, "download folder")
    desc = f"extract {os.path.basename(archive)}"
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = zf.infolist()
                for info in members:
                    _check_member(info.filename, target)
                for info in tqdm(members, desc=desc, unit="file", disable=not progress, leave=False):
                    zf.extract(info, target)
            return
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for member in members:
                if member.issym() or member.islnk():
                    link = member.linkname if member.issym() else os.path.relpath(
                        os.path.join(target, member.linkname), os.path.dirname(os.path.join(target, member.name)))
                    _check_member(member.name, target, link)
                elif not (member.isfile() or member.isdir()):
                    raise DownloadError(f"unsafe archive: '{member.name}' is a device or special file")
                else:
                    _check_member(member.name, target)
            for member in tqdm(members, desc=desc, unit="file", disable=not progress, leave=False):
                tf.extract(member, target, set_attrs=False, **_tar_filter())
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DownloadError(f"cannot extract {archive} ({type(exc).__name__}: {exc}); the archive is corrupted or "
                            f"incomplete: delete it and retry") from None


def _tar_filter() -> dict:
    """Python's own 'data' filter where available (defence in depth on top of our checks)."""
    return {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def download_and_extract(url: str, archive: str, target: str, sha256: Optional[str] = None,
                         md5: Optional[str] = None, done_marker: Optional[str] = None) -> None:
    """Download ``url`` to ``archive`` (verified), extract it into ``target``, then write ``done_marker``."""
    download_file(url, archive, sha256=sha256, md5=md5)
    safe_extract(archive, target)
    if done_marker:
        with open(done_marker, "w") as fh:
            fh.write(f"extracted from {os.path.basename(archive)}\n")


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks for no network access."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_error(repo_id: str, exc: BaseException) -> DownloadError:
    return DownloadError(f"cannot fetch the Hugging Face dataset {repo_id} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})")


def hf_snapshot(repo_id: str, local_dir: str, allow_patterns: Optional[Iterable[str]] = None,
                revision: Optional[str] = None) -> str:
    """Download (the files matching ``allow_patterns`` of) a Hugging Face dataset repo into ``local_dir``."""
    if hub_offline() or downloads_disabled():
        raise DownloadError(f"HF_HUB_OFFLINE or CL_NO_DOWNLOAD is set: cannot download the Hugging Face dataset {repo_id}")
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(repo_id=repo_id, repo_type="dataset", local_dir=local_dir, revision=revision,
                                 allow_patterns=list(allow_patterns) if allow_patterns else None, etag_timeout=10)
    except Exception as exc:  # network, auth, missing repo: one line for the user
        raise _hub_error(repo_id, exc) from None


def hf_file(repo_id: str, filename: str, local_dir: str, revision: Optional[str] = None) -> str:
    """Download one file of a Hugging Face dataset repo into ``local_dir``; returns its path."""
    if hub_offline() or downloads_disabled():
        raise DownloadError(f"HF_HUB_OFFLINE or CL_NO_DOWNLOAD is set: cannot download {filename} from the Hugging Face dataset {repo_id}")
    try:
        from huggingface_hub import hf_hub_download
        return hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset", local_dir=local_dir,
                               revision=revision, etag_timeout=10)
    except Exception as exc:
        raise _hub_error(repo_id, exc) from None


def missing_data_error(dataset: str, wanted: str, reason: BaseException | str) -> UserError:
    """The one-line error for data that is absent and could not be downloaded."""
    why = reason if isinstance(reason, str) else str(reason)
    return UserError(f"{dataset}: data not found and download failed ({why.rstrip('.')}); put {wanted} "
                     f"(or pass --base_path); see docs/datasets.md")


def onedrive_archive(url: str, archive: str, target: str) -> None:
    """Download a zip from a SharePoint/OneDrive link (``onedrivedownloader``) and extract it safely into ``target``.

    A single top-level folder in the archive is flattened, so ``target`` gets the files themselves.
    """
    if downloads_disabled():
        raise DownloadError(f"downloads are disabled (CL_NO_DOWNLOAD is set): cannot fetch {url}")
    make_folder(os.path.dirname(os.path.abspath(archive)), "download folder")
    if not os.path.isfile(archive):
        try:
            from onedrivedownloader import download
            download(url, filename=archive + ".part", unzip=False, force_download=True)
        except Exception as exc:
            raise DownloadError(f"cannot download {url} from OneDrive ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None
        if not os.path.isfile(archive + ".part"):
            raise DownloadError(f"the OneDrive download of {url} produced no file")
        os.replace(archive + ".part", archive)
    safe_extract(archive, target)
    entries = [e for e in os.listdir(target) if os.path.join(target, e) != os.path.abspath(archive)
               and not e.startswith(".")]
    inner = os.path.join(target, entries[0]) if len(entries) == 1 else None
    if inner and os.path.isdir(inner):
        for name in os.listdir(inner):
            os.replace(os.path.join(inner, name), os.path.join(target, name))
        os.rmdir(inner)


def with_onedrive_fallback(primary: Callable[[], None], url: Optional[str], archive: str, target: str) -> None:
    """Run ``primary`` (e.g. the Hugging Face download); if it fails and ``url`` is set, use the OneDrive mirror."""
    try:
        primary()
    except DownloadError as exc:
        if not url:
            raise
        try:
            onedrive_archive(url, archive, target)
        except DownloadError as fallback:
            raise DownloadError(f"{str(exc).rstrip('.')}; the OneDrive mirror failed too: {fallback}") from None


# Mammoth's own mirrors of the datasets it hosts on OneDrive/SharePoint (the links of its dataset files), used
# when the Hugging Face download fails; ``--onedrive_url none`` turns the fallback off.
MAMMOTH_ONEDRIVE = {
    "seq-cub200": '<iframe src="https://onedrive.live.com/embed?cid=D3924A2D106E0039&resid=D3924A2D106E0039%21110'
                  '&authkey=AIEfi5nlRyY1yaE" width="98" height="120" frameborder="0" scrolling="no"></iframe>',
    "seq-cropdisease": "https://unimore365-my.sharepoint.com/:u:/g/personal/215580_unimore_it/"
                       "EZUaXKQUAVBPrhjHTUdflDEBNu0YiPWrdpAdDhnEU4nD2A?e=GPrCYF",
    "seq-resisc45": "https://unimore365-my.sharepoint.com/:u:/g/personal/215580_unimore_it/"
                    "EbxMu5z5HbVIkG9qFCGbg7ABDRZvpBEA8uqVC-Em9HYVug?e=Cfc4Yc",
}


def add_onedrive_arg(parser: Any, dataset: str) -> None:
    """``--onedrive_url``: the SharePoint/OneDrive archive used when the Hugging Face download fails (default:
    Mammoth's mirror of ``dataset``)."""
    from utils.args import add_run_flag  # where the data comes from does not change results
    add_run_flag(parser, "--onedrive_url", type=lambda v: None if v.lower() in ("none", "null") else v,
                 default=MAMMOTH_ONEDRIVE[dataset],
                 help="SharePoint/OneDrive link of the dataset archive, tried when the Hugging Face download "
                      "fails (default: Mammoth's mirror; 'none' to turn the fallback off)")
