"""The downloader against a local HTTP server (127.0.0.1 only) that honours Range requests."""

import hashlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mofbalora.data.download import ChecksumError, download

PAYLOAD = bytes(range(256)) * 4000


class RangeHandler(BaseHTTPRequestHandler):
    requests_seen: list = []

    def do_GET(self):  # noqa: N802
        RangeHandler.requests_seen.append(self.headers.get("Range"))
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.requests_seen = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/qmof.zip"
    httpd.shutdown()


def test_resumes_partial_download_and_verifies(server, tmp_path):
    target = tmp_path / "qmof.zip"
    (tmp_path / "qmof.zip.part").write_bytes(PAYLOAD[:100_000])
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    download(server, target, sha256=digest, progress=False)
    assert target.read_bytes() == PAYLOAD
    assert RangeHandler.requests_seen == ["bytes=100000-"]
    assert not (tmp_path / "qmof.zip.part").exists()


def test_checksum_mismatch_raises_and_leaves_nothing(server, tmp_path):
    with pytest.raises(ChecksumError):
        download(server, tmp_path / "qmof.zip", sha256="0" * 64, progress=False)
    assert not (tmp_path / "qmof.zip").exists() and not (tmp_path / "qmof.zip.part").exists()


def test_the_cli_names_the_address_it_could_not_reach(tmp_path):
    """Offline, `mofbalora data download` says which address failed (a mirror goes in --url), in one
    line, without a traceback, and leaves no file behind."""
    import socket

    from typer.testing import CliRunner

    from mofbalora.cli import app

    with socket.socket() as probe:  # a port nothing listens on: connection refused at once
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/qmof.zip"
    result = CliRunner().invoke(app, ["data", "download", "qmof", "--dest", str(tmp_path), "--url", url])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"download of {url} failed" in result.output and "--url" in result.output
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs Linux's sysfs, which refuses new files")
def test_a_destination_that_cannot_be_written_is_not_called_offline(server):
    """A --dest that refuses files (here sysfs) was reported as 'offline? --url takes a mirror',
    which no mirror would fix; the message now names the folder."""
    from typer.testing import CliRunner

    from mofbalora.cli import app

    result = CliRunner().invoke(app, ["data", "download", "qmof", "--dest", "/sys/qmof", "--url", server])
    assert result.exit_code == 1 and "cannot write the download to /sys/qmof" in result.output
    assert "offline" not in result.output

