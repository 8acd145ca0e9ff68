"""Dataset upload on loopback: a 1 GiB file through ``ScalarLMClient.upload`` into a real server.

Upload: ``llama stack run`` started as the tests start it (no engine workers); the client opens an
upload session and streams the file in one PUT; the server appends each 8 MiB block in one thread
and hashes it in another while the next block arrives, and the final call moves the file to ``blobs/<sha256>``. Timed
from the call to its return. Then the same file is uploaded again: the client knows its hash from
the first upload (its cache, keyed by path, size, mtime and inode), the server answers that the
content is stored, and nothing is sent.

Baselines measured in the same run on the same file (same disk, page cache warm, like the upload):
(a) sha256 of the file in this process (hashlib, 8 MiB reads), (b) ``shutil.copyfile``. Neither
the copy nor the upload fsyncs the data itself (it is synced after each, outside the timings). The
upload has to read, hash and write, so min(a, b) is the ceiling a single-pass upload could reach.

Then where the upload's time goes, each part measured on its own: CPU seconds of the server and of
the client during the upload, the server's storage path without HTTP (``UploadStore.append``
in-process, fed the part sizes the ASGI server hands over), and HTTP alone (the same streamed PUT
to a bare uvicorn app that reads and discards the body). The machine is shared: CPU seconds are
printed next to wall times, as they move less with other processes' load.

Usage: python bench/upload_bench.py [size_mib]   (default 1024)
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llama_stack_scalarlm import client as client_module  # noqa: E402
from llama_stack_scalarlm.client import ScalarLMClient  # noqa: E402
from llama_stack_scalarlm.registry.files import fsync_path  # noqa: E402
from llama_stack_scalarlm.registry.uploads import UploadStore  # noqa: E402
from tests.stack import StackServer, free_port  # noqa: E402

SIZE = (int(sys.argv[1]) if len(sys.argv) > 1 else 1024) << 20
BLOCK = 8 << 20
MB = 1e6  # MB/s are decimal megabytes


def make_file(path: Path) -> None:
    with open(path, "wb") as handle:
        for _ in range(SIZE // BLOCK):
            handle.write(os.urandom(BLOCK))
        handle.write(os.urandom(SIZE % BLOCK))
        handle.flush()
        os.fsync(handle.fileno())


def hash_file(path: Path) -> tuple[str, float]:
    start = time.perf_counter()
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            hasher.update(block)
    return hasher.hexdigest(), time.perf_counter() - start


def copy_file(path: Path, target: Path) -> float:
    start = time.perf_counter()
    shutil.copyfile(path, target)
    elapsed = time.perf_counter() - start
    fsync_path(target)  # outside the timing; kept until the end (see main)
    return elapsed


def cpu_s(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def timed_upload(client: ScalarLMClient, path: Path, server: psutil.Process) -> tuple[str, float, float, float]:
    """(sha256, wall s, server CPU s, this process's CPU s) of one upload."""
    server_cpu, own_cpu = cpu_s(server), time.process_time()
    start = time.perf_counter()
    digest = client.upload(path)
    elapsed = time.perf_counter() - start
    return digest, elapsed, cpu_s(server) - server_cpu, time.process_time() - own_cpu


# ------------------------------------------------------------------------------------ profile


async def store_alone(store: UploadStore, path: Path, piece: int) -> tuple[float, float]:
    """(wall s, CPU s) of the server's storage path without HTTP: begin, one append fed ``piece``-byte
    parts (as the ASGI server hands over a streamed body), finish."""
    start, cpu = time.perf_counter(), time.process_time()
    session = store.begin(SIZE)

    async def parts():
        with open(path, "rb") as handle:
            while part := handle.read(piece):
                yield part

    await store.append(session.upload_id, 0, parts())
    done = store.finish(session.upload_id)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    fsync_path(store.blob(done.sha256))
    return elapsed, cpu


DISCARD_APP = textwrap.dedent('''
    import json

    stats = {"puts": 0, "parts": 0, "bytes": 0, "max_part": 0}

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["method"] == "PUT":
            stats["puts"] += 1
            more = True
            while more:
                message = await receive()
                body = message.get("body", b"")
                stats["parts"] += 1
                stats["bytes"] += len(body)
                stats["max_part"] = max(stats["max_part"], len(body))
                more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(stats).encode()})
''')


def http_alone(path: Path, root: Path) -> tuple[float, float, float, dict]:
    """The client's streamed PUT (httpx, 8 MiB reads) to a bare uvicorn app (default loop/http, as
    `llama stack run`) that reads the body and discards it."""
    (root / "discard_app.py").write_text(DISCARD_APP)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "discard_app:app", "--port", str(port),
                             "--log-level", "warning"], cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        server = psutil.Process(proc.pid)
        with httpx.Client(base_url=url, timeout=120) as http, open(path, "rb") as handle:
            server_cpu, own_cpu = cpu_s(server), time.process_time()
            start = time.perf_counter()
            http.put("/upload", content=client_module._read_from(handle, 0, SIZE, None)).raise_for_status()
            elapsed = time.perf_counter() - start
            server_cpu, own_cpu = cpu_s(server) - server_cpu, time.process_time() - own_cpu
            stats = http.get("/").json()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return elapsed, server_cpu, own_cpu, stats


# --------------------------------------------------------------------------------------- main


def main() -> None:
    # Nothing is deleted until the end: the disk is ext4 mounted with `discard`, and freeing 1 GiB makes
    # the next journal commit (the server's next fsync) pay for it. Each written file is fsynced outside
    # the timings, so no measurement pays for an earlier one's writeback.
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="upload-bench-") as tmp:
        root = Path(tmp)
        os.environ["XDG_CACHE_HOME"] = str(root / "cache")  # the client's upload cache starts empty
        path = root / "data.bin"
        make_file(path)
        expected, _ = hash_file(path)  # also warms the page cache, as for everything below
        _, hash_s = hash_file(path)
        copy_s = copy_file(path, root / "copy.bin")
        load.append(os.getloadavg()[0])

        server = StackServer(root / "state", workers=0).start()
        try:
            client = ScalarLMClient(server.url, timeout_s=600)
            proc = psutil.Process(server.proc.pid)
            digest, upload_s, server_cpu, client_cpu = timed_upload(client, path, proc)
            blob = root / "state" / "uploads" / "blobs" / digest
            assert digest == expected and blob.stat().st_size == SIZE, (digest, expected)
            start = time.perf_counter()
            fsync_path(blob)  # not part of the upload (the server does not fsync blobs): what durability would add
            blob_fsync_s = time.perf_counter() - start
            again_digest, again_s, again_server_cpu, again_client_cpu = timed_upload(client, path, proc)
            assert again_digest == expected
            load.append(os.getloadavg()[0])
        finally:
            server.stop()
        load.append(os.getloadavg()[0])

        piece = 64 << 10
        store_s, store_cpu = asyncio.run(store_alone(UploadStore(root / "direct-1", SIZE), path, piece))
        http_s, http_server_cpu, http_client_cpu, http_stats = http_alone(path, root)
        load.append(os.getloadavg()[0])

    gib = SIZE / 2**30

    def rate(seconds: float) -> str:
        return f"{SIZE / MB / seconds:6.0f} MB/s ({seconds:5.2f} s)"

    ceiling = min(SIZE / hash_s, SIZE / copy_s) / MB
    print(f"upload of {gib:g} GiB of random bytes on loopback, 2 cores; load avg (1 min) through the run: "
          + " / ".join(f"{v:.2f}" for v in load))
    print("  upload (one streamed PUT; the server writes and hashes each 8 MiB block in two threads as the next arrives):")
    print(f"                                   {rate(upload_s)}   (goal >= 500 MB/s); CPU s: server "
          f"{server_cpu:.2f}, client {client_cpu:.2f}")
    print(f"  repeated upload, same file       {again_s:5.3f} s (hash known from the first upload, nothing is sent); "
          f"CPU s: server {again_server_cpu:.2f}, client {again_client_cpu:.2f}")
    print(f"  baseline (a) sha256 in-process   {rate(hash_s)}  (hashlib, 8 MiB reads)")
    print(f"  baseline (b) shutil.copyfile     {rate(copy_s)}")
    print(f"  ratio upload / min(a, b)         {SIZE / upload_s / MB:.0f} / {ceiling:.0f} = "
          f"{SIZE / upload_s / MB / ceiling:.3f}")
    print(f"  (not in any figure: an extra fsync of the stored blob afterwards took {blob_fsync_s:.2f} s)")
    print("profile (each part on its own, same run):")
    print(f"  server storage, no HTTP (UploadStore.append, {piece >> 10} KiB parts, in-process)")
    print(f"                                   {rate(store_s)}; CPU {store_cpu:.2f} s")
    print("  HTTP alone (the same streamed PUT, httpx -> bare uvicorn app that discards the body)")
    print(f"                                   {rate(http_s)}; CPU s: server {http_server_cpu:.2f}, client "
          f"{http_client_cpu:.2f}; {http_stats['parts']} body parts (largest {http_stats['max_part'] >> 10} KiB)")


if __name__ == "__main__":
    main()
