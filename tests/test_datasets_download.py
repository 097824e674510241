"""The download helper against a local HTTP server: resume, checksums, sidecars, safe extraction, offline hub."""
import hashlib
import io
import os
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from datasets.utils import download as dl

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


class RangeHandler(BaseHTTPRequestHandler):
    """Serves PAYLOAD at /file.bin with HTTP Range support; records the Range headers it saw."""

    ranges: list = []

    def do_GET(self):  # noqa: N802 - http.server API
        if self.path != "/file.bin":
            self.send_error(404)
            return
        header = self.headers.get("Range")
        type(self).ranges.append(header)
        start = int(header.split("=")[1].split("-")[0]) if header else 0
        body = PAYLOAD[start:]
        self.send_response(206 if header else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.delenv("CL_NO_DOWNLOAD", raising=False)
    RangeHandler.ranges = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_resumes_from_partial_file_and_verifies(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:1000])
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    dl.download_file(f"{server}/file.bin", str(dest), sha256=sha, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert RangeHandler.ranges == ["bytes=1000-"]
    assert not (tmp_path / "file.bin.part").exists()
    dl.download_file(f"{server}/file.bin", str(dest), sha256=sha, progress=False)  # present: no new request
    assert RangeHandler.ranges == ["bytes=1000-"]


def test_checksum_mismatch_is_rejected_and_nothing_is_kept(server, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(dl.DownloadError, match="sha256 mismatch"):
        dl.download_file(f"{server}/file.bin", str(dest), sha256="0" * 64, progress=False)
    assert not dest.exists() and not (tmp_path / "file.bin.part").exists()
    with pytest.raises(dl.DownloadError, match="md5 mismatch"):
        dl.download_file(f"{server}/file.bin", str(dest), md5="0" * 32, progress=False)
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    dl.download_file(f"{server}/file.bin", str(dest), md5=md5, size=len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_sidecar_records_sha256_and_detects_later_corruption(server, tmp_path):
    dest = tmp_path / "file.bin"
    dl.download_file(f"{server}/file.bin", str(dest), progress=False)
    recorded = (tmp_path / "file.bin.sha256").read_text().split()[0]
    assert recorded == hashlib.sha256(PAYLOAD).hexdigest()
    dl.verify_file(str(dest))
    dest.write_bytes(PAYLOAD[:-10])
    with pytest.raises(dl.DownloadError, match="no longer matches"):
        dl.verify_file(str(dest))


def test_http_errors_and_disabled_downloads_are_one_line_errors(server, tmp_path, monkeypatch):
    with pytest.raises(dl.DownloadError, match="HTTP 404"):
        dl.download_file(f"{server}/missing.bin", str(tmp_path / "m.bin"), progress=False)
    monkeypatch.setenv("CL_NO_DOWNLOAD", "1")
    with pytest.raises(dl.DownloadError, match="CL_NO_DOWNLOAD"):
        dl.download_file(f"{server}/file.bin", str(tmp_path / "x.bin"), progress=False)
    assert RangeHandler.ranges == []  # the 404 request was not for file.bin; nothing else was sent


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)


def _file(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def test_safe_extract_unpacks_a_normal_archive(tmp_path):
    archive = tmp_path / "ok.tar.gz"
    _tar(archive, [_file("top/a.txt", b"hello"), _link("top/b.txt", "a.txt")])
    dl.safe_extract(str(archive), str(tmp_path / "out"), progress=False)
    assert (tmp_path / "out" / "top" / "a.txt").read_bytes() == b"hello"
    assert (tmp_path / "out" / "top" / "b.txt").read_bytes() == b"hello"


@pytest.mark.parametrize("members", [
    [_file("../evil.txt")],
    [_file("/tmp/abs-evil.txt")],
    [_file("a/../../evil.txt")],
    [_link("top/link", "../../outside")],
    [_link("top/link", "/etc/passwd")],
    [_link("top/hard", "../outside", tarfile.LNKTYPE)],
])
def test_safe_extract_rejects_traversal_in_tar(tmp_path, members):
    archive = tmp_path / "bad.tar.gz"
    _tar(archive, members)
    with pytest.raises(dl.DownloadError, match="unsafe archive"):
        dl.safe_extract(str(archive), str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "evil.txt").exists() and not os.listdir(tmp_path / "out")


def test_safe_extract_rejects_traversal_in_zip_and_truncated_archives(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../evil.txt", "bad")
    with pytest.raises(dl.DownloadError, match="unsafe archive"):
        dl.safe_extract(str(archive), str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "ok.txt").exists()
    good = tmp_path / "good.tar.gz"
    _tar(good, [_file(f"f{i}.bin", os.urandom(4000)) for i in range(5)])
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(dl.DownloadError, match="corrupted or incomplete"):
        dl.safe_extract(str(truncated), str(tmp_path / "out2"), progress=False)


def test_hub_fails_fast_when_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(dl.DownloadError, match="HF_HUB_OFFLINE"):
        dl.hf_snapshot("aimagelab-ta/cub200", str(tmp_path))
    with pytest.raises(dl.DownloadError, match="HF_HUB_OFFLINE"):
        dl.hf_file("aimagelab-ta/cars196", "train_images.pt", str(tmp_path))
    assert time.perf_counter() - start < 1.0


def test_ensure_data_names_the_files_to_put_where(tmp_path):
    def fetch():
        raise dl.DownloadError("no network")
    with pytest.raises(dl.UserError) as err:
        dl.ensure_data(lambda: False, fetch, "seq-x", f"a.npz in {tmp_path}/")
    message = str(err.value)
    assert "\n" not in message and "a.npz" in message and str(tmp_path) in message and "no network" in message
