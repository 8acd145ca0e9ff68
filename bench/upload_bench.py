"""Dataset upload on loopback: a 1 GiB file through ``ScalarLMClient.upload`` into a real server.

Upload: ``llama stack run`` started as the tests start it (no engine workers); the client opens an
upload session and streams the file in one PUT; the server appends each 8 MiB block in one thread
and hashes it in another while the next block arrives, and the final call syncs the file and moves
it to ``blobs/<sha256>``. Timed from the call to its return. Then the same file is uploaded again:
the client knows its hash from the first upload (its cache, keyed by path, size, mtime and inode),
the server answers that the content is stored, and nothing is sent.

Baseline of each pair, on the same file (page cache warm, like the upload): the slower of (a) sha256
of the file in this process (hashlib, 8 MiB reads) and (b) ``shutil.copyfile`` plus an fsync of the
copy (the server syncs a blob before naming it). The upload has to read, hash and write, so the
slower of the two is the ceiling a single-pass upload could reach. Before each upload the file's
first block is rewritten (new content, new mtime), so every pair uploads for real.

Then where the upload's time goes, each part measured once on its own: the server's storage path
without HTTP (``UploadStore.append`` in-process, fed the part sizes the ASGI server hands over) and
HTTP alone (the same streamed PUT to a bare uvicorn app that reads and discards the body). CPU
seconds of server and client are recorded beside wall times: they move less with other load.
Files are deleted (and the deletions synced) outside every timing: on a disk mounted with
``discard``, freeing 1 GiB makes the next journal commit pay for it.
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

import harness  # noqa: E402
from llama_stack_scalarlm import client as client_module  # noqa: E402
from llama_stack_scalarlm.client import ScalarLMClient  # noqa: E402
from llama_stack_scalarlm.registry.files import fsync_path  # noqa: E402
from llama_stack_scalarlm.registry.uploads import UploadStore  # noqa: E402
from tests.stack import StackServer, free_port  # noqa: E402

BLOCK = 8 << 20
MB = 1e6  # MB/s are decimal megabytes
PIECE = 64 << 10  # the body part size uvicorn hands over


def write_random(path: Path, size: int, mode: str = "wb") -> None:
    """``size`` random bytes from the start of ``path`` (the rest of an existing file is kept), synced."""
    with open(path, mode) as handle:
        for _ in range(size // BLOCK):
            handle.write(os.urandom(BLOCK))
        handle.write(os.urandom(size % BLOCK))
        handle.flush()
        os.fsync(handle.fileno())


def discard(*paths: Path) -> None:
    """Delete, and sync the deletion, outside the timings."""
    for path in paths:
        path.unlink()
    os.sync()


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
    fsync_path(target)
    elapsed = time.perf_counter() - start
    discard(target)
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


def timed_upload(client: ScalarLMClient, path: Path, server: psutil.Process) -> dict:
    """sha256, wall s, server CPU s and this process's CPU s of one upload."""
    server_cpu, own_cpu = cpu_s(server), time.process_time()
    start = time.perf_counter()
    digest = client.upload(path)
    return {"sha256": digest, "s": time.perf_counter() - start, "server_cpu": cpu_s(server) - server_cpu,
            "client_cpu": time.process_time() - own_cpu}


def baselines(path: Path, size: int) -> dict:
    _, hash_s = hash_file(path)
    copy_s = copy_file(path, path.with_name("copy.bin"))
    return {"sha256": size / MB / hash_s, "copy": size / MB / copy_s}


def upload(client: ScalarLMClient, path: Path, size: int, server: StackServer) -> dict:
    """One real upload of new content, then the same file again (nothing sent)."""
    write_random(path, min(size, BLOCK), mode="r+b")
    expected, _ = hash_file(path)  # also warms the page cache, as for the baselines
    proc = psutil.Process(server.proc.pid)
    first = timed_upload(client, path, proc)
    blob = server.state_dir / "uploads" / "blobs" / first["sha256"]
    assert first["sha256"] == expected and blob.stat().st_size == size, (first["sha256"], expected)
    again = timed_upload(client, path, proc)
    assert again["sha256"] == expected
    discard(blob)
    return {**first, "rate": size / MB / first["s"], "again_s": again["s"]}


# ------------------------------------------------------------------------------------ profile


async def store_alone(store: UploadStore, path: Path, size: int) -> tuple[float, float]:
    """(wall s, CPU s) of the server's storage path without HTTP: begin, one append fed ``PIECE``-byte
    parts (as the ASGI server hands over a streamed body), finish."""
    start, cpu = time.perf_counter(), time.process_time()
    session = store.begin(size)

    async def parts():
        with open(path, "rb") as handle:
            while part := handle.read(PIECE):
                yield part

    await store.append(session.upload_id, 0, parts())
    done = await store.finish(session.upload_id)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    discard(store.blob(done.sha256))
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


def http_alone(path: Path, size: int, root: Path) -> tuple[float, float, float]:
    """(wall s, server CPU s, client CPU s) of the client's streamed PUT (httpx, 8 MiB reads) to a
    bare uvicorn app (default loop/http, as `llama stack run`) that reads the body and discards it."""
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
            http.put("/upload", content=client_module._read_from(handle, 0, size, None)).raise_for_status()
            elapsed = time.perf_counter() - start
            server_cpu, own_cpu = cpu_s(server) - server_cpu, time.process_time() - own_cpu
            assert http.get("/").json()["bytes"] == size
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return elapsed, server_cpu, own_cpu


# --------------------------------------------------------------------------------------- main


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--size-mib", type=int, default=1024, help="file size, MiB")
    args = harness.parse(parser, smoke={"size_mib": 16})
    size = args.size_mib << 20
    report = harness.Report("upload_bench", args)
    with tempfile.TemporaryDirectory(prefix="upload-bench-") as tmp:
        root = Path(tmp)
        os.environ["XDG_CACHE_HOME"] = str(root / "cache")  # the client's upload cache starts empty
        path = root / "data.bin"
        write_random(path, size)
        server = StackServer(root / "state", workers=0).start()
        try:
            client = ScalarLMClient(server.url, timeout_s=600, api_key=server.token)
            runs = harness.pairs(lambda: baselines(path, size), lambda: upload(client, path, size, server), args.pairs)
        finally:
            server.stop()
        store_s, store_cpu = asyncio.run(store_alone(UploadStore(root / "direct", size), path, size))
        http_s, http_server_cpu, http_client_cpu = http_alone(path, size, root)

    mib = f"{args.size_mib:,} MiB"
    report.compare(f"upload of {mib}, one streamed PUT", "MB/s", [(min(b.values()), u["rate"]) for b, u in runs],
                   subject="upload", baseline="slower of sha256 and copy+fsync")
    report.value("  upload: server CPU", "s", [u["server_cpu"] for _, u in runs])
    report.value("  upload: client CPU", "s", [u["client_cpu"] for _, u in runs])
    report.value("repeated upload of the same file (nothing sent)", "s", [u["again_s"] for _, u in runs])
    report.value("baseline (a): sha256 in-process", "MB/s", [b["sha256"] for b, _ in runs])
    report.value("baseline (b): shutil.copyfile + fsync", "MB/s", [b["copy"] for b, _ in runs])
    report.value("profile: server storage alone, no HTTP", "MB/s", [size / MB / store_s])
    report.value("  server storage alone: CPU", "s", [store_cpu])
    report.value("profile: HTTP alone (a server that discards the body)", "MB/s", [size / MB / http_s])
    report.value("  HTTP alone: server CPU", "s", [http_server_cpu])
    report.value("  HTTP alone: client CPU", "s", [http_client_cpu])
    report.finish()


if __name__ == "__main__":
    main()
