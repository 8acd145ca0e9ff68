"""A Hugging Face Llama-family model trained with megatron-core: tensor parallel × data parallel.

The model is megatron-core's ``GPTModel`` with the local (non-TransformerEngine) layer spec, built
from the Hugging Face config and loaded from the Hugging Face weights, each rank reading its own
tensor-parallel slice. ``parallel_state.initialize_model_parallel`` splits the world the trainer's
``__main__`` created into tensor-parallel groups of consecutive ranks (one model replica each) and
data-parallel groups across them; :attr:`MegatronBackend.data_parallel` tells the loop which
replica a rank belongs to, so the ranks of one replica read the same rows.

Layouts (Hugging Face → megatron-core, ``tp`` tensor-parallel ranks, rank ``r``):
- ``q_proj``/``k_proj``/``v_proj`` → ``linear_qkv`` (column parallel), interleaved per query group
  (KV head): ``[q heads of group 0, k_0, v_0, q heads of group 1, k_1, v_1, ...]``; rank ``r``
  holds groups ``r·G/tp ... (r+1)·G/tp - 1``.
- ``gate_proj``/``up_proj`` → ``linear_fc1`` (column parallel): rank ``r`` holds
  ``[gate rows of r; up rows of r]``, so SwiGLU's ``chunk(2)`` pairs them locally.
- ``o_proj`` → ``linear_proj``, ``down_proj`` → ``linear_fc2`` (row parallel: split on dim 1).
- ``embed_tokens`` (and an untied ``lm_head``) → vocab-parallel rows, the vocabulary zero-padded
  to a multiple of ``tp``; padded logits are masked to -inf, so the loss is exactly the HF one.
- RMSNorm weights (``input_layernorm``, ``post_attention_layernorm`` → ``pre_mlp_layernorm``,
  ``norm`` → ``decoder.final_layernorm``): replicated.
:meth:`MegatronBackend.save_hf` gathers the slices to rank 0 and inverts the layouts: checkpoints
are ordinary full Hugging Face directories that vLLM and transformers load as they are.

The forward pass runs the embedding and decoder of ``GPTModel`` directly (not ``GPTModel.forward``):
packed rows restart their ``position_ids`` per sequence, so the rotary angles are computed from
the positions (megatron's RoPE assumes ``0..s-1``) and attention gets a block-diagonal causal mask.
As in the torch backend, the LM head runs only at label positions; megatron's vocab-parallel cross
entropy gives per-token losses (log-probabilities = -loss).

Optimizer and gradients: torch's AdamW over this rank's shards (the base class's), fp32 master
weights; gradients are averaged over the data-parallel group with ``all_reduce`` after the last
micro-batch's backward. Replicated parameters (norms) get identical gradients on every
tensor-parallel rank (no sequence parallelism), so they need no tensor-parallel reduction.
On GPUs the model computes under bf16 autocast (fp32 weights, as the torch backend's DDP does);
on CPUs everything is fp32, with the accommodations in :mod:`.cpu_megatron`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..registry.schema import TrainingJob
from .backend import TrainingBackend
from .checkpoint import write_hf_checkpoint
from .data import IGNORE_INDEX, MicroBatch
from .megatron_fit import megatron_problems


# ------------------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class Layout:
    """The shapes that map a Hugging Face Llama checkpoint onto megatron-core's parameters."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_groups: int  # key/value heads (megatron's query groups)
    head_dim: int
    ffn_size: int
    vocab_size: int
    padded_vocab_size: int  # a multiple of the tensor-parallel size: megatron splits the vocabulary evenly
    tied: bool
    tp: int

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_groups

    @classmethod
    def from_config(cls, config: Any, tp: int, max_seq_len: int | None = None) -> Layout:
        """Check that megatron's GPT layers compute exactly this model, with ``tp`` ranks; raise ValueError if not."""
        problems = [problem for _, problem in megatron_problems(config, tp, max_seq_len)]
        heads = config.num_attention_heads
        groups = getattr(config, "num_key_value_heads", None) or heads
        ffn, vocab = config.intermediate_size, config.vocab_size
        if not problems:  # the one check that needs transformers' RoPE functions
            try:
                rope_inv_freq(config)
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("the megatron backend cannot train this model: " + "; ".join(problems))
        return cls(
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            num_heads=heads,
            num_groups=groups,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            ffn_size=ffn,
            vocab_size=vocab,
            padded_vocab_size=-(-vocab // tp) * tp,
            tied=bool(getattr(config, "tie_word_embeddings", False)),
            tp=tp,
        )

    def hf_names(self) -> list[str]:
        """The Hugging Face weights this layout reads and writes (``lm_head.weight`` only when untied)."""
        names = ["model.embed_tokens.weight"]
        for i in range(self.num_layers):
            p = f"model.layers.{i}."
            names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
            names += [f"{p}self_attn.{x}_proj.weight" for x in "qkvo"]
            names += [f"{p}mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
        names.append("model.norm.weight")
        if not self.tied:
            names.append("lm_head.weight")
        return names


def rope_inv_freq(config: Any) -> torch.Tensor:
    """RoPE inverse frequencies as transformers computes them, for a config :func:`megatron_problems`
    accepts (default, linear and llama3 scaling, full rotary); scaling of the attention is refused."""
    params = getattr(config, "rope_parameters", None) or {
        "rope_type": (getattr(config, "rope_scaling", None) or {}).get("rope_type", "default"),
        "rope_theta": getattr(config, "rope_theta", 10000.0),
    }
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return 1.0 / (params["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config)
    if scaling != 1.0:
        raise ValueError(f"rope_type {rope_type!r} with attention scaling {scaling} is not supported")
    return inv_freq.float()


def hf_to_mcore(get: Callable[[str], torch.Tensor], layout: Layout, tp_rank: int) -> dict[str, torch.Tensor]:
    """This tensor-parallel rank's megatron-core parameters from full Hugging Face tensors (``get(name)``)."""
    tp, hidden, groups, hd = layout.tp, layout.hidden_size, layout.num_groups, layout.head_dim

    def rows(t: torch.Tensor) -> torch.Tensor:  # column parallel: this rank's block of output rows
        return t.chunk(tp, dim=0)[tp_rank]

    def cols(t: torch.Tensor) -> torch.Tensor:  # row parallel: this rank's block of input columns
        return t.chunk(tp, dim=1)[tp_rank]

    def vocab(t: torch.Tensor) -> torch.Tensor:
        return rows(F.pad(t, (0, 0, 0, layout.padded_vocab_size - layout.vocab_size)))

    out = {"embedding.word_embeddings.weight": vocab(get("model.embed_tokens.weight"))}
    for i in range(layout.num_layers):
        hf, mc = f"model.layers.{i}.", f"decoder.layers.{i}."
        q = get(hf + "self_attn.q_proj.weight").reshape(groups, layout.heads_per_group * hd, hidden)
        k = get(hf + "self_attn.k_proj.weight").reshape(groups, hd, hidden)
        v = get(hf + "self_attn.v_proj.weight").reshape(groups, hd, hidden)
        out[mc + "self_attention.linear_qkv.weight"] = rows(torch.cat([q, k, v], dim=1)).reshape(-1, hidden)
        out[mc + "self_attention.linear_proj.weight"] = cols(get(hf + "self_attn.o_proj.weight"))
        out[mc + "input_layernorm.weight"] = get(hf + "input_layernorm.weight")
        out[mc + "pre_mlp_layernorm.weight"] = get(hf + "post_attention_layernorm.weight")
        gate, up = get(hf + "mlp.gate_proj.weight"), get(hf + "mlp.up_proj.weight")
        out[mc + "mlp.linear_fc1.weight"] = torch.cat([rows(gate), rows(up)], dim=0)
        out[mc + "mlp.linear_fc2.weight"] = cols(get(hf + "mlp.down_proj.weight"))
    out["decoder.final_layernorm.weight"] = get("model.norm.weight")
    if not layout.tied:
        out["output_layer.weight"] = vocab(get("lm_head.weight"))
    # Copies, not views: a slice must not keep the full tensor (the whole model, in the end) alive.
    return {name: t.clone(memory_format=torch.contiguous_format) for name, t in out.items()}


def mcore_to_hf(full: Mapping[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """Hugging Face tensors from megatron-core ones, each the concatenation of the ``layout.tp``
    ranks' slices along its partition dimension (the inverse of :func:`hf_to_mcore`)."""
    tp, hidden, groups, hd = layout.tp, layout.hidden_size, layout.num_groups, layout.head_dim
    hpg = layout.heads_per_group
    out = {"model.embed_tokens.weight": full["embedding.word_embeddings.weight"][: layout.vocab_size]}
    for i in range(layout.num_layers):
        hf, mc = f"model.layers.{i}.", f"decoder.layers.{i}."
        qkv = full[mc + "self_attention.linear_qkv.weight"].reshape(groups, hpg + 2, hd, hidden)
        out[hf + "self_attn.q_proj.weight"] = qkv[:, :hpg].reshape(groups * hpg * hd, hidden)
        out[hf + "self_attn.k_proj.weight"] = qkv[:, hpg].reshape(groups * hd, hidden)
        out[hf + "self_attn.v_proj.weight"] = qkv[:, hpg + 1].reshape(groups * hd, hidden)
        out[hf + "self_attn.o_proj.weight"] = full[mc + "self_attention.linear_proj.weight"]
        out[hf + "input_layernorm.weight"] = full[mc + "input_layernorm.weight"]
        out[hf + "post_attention_layernorm.weight"] = full[mc + "pre_mlp_layernorm.weight"]
        fc1 = full[mc + "mlp.linear_fc1.weight"].reshape(tp, 2, layout.ffn_size // tp, hidden)
        out[hf + "mlp.gate_proj.weight"] = fc1[:, 0].reshape(layout.ffn_size, hidden)
        out[hf + "mlp.up_proj.weight"] = fc1[:, 1].reshape(layout.ffn_size, hidden)
        out[hf + "mlp.down_proj.weight"] = full[mc + "mlp.linear_fc2.weight"]
    out["model.norm.weight"] = full["decoder.final_layernorm.weight"]
    if not layout.tied:
        out["lm_head.weight"] = full["output_layer.weight"][: layout.vocab_size]
    return {name: t.contiguous() for name, t in out.items()}


class HFWeights:
    """A Hugging Face checkpoint's tensors, read one at a time (as fp32) from its safetensors files."""

    def __init__(self, model_path: Path):
        from safetensors import safe_open

        model_path = Path(model_path)
        index, single = model_path / "model.safetensors.index.json", model_path / "model.safetensors"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = {name: model_path / file for name, file in weight_map.items()}
        elif single.exists():
            with safe_open(single, framework="pt") as handle:
                files = dict.fromkeys(handle.keys(), single)
        else:
            raise ValueError(f"{model_path}: the megatron backend reads safetensors checkpoints; none found")
        self.files = files
        self._open = {path: safe_open(path, framework="pt") for path in set(files.values())}

    def names(self) -> set[str]:
        return set(self.files)

    def __call__(self, name: str) -> torch.Tensor:
        if name not in self.files:
            raise KeyError(f"the checkpoint has no tensor {name!r}")
        return self._open[self.files[name]].get_tensor(name).float()


# ------------------------------------------------------------------------------------- backend


class MegatronBackend(TrainingBackend):
    """``hp.tensor_parallel`` ranks per model replica; ``world / tensor_parallel`` replicas."""

    def setup(self, job: TrainingJob, model_path: Path, device: torch.device) -> None:
        from transformers import AutoConfig, AutoTokenizer

        from . import cpu_megatron

        self.job, self.device, self.model_path = job, device, Path(model_path)
        hp = job.hyperparameters
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        tp = hp.tensor_parallel
        if self.world % tp:
            raise ValueError(f"tensor_parallel={tp} does not divide the {self.world} processes")
        self.base_config = AutoConfig.from_pretrained(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.export_dtype = getattr(self.base_config, "dtype", None) or torch.float32
        if isinstance(self.export_dtype, str):
            self.export_dtype = getattr(torch, self.export_dtype)
        self.layout = Layout.from_config(self.base_config, tp, hp.max_seq_len)

        with cpu_megatron.quiet():
            from megatron.core import parallel_state, tensor_parallel

        if not parallel_state.model_parallel_is_initialized():
            parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp)
        elif parallel_state.get_tensor_model_parallel_world_size() != tp:
            raise RuntimeError("megatron's model parallel state is already initialized with another size")
        if device.type == "cuda":
            tensor_parallel.model_parallel_cuda_manual_seed(hp.seed)
        else:
            cpu_megatron.install()
        self.tp_group = parallel_state.get_tensor_model_parallel_group()
        self.tp_rank = parallel_state.get_tensor_model_parallel_rank()
        self.dp_group = parallel_state.get_data_parallel_group()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_world = parallel_state.get_data_parallel_world_size()

        source = HFWeights(self.model_path)
        unexpected = source.names() - set(self.layout.hf_names()) - {"lm_head.weight"}
        if unexpected:
            raise ValueError(f"the megatron backend cannot train this model: weights it does not know, "
                             f"such as {sorted(unexpected)[:5]}")
        weights = hf_to_mcore(source, self.layout, self.tp_rank)
        self.inv_freq = rope_inv_freq(self.base_config).to(device)
        self.model = self._build(weights).train()
        self.reference = None
        if hp.needs_reference:  # a frozen copy of the starting weights
            self.reference = self._build(weights).requires_grad_(False).eval()
        del weights
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self._sync = True
        # Padded vocabulary entries (this rank's share of them) never win: their logits are -inf.
        per_rank = self.layout.padded_vocab_size // tp
        first = self.tp_rank * per_rank
        pad = torch.arange(first, first + per_rank, device=device) >= self.layout.vocab_size
        self._vocab_pad = pad if bool(pad.any()) else None

    def _build(self, weights: dict[str, torch.Tensor]) -> nn.Module:
        from . import cpu_megatron

        config, layout, cpu = self.base_config, self.layout, self.device.type == "cpu"
        with cpu_megatron.quiet():
            from megatron.core.models.gpt import GPTModel
            from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
            from megatron.core.transformer import TransformerConfig

            transformer = TransformerConfig(
                num_layers=layout.num_layers,
                hidden_size=layout.hidden_size,
                num_attention_heads=layout.num_heads,
                num_query_groups=layout.num_groups,
                kv_channels=layout.head_dim,
                ffn_hidden_size=layout.ffn_size,
                normalization="RMSNorm",
                layernorm_epsilon=config.rms_norm_eps,
                gated_linear_unit=True,
                activation_func=F.silu,
                add_bias_linear=False,
                add_qkv_bias=False,
                hidden_dropout=0.0,
                attention_dropout=float(getattr(config, "attention_dropout", 0.0) or 0.0),
                tensor_model_parallel_size=layout.tp,
                params_dtype=torch.float32,
                use_cpu_initialization=cpu,
                perform_initialization=False,  # every parameter is loaded from the checkpoint below
                attention_softmax_in_fp32=True,
                masked_softmax_fusion=False,
                bias_activation_fusion=False,
                bias_dropout_fusion=False,
                apply_rope_fusion=False,
                gradient_accumulation_fusion=False,
                persist_layer_norm=False,
            )
            model = GPTModel(
                transformer,
                get_gpt_layer_local_spec(normalization="RMSNorm"),
                vocab_size=layout.padded_vocab_size,
                max_sequence_length=getattr(config, "max_position_embeddings", 4096),
                position_embedding_type="rope",
                rotary_base=int(rope_theta(config)),
                share_embeddings_and_output_weights=layout.tied,
                parallel_output=True,
            )
        params = dict(model.named_parameters())
        if params.keys() != weights.keys():
            differ = sorted(params.keys() ^ weights.keys())
            raise RuntimeError(f"megatron's parameters and the converted ones differ: {differ}")
        with torch.no_grad():
            for name, param in params.items():
                if param.shape != weights[name].shape:
                    raise RuntimeError(f"{name}: megatron's shape {tuple(param.shape)}, "
                                       f"converted {tuple(weights[name].shape)}")
                param.copy_(weights[name])
        return model.to(self.device)

    # ------------------------------------------------------------------------------- properties

    @property
    def kind(self) -> Literal["full", "lora"]:
        return "full"

    @property
    def sharded(self) -> bool:
        return self.layout.tp > 1

    @property
    def data_parallel(self) -> tuple[int, int]:
        return self.dp_rank, self.dp_world

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self._params

    # ---------------------------------------------------------------------------------- compute

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()

    def hidden_states(self, model: nn.Module, batch: MicroBatch) -> torch.Tensor:
        """The decoder's output (after the final norm), [b, s, h]: packed sequences attend only within themselves."""
        ids, positions = batch.input_ids, batch.position_ids
        length = ids.shape[1]
        # A sequence starts where its position is 0; tokens attend within their sequence, causally.
        segment = (positions == 0).cumsum(dim=1)
        causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()
        masked = ~((segment[:, :, None] == segment[:, None, :]) & causal)[:, None]  # [b, 1, s, s], True = masked
        angles = positions.t()[..., None].float() * self.inv_freq  # [s, b, head_dim / 2]
        rotary = torch.cat([angles, angles], dim=-1)[:, :, None, :]  # [s, b, 1, head_dim], non-interleaved as HF
        with self._autocast():
            hidden = model.embedding(input_ids=ids, position_ids=positions)  # [s, b, h]
            hidden = model.decoder(hidden_states=hidden, attention_mask=masked, rotary_pos_emb=rotary)
        return hidden.transpose(0, 1)

    def vocab_logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """This rank's slice of the vocabulary's logits (fp32) for hidden states [..., h]; padded entries are -inf."""
        weight = model.shared_embedding_or_output_weight() if self.layout.tied else None
        with self._autocast():
            logits, _ = model.output_layer(hidden.reshape(-1, 1, hidden.shape[-1]), weight=weight)
        logits = logits.float().reshape(*hidden.shape[:-1], -1)
        if self._vocab_pad is not None:
            logits = logits.masked_fill(self._vocab_pad, float("-inf"))
        return logits

    def _token_logprobs(self, model: nn.Module, batch: MicroBatch) -> torch.Tensor:
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        selected = batch.labels != IGNORE_INDEX
        logits = self.vocab_logits(model, self.hidden_states(model, batch)[selected])  # [label tokens, vocab / tp]
        targets = batch.labels[selected][:, None].contiguous()
        return -vocab_parallel_cross_entropy(logits[:, None, :], targets, tp_group=self.tp_group)[:, 0]

    def token_logprobs(self, batch: MicroBatch, reference: bool = False) -> torch.Tensor:
        if not reference:
            return self._token_logprobs(self.model, batch)
        if self.reference is None:
            raise RuntimeError("no reference model: the job is neither DPO nor GRPO with a KL penalty")
        with torch.no_grad():
            return self._token_logprobs(self.reference, batch)

    def set_gradient_sync(self, enabled: bool) -> None:
        self._sync = enabled

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()
        if self._sync and self.dp_world > 1:
            self._average_gradients()

    def _average_gradients(self, bucket_elements: int = 1 << 25) -> None:
        """Average gradients over the data-parallel group, in flat buckets (one all-reduce per ~128 MB)."""
        grads = []
        for param in self._params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            grads.append(param.grad)
        start = 0
        while start < len(grads):
            end, size = start, 0
            while end < len(grads) and (end == start or size + grads[end].numel() <= bucket_elements):
                size += grads[end].numel()
                end += 1
            bucket = grads[start:end]
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat, group=self.dp_group)
            flat /= self.dp_world
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
            start = end

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """The global norm over all shards: tensor-parallel slices' squares are summed over the
        tensor-parallel group, replicated parameters count once (gradients are already identical
        across data-parallel replicas)."""
        grads = [(p.grad, bool(getattr(p, "tensor_model_parallel", False))) for p in self._params if p.grad is not None]
        zero = torch.zeros((), dtype=torch.float32, device=self.device)
        sharded = [g for g, split in grads if split]
        replicated = [g for g, split in grads if not split]
        sharded_sq = torch.stack(torch._foreach_norm(sharded)).float().square().sum() if sharded else zero.clone()
        replicated_sq = torch.stack(torch._foreach_norm(replicated)).float().square().sum() if replicated else zero
        if self.layout.tp > 1:
            dist.all_reduce(sharded_sq, group=self.tp_group)
        total = (sharded_sq + replicated_sq).sqrt()
        coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        if grads:
            torch._foreach_mul_([g for g, _ in grads], coefficient.to(grads[0][0].dtype))
        return total

    # ---------------------------------------------------------------------------------- export

    def save_hf(self, out_dir: Path) -> None:
        full = {}
        if self.dp_rank == 0:  # the first replica's ranks gather its slices to rank 0
            for name, param in self.model.named_parameters():
                tensor = param.detach()
                if self.layout.tp > 1 and getattr(param, "tensor_model_parallel", False):
                    tensor = self._gather_slices(tensor, param.partition_dim)
                if self.rank == 0:
                    full[name] = tensor.to("cpu")
        if self.rank != 0:
            return
        hf = mcore_to_hf(full, self.layout)
        weights = {name: t.to(dtype=self.export_dtype).contiguous() for name, t in hf.items()}
        write_hf_checkpoint(out_dir, weights, self.base_config, self.tokenizer, self.model_path)

    def _gather_slices(self, tensor: torch.Tensor, dim: int) -> torch.Tensor | None:
        """The full tensor on tensor-parallel rank 0 (None elsewhere). *Collective over the TP group.*"""
        tensor = tensor.contiguous()
        slices = [torch.empty_like(tensor) for _ in range(self.layout.tp)] if self.tp_rank == 0 else None
        dist.gather(tensor, slices, group=self.tp_group, group_dst=0)
        return torch.cat(slices, dim=dim) if slices is not None else None

    # ---------------------------------------------------------------------------------- resume

    def state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        model = {name: p.detach().to("cpu", copy=True) for name, p in self.model.named_parameters()}
        opt = optimizer.state_dict()
        opt["state"] = {
            k: {n: v.detach().to("cpu", copy=True) if torch.is_tensor(v) else v for n, v in s.items()}
            for k, s in opt["state"].items()
        }
        return {"model": model, "optimizer": opt, "tensor_parallel": self.layout.tp}

    def load_state_dict(self, state: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
        if state.get("tensor_parallel", 1) != self.layout.tp:
            raise RuntimeError(f"the checkpoint was written with tensor_parallel={state.get('tensor_parallel')}, "
                               f"this run has {self.layout.tp}")
        params = dict(self.model.named_parameters())
        if params.keys() != state["model"].keys():
            raise RuntimeError("the checkpoint's megatron parameters differ from this model's")
        with torch.no_grad():
            for name, saved in state["model"].items():
                params[name].copy_(saved)
        optimizer.load_state_dict(state["optimizer"])


def rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
