"""The control plane (server, providers) runs without torch, so it can live apart from the GPUs."""

import subprocess
import sys
from pathlib import Path


def test_providers_import_no_torch():
    code = (
        "import sys\n"
        "import llama_stack_scalarlm.providers.inference.scalarlm, llama_stack_scalarlm.providers.scalarlm.scalarlm\n"
        "import llama_stack_scalarlm.providers.inference.provider, llama_stack_scalarlm.api.scalarlm\n"
        "import llama_stack_scalarlm.providers.safety.scalarlm, llama_stack_scalarlm.safety.guard_data\n"
        "import llama_stack_scalarlm.engine.supervisor, llama_stack_scalarlm.cli\n"
        "bad = [m for m in ('torch', 'vllm', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_running_server_has_no_torch_loaded(server):
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "libtorch" not in maps
    assert server.worker_processes(), "the workers, not the server, hold the engines"
