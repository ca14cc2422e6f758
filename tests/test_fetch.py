"""fetch / fetch_checkpoint against a real HTTP server on 127.0.0.1 that honours
Range requests and can cut connections or ignore Range."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import labelfactory.generators.loading as loading
from labelfactory.generators.fetch import FetchError, fetch, fetch_checkpoint
from labelfactory.generators.checkpoints import CheckpointError, sidecar_path
from labelfactory.generators.loading import load_generator

from formats import rosinality_generator, save_rosinality

PAYLOAD = np.random.RandomState(0).bytes(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        srv: _Server = self.server
        rng = self.headers.get("Range")
        srv.ranges.append(rng)
        if self.path != "/files/model.bin":
            self.send_error(404)
            return
        data, start = srv.payload, 0
        if rng and not srv.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_always or (srv.cut_first and len(srv.ranges) == 1):
            self.wfile.write(body[: srv.cut_after])  # promise the whole body, send part, hang up
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        else:
            self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    payload = PAYLOAD
    cut_after = 100_000
    cut_first = cut_always = ignore_range = False

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.ranges: list[str | None] = []  # the Range header of every request, in order

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/files/model.bin"


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def test_plain_download(server, tmp_path):
    out = fetch(server.url, tmp_path / "d" / "model.bin", sha256=SHA.upper())
    assert out.read_bytes() == PAYLOAD
    assert server.ranges == [None]
    assert fetch(server.url, out, sha256=SHA) == out  # already there and verified: no request
    assert server.ranges == [None]


def test_resumes_after_a_cut_connection(server, tmp_path, caplog):
    server.cut_first = True
    with caplog.at_level(logging.INFO, logger="labelfactory.generators.fetch"):
        out = fetch(server.url, tmp_path / "model.bin", sha256=SHA, backoff=0, chunk=16_384)
    assert out.read_bytes() == PAYLOAD
    assert server.ranges == [None, f"bytes={server.cut_after}-"]
    assert not (tmp_path / "model.bin.part").exists()
    assert "resuming at byte 100000" in caplog.text and "fetched" in caplog.text


def test_wrong_checksum_leaves_nothing(server, tmp_path):
    bad = "0" * 64
    with pytest.raises(FetchError, match=f"sha256 mismatch for {re.escape(server.url)}: expected {bad}, got {SHA}"):
        fetch(server.url, tmp_path / "model.bin", sha256=bad)
    assert list(tmp_path.iterdir()) == []


def test_persistent_cut_keeps_part_for_a_later_resume(server, tmp_path):
    server.cut_always, server.cut_after = True, 1000
    dest = tmp_path / "model.bin"
    with pytest.raises(FetchError, match=rf"{re.escape(server.url)}.*after 2 retries.*3000 bytes arrived"):
        fetch(server.url, dest, sha256=SHA, retries=2, backoff=0)
    assert server.ranges == [None, "bytes=1000-", "bytes=2000-"]
    assert not dest.exists() and (tmp_path / "model.bin.part").read_bytes() == PAYLOAD[:3000]

    server.cut_always = False
    assert fetch(server.url, dest, sha256=SHA).read_bytes() == PAYLOAD
    assert server.ranges[3:] == ["bytes=3000-"]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.cut_first = server.ignore_range = True
    out = fetch(server.url, tmp_path / "model.bin", sha256=SHA, backoff=0)
    assert out.read_bytes() == PAYLOAD  # the 200 reply was written from byte 0, not appended
    assert server.ranges == [None, f"bytes={server.cut_after}-"]


@pytest.mark.parametrize("part_content, sha, requests", [
    (PAYLOAD, SHA, 1),                          # complete .part: verified by hash, kept
    (PAYLOAD, None, 1),                         # complete .part: size equals the one in Content-Range
    (b"x" * len(PAYLOAD), SHA, 2),              # full length but wrong: deleted and fetched again
], ids=["complete-by-sha256", "complete-by-size", "wrong-content"])
def test_range_not_satisfiable(server, tmp_path, part_content, sha, requests):
    (tmp_path / "model.bin.part").write_bytes(part_content)
    out = fetch(server.url, tmp_path / "model.bin", sha256=sha, backoff=0)
    assert out.read_bytes() == PAYLOAD
    assert server.ranges == [f"bytes={len(PAYLOAD)}-", None][:requests]


def test_http_error_is_not_retried(server, tmp_path):
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(server.url.replace("model.bin", "other.bin"), tmp_path / "x.bin", backoff=0)
    assert len(server.ranges) == 1
    with pytest.raises(ValueError, match="destination"):
        fetch(server.url, None)


def test_local_sources(tmp_path):
    src = tmp_path / "src" / "model.bin"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    assert fetch(src.as_uri(), tmp_path / "a" / "copy.bin", sha256=SHA).read_bytes() == PAYLOAD
    assert fetch(str(src), tmp_path / "b.bin", sha256=SHA).read_bytes() == PAYLOAD
    assert fetch(src, None, sha256=SHA) == src  # dest=None: verified in place, not copied
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch(src.as_uri(), tmp_path / "c" / "copy.bin", sha256="f" * 64)
    assert list((tmp_path / "c").iterdir()) == []
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch(src, None, sha256="f" * 64)
    with pytest.raises(FetchError, match="does not exist"):
        fetch(tmp_path / "missing.bin", tmp_path / "d.bin")
    with pytest.raises(FetchError, match="does not exist"):
        fetch((tmp_path / "missing.bin").as_uri(), None)
    with pytest.raises(FetchError, match="unsupported URL scheme 'ftp'"):
        fetch("ftp://example.org/model.bin", tmp_path / "e.bin")


@pytest.fixture(scope="module")
def rosinality_file(tmp_path_factory):
    g = rosinality_generator(size=8, style_dim=8, n_mlp=2, channels={4: 8, 8: 6})
    return save_rosinality(tmp_path_factory.mktemp("ckpt") / "g.pt", g, "converted"), g


def test_fetch_checkpoint_over_http(server, tmp_path, rosinality_file):
    pt, g = rosinality_file
    server.payload, server.cut_first, server.cut_after = pt.read_bytes(), True, 5000
    sha = hashlib.sha256(server.payload).hexdigest()
    out = tmp_path / "gen" / "ffhq.safetensors"
    meta = fetch_checkpoint(server.url, out, sha256=sha)
    assert json.loads(sidecar_path(out).read_text()) == meta
    assert meta["source_sha256"] == sha and meta["source_url"] == server.url
    assert meta["converted_from"] == "rosinality"
    assert (tmp_path / "gen" / "downloads" / "model.bin").read_bytes() == server.payload
    assert server.ranges == [None, "bytes=5000-"]
    z = np.random.RandomState(0).randn(2, 8).astype(np.float32)
    np.testing.assert_array_equal(load_generator(out).render(z), load_generator(pt).render(z))


def test_fetch_checkpoint_local_without_sha(tmp_path, rosinality_file):
    pt, _ = rosinality_file
    meta = fetch_checkpoint(str(pt), tmp_path / "g.safetensors")
    assert meta["source_sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.json", "g.safetensors"]  # converted in place


def test_fetch_checkpoint_failure_leaves_no_output(server, tmp_path, rosinality_file, monkeypatch):
    out = tmp_path / "gen" / "g.safetensors"
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        fetch_checkpoint(server.url, out)  # the server's payload is random bytes
    assert not out.exists() and not sidecar_path(out).exists()

    def no_sidecar(*args):
        raise OSError("disk full")

    monkeypatch.setattr(loading, "atomic_write_json", no_sidecar)  # fails after the .safetensors is in place
    with pytest.raises(OSError, match="disk full"):
        fetch_checkpoint(str(rosinality_file[0]), out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["downloads"]
