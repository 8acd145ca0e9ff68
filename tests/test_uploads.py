"""Content-addressed uploads on their own: chunks, resume, dedup, limits, bad names."""

import asyncio
import hashlib
import os
import time

import pytest

from llama_stack_scalarlm.errors import InvalidFieldError
from llama_stack_scalarlm.registry.uploads import UploadConflictError, UploadStore


async def chunks(*parts):
    for part in parts:
        yield part


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
    done = fresh.finish(session.upload_id)
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
        store.finish(session.upload_id)
    with pytest.raises(InvalidFieldError, match="upload_id"):
        store.session("../../etc/passwd")
    with pytest.raises(InvalidFieldError, match="sha256"):
        store.blob("../x")


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
    assert store.finish(session.upload_id).sha256 == hashlib.sha256(data).hexdigest()


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
