"""Fetch files by URL, verified by sha256: resumable HTTP(S) downloads and local files.

``http://``/``https://`` sources download into ``<dest>.part``. A cut
connection or short read is retried with an HTTP ``Range`` request that
resumes where the ``.part`` ends; only a complete file whose sha256 matches
(when one is given) is renamed onto ``dest``. ``file://`` URLs and plain paths
are verified and copied atomically to ``dest``, or, with ``dest=None``,
verified and returned where they are (no copy).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from labelfactory.core.io import atomic_path, sha256_file
from labelfactory.generators.checkpoints import sidecar_path
from labelfactory.generators.loading import convert_checkpoint

log = logging.getLogger(__name__)

_LOG_EVERY_S = 5.0
_MAX_BACKOFF_S = 30.0


class FetchError(RuntimeError):
    """A source could not be fetched completely, or its sha256 did not match."""


class _Retry(Exception):
    """A transient failure (cut connection, short read, server error): resume and retry."""


def _is_http(url) -> bool:
    return isinstance(url, str) and urllib.parse.urlsplit(url).scheme in ("http", "https")


def _local_path(url) -> Path:
    if isinstance(url, os.PathLike):
        return Path(url)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise FetchError(f"{url}: file:// URLs on another host are not supported")
        return Path(urllib.request.url2pathname(parts.path))
    if parts.scheme:
        raise FetchError(f"{url}: unsupported URL scheme {parts.scheme!r} (http, https, file or a path)")
    return Path(url)


def _check_sha(url, got: str, expected: str | None) -> None:
    if expected is not None and got != expected:
        raise FetchError(f"sha256 mismatch for {url}: expected {expected}, got {got}")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def fetch(url: str | os.PathLike, dest: str | os.PathLike | None, sha256: str | None = None, retries: int = 5,
          timeout: float = 60, chunk: int = 1 << 20, backoff: float = 1.0) -> Path:
    """Fetch ``url`` to ``dest`` and return the verified file's path.

    ``dest`` is reused without fetching when it already has the given sha256.
    HTTP transfers are retried ``retries`` times, waiting ``backoff`` seconds,
    doubling each time; on final failure the ``.part`` stays for a later resume.
    A local source with ``dest=None`` is verified and returned itself."""
    sha256 = sha256.lower() if sha256 else None
    dest = None if dest is None else Path(dest)
    if dest is not None and sha256 is not None and dest.is_file() and sha256_file(dest) == sha256:
        log.info("%s: already present with the expected sha256", dest)
        return dest
    if not _is_http(url):
        return _fetch_local(url, dest, sha256, chunk)
    if dest is None:
        raise ValueError(f"{url}: HTTP downloads need a destination path")
    return _fetch_http(url, dest, sha256, retries, timeout, chunk, backoff)


def _fetch_local(url, dest: Path | None, sha256: str | None, chunk: int) -> Path:
    src = _local_path(url)
    if not src.is_file():
        raise FetchError(f"{url}: source file {src} does not exist")
    if dest is None or (dest.exists() and dest.resolve() == src.resolve()):
        if sha256 is not None:
            _check_sha(url, sha256_file(src), sha256)
        return src
    h = hashlib.sha256()
    with atomic_path(dest) as tmp, open(src, "rb") as fin, open(tmp, "wb") as fout:
        for block in iter(lambda: fin.read(chunk), b""):
            h.update(block)
            fout.write(block)
        _check_sha(url, h.hexdigest(), sha256)
    log.info("copied %s to %s", src, dest)
    return dest


def _fetch_http(url: str, dest: Path, sha256: str | None, retries: int, timeout: float, chunk: int,
                backoff: float) -> Path:
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    t0 = time.monotonic()
    while True:
        try:
            _attempt(url, part, sha256, timeout, chunk)
            break
        except _Retry as e:
            failures += 1
            arrived = part.stat().st_size if part.exists() else 0
            if failures > retries:
                raise FetchError(f"{url}: download incomplete after {retries} retries ({e}); {arrived} bytes "
                                 f"arrived and are kept in {part} for a later resume") from None
            delay = min(backoff * 2 ** (failures - 1), _MAX_BACKOFF_S)
            log.warning("%s: %s; %d bytes so far, retry %d/%d in %.1f s", url, e, arrived, failures, retries, delay)
            time.sleep(delay)
    got = sha256_file(part)
    if sha256 is not None and got != sha256:
        part.unlink()
        _check_sha(url, got, sha256)
    with open(part, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(part, dest)
    size = dest.stat().st_size
    log.info("fetched %s to %s: %s (%s/s)", url, dest, _mib(size), _mib(size / max(time.monotonic() - t0, 1e-6)))
    return dest


def _attempt(url: str, part: Path, sha256: str | None, timeout: float, chunk: int) -> None:
    """One request: append (206) or rewrite (200) ``part``; returns once it holds the whole body."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        with e:
            if e.code == 416 and have:
                if _part_is_complete(part, have, e.headers.get("Content-Range"), sha256):
                    return
                part.unlink()
                raise _Retry(f"server refused bytes={have}- and the partial file is not the whole one; restarting")
            if e.code >= 500 or e.code in (408, 429):
                raise _Retry(f"HTTP {e.code} {e.reason}") from None
            raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:
        raise _Retry(f"{type(e).__name__}: {e}") from None
    with resp:
        length = resp.headers.get("Content-Length")
        if resp.status == 206:
            m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", "").strip())
            if m is None or int(m.group(1)) != have:
                part.unlink()
                raise _Retry(f"server answered bytes={have}- with Content-Range {resp.headers.get('Content-Range')!r}; "
                             "restarting")
            mode, total = "ab", None if m.group(2) == "*" else int(m.group(2))
            log.info("%s: resuming at byte %d", url, have)
        else:
            if have:
                log.info("%s: server ignored the Range request; downloading from the start", url)
            have, mode, total = 0, "wb", None
        end = have + int(length) if length is not None else total
        done, t0, last = have, time.monotonic(), time.monotonic()
        try:
            with open(part, mode) as f:
                while block := resp.read(chunk):
                    f.write(block)
                    done += len(block)
                    if time.monotonic() - last >= _LOG_EVERY_S:
                        last = time.monotonic()
                        log.info("%s: %s of %s (%s/s)", url, _mib(done), _mib(end) if end else "?",
                                 _mib((done - have) / (last - t0)))
        except (OSError, http.client.HTTPException) as e:
            raise _Retry(f"connection broke after {done} bytes ({type(e).__name__}: {e})") from None
    if end is not None and done < end:
        raise _Retry(f"connection closed after {done} of {end} bytes")


def _part_is_complete(part: Path, have: int, content_range: str | None, sha256: str | None) -> bool:
    """After a 416: is ``part`` already the whole file? By sha256 if known, else by the size in ``bytes */N``."""
    if sha256 is not None:
        return sha256_file(part) == sha256
    m = re.fullmatch(r"bytes \*/(\d+)", (content_range or "").strip())
    return m is not None and int(m.group(1)) == have


def fetch_checkpoint(url: str | os.PathLike, out_safetensors: str | os.PathLike, sha256: str | None = None,
                     fmt: str = "auto", download_dir: str | os.PathLike | None = None,
                     generator: dict | None = None, model_flags: dict | None = None) -> dict:
    """Fetch a generator checkpoint and convert it to canonical safetensors + JSON sidecar.

    HTTP downloads are kept in ``download_dir`` (default: ``downloads/`` beside
    the output); local sources are converted where they are. The sidecar
    records ``source_url`` and the raw file's ``source_sha256``. If conversion
    fails, neither output file exists afterwards. ``generator``: the spec of a
    user's module class whose state dict the file is (kept in the sidecar's
    ``arch_config``); ``model_flags``: a guided-diffusion state dict's flags (the
    same). Returns the sidecar."""
    out = Path(out_safetensors)
    if _is_http(url):
        name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "checkpoint"
        raw = fetch(url, Path(download_dir or out.parent / "downloads") / name, sha256)
    else:
        raw = fetch(url, None, sha256)
    source_sha = sha256.lower() if sha256 else sha256_file(raw)
    try:
        return convert_checkpoint(raw, out, fmt=fmt, generator=generator, model_flags=model_flags,
                                  source_url=str(url), source_sha256=source_sha)
    except BaseException:
        out.unlink(missing_ok=True)
        sidecar_path(out).unlink(missing_ok=True)
        raise


__all__ = ["FetchError", "fetch", "fetch_checkpoint"]
