"""Content-addressed uploads on their own: chunks, resume, dedup, limits, bad names."""

import asyncio
import errno
import hashlib
import multiprocessing
import os
import resource
import signal
import time
from pathlib import Path

import pytest

from llama_stack_scalarlm.errors import InvalidFieldError
from llama_stack_scalarlm.registry.uploads import UploadConflictError, UploadStore


async def chunks(*parts):
    for part in parts:
        yield part


async def pieces(data: bytes, size: int = 1 << 20):
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_chunked_upload_is_hashed_stored_once_and_resumable(tmp_path):
    store = UploadStore(tmp_path, max_bytes=1 << 20)
    data = b"0123456789" * 100
    digest = hashlib.sha256(data).hexdigest()
    session = store.begin(len(data), digest)
    asyncio.run(store.append(session.upload_id, 0, chunks(data[:300])))
    with pytest.raises(UploadConflictError):
        asyncio.run(store.append(session.upload_id, 0, chunks(data[:10])))
    # The client went away; asking again for the same content resumes at byte 300.
    resumed = UploadStore(tmp_path, max_bytes=1 << 20).begin(len(data), digest)
    assert resumed.upload_id == session.upload_id and resumed.offset == 300
    fresh = UploadStore(tmp_path, max_bytes=1 << 20)  # a restarted server rebuilds the running hash
    asyncio.run(fresh.append(session.upload_id, 300, chunks(data[300:700], data[700:])))
    done = asyncio.run(fresh.finish(session.upload_id))
    assert done.sha256 == digest and fresh.blob(digest).read_bytes() == data
    again = fresh.begin(len(data), digest)
    assert again.complete and again.offset == len(data), "the same bytes are not sent twice"


def test_limits_and_bad_input(tmp_path):
    store = UploadStore(tmp_path, max_bytes=100)
    with pytest.raises(InvalidFieldError, match="size"):
        store.begin(101)
    session = store.begin(4, "0" * 64)
    with pytest.raises(InvalidFieldError, match="size"):
        asyncio.run(store.append(session.upload_id, 0, chunks(b"12345")))
    asyncio.run(store.append(session.upload_id, 0, chunks(b"1234")))
    with pytest.raises(InvalidFieldError, match="sha256"):
        asyncio.run(store.finish(session.upload_id))
    with pytest.raises(InvalidFieldError, match="upload_id"):
        store.session("../../etc/passwd")
    with pytest.raises(InvalidFieldError, match="sha256"):
        store.blob("../x")
    with pytest.raises(InvalidFieldError, match="sha256: .* is not a lowercase hex sha256"):
        store.blob("a" * 64 + "\n")


def test_a_put_cut_off_midway_resumes_where_its_bytes_end(tmp_path):
    store = UploadStore(tmp_path, max_bytes=64 << 20)
    data = bytes(range(256)) * (40 << 10)  # 10 MiB: more than one hand-off to the writer thread
    session = store.begin(len(data), hashlib.sha256(data).hexdigest())

    async def disconnecting():
        yield data[: 6 << 20]
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        asyncio.run(store.append(session.upload_id, 0, disconnecting()))
    stands = store.session(session.upload_id).offset
    assert 0 < stands <= 6 << 20
    asyncio.run(store.append(session.upload_id, stands, chunks(data[stands:])))
    assert asyncio.run(store.finish(session.upload_id)).sha256 == hashlib.sha256(data).hexdigest()


def test_an_abandoned_upload_is_removed_and_a_live_one_kept(tmp_path):
    store = UploadStore(tmp_path, max_bytes=1 << 20, ttl_s=3600)
    abandoned = store.begin(100)
    asyncio.run(store.append(abandoned.upload_id, 0, chunks(b"x" * 40)))
    live = store.begin(100)
    asyncio.run(store.append(live.upload_id, 0, chunks(b"y" * 40)))
    kept = store.put_bytes(b"stored content")
    long_ago = time.time() - 7200
    for path in (tmp_path / "partial").glob(f"{abandoned.upload_id}*"):
        os.utime(path, (long_ago, long_ago))

    store.begin(100)
    with pytest.raises(KeyError):
        store.session(abandoned.upload_id)
    assert not list((tmp_path / "partial").glob(f"{abandoned.upload_id}*"))
    assert store.session(live.upload_id).offset == 40
    assert store.blob(kept).read_bytes() == b"stored content", "finished content never expires"


def _fill_the_disk_midway_then_resume(root, data: bytes, room: int) -> None:
    """In a child process: an append whose write fails after ``room`` bytes (the file size limit
    stands in for a full disk), then, once there is room again, the resume a client would make."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    store = UploadStore(root, max_bytes=len(data))
    session = store.begin(len(data))  # no sha256 from the client: nothing checks the server's hash
    resource.setrlimit(resource.RLIMIT_FSIZE, (room, hard))
    with pytest.raises(OSError) as failed:
        asyncio.run(store.append(session.upload_id, 0, pieces(data)))
    assert failed.value.errno == errno.EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    stands = store.session(session.upload_id).offset
    asyncio.run(store.append(session.upload_id, stands, pieces(data[stands:])))
    asyncio.run(store.finish(session.upload_id))


def test_a_write_failing_midway_leaves_the_hash_equal_to_the_bytes_on_disk(tmp_path):
    data = os.urandom(20 << 20)  # the second 8 MiB block fails partway through
    child = multiprocessing.get_context("fork").Process(
        target=_fill_the_disk_midway_then_resume, args=(tmp_path, data, (12 << 20) + 12345)
    )
    child.start()
    child.join()
    assert child.exitcode == 0
    (blob,) = (tmp_path / "blobs").iterdir()
    assert blob.name == hashlib.sha256(blob.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()


def test_finish_waits_for_an_append_still_storing_bytes(tmp_path):
    store = UploadStore(tmp_path, max_bytes=1 << 20)
    data = b"0123456789" * 200
    session = store.begin(len(data))

    async def scenario():
        halfway, go_on = asyncio.Event(), asyncio.Event()

        async def slow_client():
            yield data[:1000]
            halfway.set()
            await go_on.wait()
            yield data[1000:]

        appending = asyncio.create_task(store.append(session.upload_id, 0, slow_client()))
        await halfway.wait()
        finishing = asyncio.create_task(store.finish(session.upload_id))
        await asyncio.sleep(0.1)
        assert not finishing.done(), "finish must not hash or move a file an append is still writing"
        go_on.set()
        await appending
        return await finishing

    done = asyncio.run(scenario())
    assert done.sha256 == hashlib.sha256(data).hexdigest() and store.blob(done.sha256).read_bytes() == data


def test_a_finish_retried_while_the_first_stores_gets_the_stored_upload(tmp_path):
    """A client whose finish timed out (hashing a large file takes a while) asks again: the retry
    waits for the first and gets the same finished upload (it was a KeyError, a 500), as does a
    finish or a status asked later; an append after it is a conflict, not a 500."""
    store = UploadStore(tmp_path, max_bytes=1 << 20)
    data = b"abc" * 300
    session = store.begin(len(data))
    asyncio.run(store.append(session.upload_id, 0, chunks(data)))

    async def twice():
        return await asyncio.gather(store.finish(session.upload_id), store.finish(session.upload_id))

    first, retried = asyncio.run(twice())
    digest = hashlib.sha256(data).hexdigest()
    later = asyncio.run(store.finish(session.upload_id))
    assert first.sha256 == retried.sha256 == later.sha256 == store.session(session.upload_id).sha256 == digest
    assert retried.complete and store.session(session.upload_id).offset == len(data)
    with pytest.raises(UploadConflictError, match="finished"):
        asyncio.run(store.append(session.upload_id, len(data), chunks(b"more")))
    assert store.blob(digest).read_bytes() == data
    assert store.begin(len(data)).upload_id != session.upload_id, "without a hash, a new upload"


def test_put_bytes_syncs_the_content_before_its_name_and_the_name_after(tmp_path, monkeypatch):
    store = UploadStore(tmp_path, max_bytes=1 << 20)
    data = b'{"input": "q", "output": "a"}\n'
    blob = store.blob(hashlib.sha256(data).hexdigest())
    synced = []  # (what was fsynced, whether the blob had its name yet)
    real_fsync = os.fsync

    def fsync(fd):
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), blob.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert store.put_bytes(data) == blob.name and store.put_bytes(data) == blob.name
    assert blob.read_bytes() == data and [p.name for p in blob.parent.iterdir()] == [blob.name]
    content = [path for path, named in synced if path != str(blob.parent) and not named]
    assert content and Path(content[0]).parent == blob.parent, "the content is fsynced before it is renamed"
    assert (str(blob.parent), True) in synced, "the directory is fsynced after the rename"


def _put_past_the_disk(root, data: bytes, room: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    store = UploadStore(root, max_bytes=len(data))
    (root / "blobs").mkdir()
    resource.setrlimit(resource.RLIMIT_FSIZE, (room, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    with pytest.raises(OSError) as failed:
        store.put_bytes(data)
    assert failed.value.errno == errno.EFBIG


def test_put_bytes_failing_midway_leaves_no_temporary_file(tmp_path):
    child = multiprocessing.get_context("fork").Process(target=_put_past_the_disk, args=(tmp_path, b"x" * 4096, 1000))
    child.start()
    child.join()
    assert child.exitcode == 0
    assert not list((tmp_path / "blobs").iterdir())
