"""kiln-mirror, the node-side tool: verified fetches and SHA256SUMS upkeep, against a real
HTTP server (Python's http.server on loopback)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kiln.roles.mirror import nodetool

TOOL = Path(nodetool.__file__)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def served(tmp_path: Path):
    root = tmp_path / "served"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    # As nodes run it: the file alone, with the system's python3 and nothing of kiln.
    return subprocess.run([sys.executable, "-I", str(TOOL), *args], capture_output=True,
                          text=True, timeout=60)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_fetch_writes_the_file_only_when_its_sha256_matches(served, tmp_path: Path):
    root, url = served
    blob = os.urandom(300_000)
    (root / "blob.bin").write_bytes(blob)
    dest = tmp_path / "out/blob.bin"
    ok = run_tool("fetch", "--sha256", sha(blob), "--size", str(len(blob)),
                  f"{url}/blob.bin", str(dest))
    assert ok.returncode == 0, ok.stderr
    assert dest.read_bytes() == blob
    assert ok.stdout == f"fetched {dest} {len(blob)} bytes sha256 ok\n"
    assert oct(dest.stat().st_mode & 0o777) == "0o644"


def test_a_corrupted_file_is_refused_naming_it_and_nothing_is_written(served, tmp_path: Path):
    root, url = served
    good = b"firmware image " * 1000
    corrupted = bytearray(good)
    corrupted[100] ^= 0xFF
    (root / "lab-bios-1.6.2.bin").write_bytes(bytes(corrupted))
    dest = tmp_path / "bios.bin"
    dest.write_bytes(b"previous")
    refused = run_tool("fetch", "--sha256", sha(good), f"{url}/lab-bios-1.6.2.bin", str(dest))
    assert refused.returncode == 2
    assert "lab-bios-1.6.2.bin: sha256 mismatch" in refused.stderr
    assert f"expected {sha(good)}, got {sha(bytes(corrupted))}" in refused.stderr
    assert dest.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_wrong_size_is_refused(served, tmp_path: Path):
    root, url = served
    (root / "x").write_bytes(b"12345")
    refused = run_tool("fetch", "--sha256", sha(b"12345"), "--size", "6", f"{url}/x",
                       str(tmp_path / "x"))
    assert refused.returncode == 2 and "size 5 bytes, expected 6" in refused.stderr
    assert not (tmp_path / "x").exists()


def test_without_a_digest_the_directory_sha256sums_decides(served, tmp_path: Path):
    root, url = served
    (root / "files").mkdir()
    (root / "files/data.bin").write_bytes(b"dataset shard")
    (root / "files/SHA256SUMS").write_text(f"{sha(b'dataset shard')}  data.bin\n")
    ok = run_tool("fetch", f"{url}/files/data.bin", str(tmp_path / "d"))
    assert ok.returncode == 0, ok.stderr
    (root / "files/data.bin").write_bytes(b"dataset shard, rotted")
    refused = run_tool("fetch", f"{url}/files/data.bin", str(tmp_path / "e"))
    assert refused.returncode == 2 and "/files/data.bin: sha256 mismatch" in refused.stderr
    (root / "files/other.bin").write_bytes(b"unlisted")
    unlisted = run_tool("fetch", f"{url}/files/other.bin", str(tmp_path / "f"))
    assert unlisted.returncode == 2 and "lists no other.bin" in unlisted.stderr
    assert not (tmp_path / "e").exists() and not (tmp_path / "f").exists()


def test_missing_file_is_an_error_naming_the_url(served, tmp_path: Path):
    _, url = served
    missing = run_tool("fetch", "--sha256", "0" * 64, f"{url}/nope", str(tmp_path / "n"))
    assert missing.returncode == 1 and f"{url}/nope" in missing.stderr and "404" in missing.stderr


def sums_plan(root: Path, *subdirs: str, write: bool = False) -> dict[str, str]:
    args = ["sums", *(["--write"] if write else []), str(root), *subdirs]
    result = run_tool(*args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_sums_plan_write_then_nothing_to_do(tmp_path: Path):
    files = tmp_path / "files"
    (files / "sub").mkdir(parents=True)
    (files / "a.bin").write_bytes(b"a")
    (files / "sub/b.bin").write_bytes(b"b")
    (files / ".partial").write_bytes(b"in progress")
    (tmp_path / "images").mkdir()
    plan = sums_plan(tmp_path, "files", "images", "absent")
    assert plan == {"files": f"{sha(b'a')}  a.bin\n", "files/sub": f"{sha(b'b')}  b.bin\n"}
    assert sums_plan(tmp_path, "files", "images", write=True) == plan
    assert (files / "SHA256SUMS").read_text() == plan["files"]
    assert sums_plan(tmp_path, "files", "images") == {}


def test_a_file_that_rots_in_place_keeps_its_recorded_digest(tmp_path: Path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "shard.bin").write_bytes(b"original")
    sums_plan(tmp_path, "files", write=True)
    sums = files / "SHA256SUMS"
    # Bit rot: the bytes change, the inode's times do not move past the SHA256SUMS.
    recorded = sums.stat().st_mtime_ns
    (files / "shard.bin").write_bytes(b"0riginal")
    os.utime(files / "shard.bin", ns=(recorded - 10**9, recorded - 10**9))
    os.utime(sums, ns=(recorded + 10**9, recorded + 10**9))
    ctime = (files / "shard.bin").stat().st_ctime_ns
    if ctime > recorded + 10**9:
        pytest.skip("this filesystem's ctime moved past the SHA256SUMS mtime; cannot stage rot")
    assert sums_plan(tmp_path, "files") == {}
    assert sums.read_text() == f"{sha(b'original')}  shard.bin\n"


def test_a_new_upload_and_a_deleted_file_update_the_sums(tmp_path: Path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "one").write_bytes(b"1")
    sums_plan(tmp_path, "files", write=True)
    time.sleep(0.01)
    (files / "two").write_bytes(b"2")
    assert sums_plan(tmp_path, "files") == {"files": f"{sha(b'1')}  one\n{sha(b'2')}  two\n"}
    (files / "one").unlink()
    (files / "two").unlink()
    assert sums_plan(tmp_path, "files", write=True) == {"files": ""}
    assert not (files / "SHA256SUMS").exists()
