"""``--loadcheck`` from a URL (Mammoth's remote checkpoints): downloaded once into a cache, verified, then
loaded like a local file (``weights_only=True``).

Accepted forms (an optional ``#sha256=<hex>`` suffix is checked after the download):

* ``hf://<owner>/<repo>/<path/in/repo>[@<revision>]`` or
  ``https://huggingface.co/<owner>/<repo>/resolve/<revision>/<path>``: through ``huggingface_hub``
  (its own cache; ``HF_HUB_OFFLINE`` is honoured);
* SharePoint/OneDrive links (``*.sharepoint.com``, ``1drv.ms``, ``onedrive.live.com``): through
  ``onedrivedownloader``, into ``<checkpoint_path>/downloads/``;
* any other ``https://``/``http://`` URL: a resumable, verified download into ``<checkpoint_path>/downloads/``.
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Optional
from urllib.parse import unquote, urlparse

from datasets.utils.download import DownloadError, check_digests, download_file, downloads_disabled, hub_offline
from datasets.utils.paths import make_folder

ONEDRIVE_HOSTS = ("sharepoint.com", "1drv.ms", "onedrive.live.com")


def is_url(spec: str) -> bool:
    return bool(re.match(r"^(https?|hf)://", spec.strip(), re.IGNORECASE))


def split_checksum(spec: str) -> tuple[str, Optional[str]]:
    """``(url, sha256)`` from ``url#sha256=<hex>``."""
    match = re.search(r"#sha256=([0-9a-fA-F]{64})$", spec)
    return (spec[:match.start()], match.group(1).lower()) if match else (spec, None)


def parse_hf(url: str) -> Optional[tuple[str, str, Optional[str]]]:
    """``(repo_id, filename, revision)`` of a Hugging Face file URL, else None."""
    if url.startswith("hf://"):
        rest, _, revision = url[5:].partition("@")
        parts = rest.split("/")
        if len(parts) < 3:
            raise DownloadError(f"--loadcheck {url}: expected hf://<owner>/<repo>/<file>[@<revision>]")
        return "/".join(parts[:2]), "/".join(parts[2:]), revision or None
    parsed = urlparse(url)
    if parsed.netloc.lower() in ("huggingface.co", "www.huggingface.co"):
        parts = [unquote(p) for p in parsed.path.strip("/").split("/")]
        if len(parts) >= 5 and parts[2] in ("resolve", "blob"):
            return "/".join(parts[:2]), "/".join(parts[4:]), parts[3]
        raise DownloadError(f"--loadcheck {url}: expected https://huggingface.co/<owner>/<repo>/resolve/<rev>/<file>")
    return None


def cache_name(url: str) -> str:
    """A file name unique to ``url`` that keeps its basename."""
    base = os.path.basename(urlparse(url).path) or "checkpoint.pt"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:12]}_{base}"


def fetch_hf(repo_id: str, filename: str, revision: Optional[str]) -> str:
    if hub_offline() or downloads_disabled():
        raise DownloadError(f"HF_HUB_OFFLINE or CL_NO_DOWNLOAD is set: cannot download {filename} from {repo_id}")
    try:
        from huggingface_hub import hf_hub_download
        return hf_hub_download(repo_id=repo_id, filename=filename, revision=revision, etag_timeout=10)
    except Exception as exc:  # network, auth, missing file: one line
        raise DownloadError(f"cannot download {filename} from the Hugging Face repo {repo_id} "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None


def fetch_onedrive(url: str, dest: str) -> str:
    """A SharePoint/OneDrive file through ``onedrivedownloader`` (no unzip), renamed into place when complete."""
    if os.path.isfile(dest):
        return dest
    if downloads_disabled():
        raise DownloadError(f"downloads are disabled (CL_NO_DOWNLOAD is set): cannot fetch {url}")
    make_folder(os.path.dirname(os.path.abspath(dest)), "download folder")
    part = dest + ".part"
    try:
        from onedrivedownloader import download
        download(url, filename=part, unzip=False, force_download=True)
    except Exception as exc:
        raise DownloadError(f"cannot download {url} from OneDrive ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None
    if not os.path.isfile(part):
        raise DownloadError(f"the OneDrive download of {url} produced no file")
    os.replace(part, dest)
    return dest


def resolve_checkpoint(spec: str, checkpoint_path: str) -> str:
    """A local file for ``--loadcheck spec`` (downloaded and verified if ``spec`` is a URL)."""
    if not is_url(spec):
        return spec
    url, sha256 = split_checksum(spec.strip())
    hf = parse_hf(url)
    folder = os.path.join(checkpoint_path, "downloads")
    if hf is not None:
        path = fetch_hf(*hf)
    elif any(host in urlparse(url).netloc.lower() for host in ONEDRIVE_HOSTS):
        path = fetch_onedrive(url, os.path.join(folder, cache_name(url)))
    else:
        return download_file(url, os.path.join(folder, cache_name(url)), sha256=sha256)
    if sha256:
        check_digests(path, sha256=sha256)
    return path
