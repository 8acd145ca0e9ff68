"""A Hugging Face causal LM trained under plain PyTorch: DDP, or FSDP2 (``fully_shard``) per decoder layer + root.

Master weights and optimizer state are fp32. On GPUs, FSDP2 computes in bf16 with fp32 gradient
reduction (``MixedPrecisionPolicy``) and DDP under bf16 autocast; on CPUs everything stays fp32
(exact, and what gloo reduces). LoRA wraps the model with peft's ``get_peft_model`` (or, for a job
trained from a LoRA job, loads that job's adapter to continue it) before it is distributed; only the
adapter is trained and checkpointed, and it is exported as an adapter, or merged into full weights
when the weights under it are a full fine-tune's (see ``TrainingJob.kind``).

The forward pass runs the decoder, then the LM head only at label positions: on chat data most
positions are prompt tokens, and the [tokens × vocab] logits are the biggest activation.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
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


class TokenLogProbs(nn.Module):
    """Wraps a causal LM so one module call yields the label tokens' log-probabilities (the unit DDP/FSDP wrap)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        config = lm.config
        self._softcap = getattr(config, "final_logit_softcapping", None)  # Gemma 2/3
        self._scale = getattr(config, "logit_scale", None)  # Cohere
        self._divisor = getattr(config, "logits_scaling", None)  # Granite

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # No attention mask: restarting position ids make transformers build the packed (block-diagonal) mask.
        hidden = self.lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        selected = labels != IGNORE_INDEX
        logits = self.lm.get_output_embeddings()(hidden.last_hidden_state[selected]).float()
        if self._scale:
            logits = logits * self._scale
        if self._divisor:
            logits = logits / self._divisor
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return -F.cross_entropy(logits, labels[selected], reduction="none")


class TorchBackend(TrainingBackend):
    def __init__(self, strategy: Literal["ddp", "fsdp"]):
        self.strategy = strategy

    # ------------------------------------------------------------------------------------- setup

    def setup(self, job: TrainingJob, model_path: Path, device: torch.device) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        self.job, self.device, self.model_path = job, device, Path(model_path)
        hp = job.hyperparameters
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.base_config = AutoConfig.from_pretrained(model_path)  # as shipped: its dtype is the export dtype
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.export_dtype = getattr(self.base_config, "dtype", None) or torch.float32
        if isinstance(self.export_dtype, str):
            self.export_dtype = getattr(torch, self.export_dtype)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        adapter = job.init_adapter_path  # the parent's: continued by LoRA, merged in by a full fine-tune
        if adapter is not None and hp.lora is None:
            model, adapter = _with_adapter(model, adapter).merge_and_unload().requires_grad_(True), None
        reference = None
        if hp.needs_reference and (hp.lora is None or adapter is not None):  # the weights it starts from
            start = copy.deepcopy(model)
            start = _with_adapter(start, adapter).merge_and_unload() if adapter is not None else start
            reference = start.requires_grad_(False).eval()
        if adapter is not None:
            model = _with_adapter(model, adapter, trainable=True)
        elif hp.lora is not None:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=hp.lora.rank,
                lora_alpha=hp.lora.alpha,
                lora_dropout=hp.lora.dropout,
                target_modules=hp.lora.target_modules,
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, lora)
        self.lm = model.train()
        self.inner = TokenLogProbs(self.lm)
        self.module = self._distribute(self.inner, trainable=True)
        self.reference = self._distribute(TokenLogProbs(reference), trainable=False) if reference else None
        self._params = [p for p in self.inner.parameters() if p.requires_grad]

    def _distribute(self, module: TokenLogProbs, trainable: bool) -> nn.Module:
        cuda = self.device.type == "cuda"
        if self.world == 1:  # nothing to reduce or shard: skip the wrappers' per-step cost
            module.to(self.device)
            return module
        if self.strategy == "ddp":
            module.to(self.device)
            if not trainable:
                return module
            from torch.nn.parallel import DistributedDataParallel

            return DistributedDataParallel(module, device_ids=[self.device.index] if cuda else None)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(self.device.type, (self.world,))
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if cuda else None
        options = {"mesh": mesh, **({"mp_policy": policy} if policy else {})}
        layers = list(getattr(module.lm.get_decoder(), "layers", []))
        for i, layer in enumerate(layers):
            # The last layer is needed again at once by backward: keep it unsharded after forward.
            fully_shard(layer, reshard_after_forward=i < len(layers) - 1, **options)
        fully_shard(module, **options)
        return module

    # ------------------------------------------------------------------------------- properties

    @property
    def kind(self) -> Literal["full", "lora"]:
        return self.job.kind

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp" and self.world > 1

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self._params

    def _named_trainable(self, module: nn.Module) -> list[tuple[str, nn.Parameter]]:
        ids = {id(p) for p in self._params}
        return [(n, p) for n, p in module.named_parameters() if id(p) in ids]

    # ---------------------------------------------------------------------------------- compute

    def _autocast(self):
        if self.device.type == "cuda" and (self.strategy == "ddp" or self.world == 1):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def token_logprobs(self, batch: MicroBatch, reference: bool = False) -> torch.Tensor:
        args = (batch.input_ids, batch.position_ids, batch.labels)
        with self._autocast():
            if not reference:
                return self.module(*args)
            with torch.no_grad():
                if self.reference is not None:
                    return self.reference(*args)
                with _adapters_disabled(self.lm):  # LoRA: the weights under the adapter are the reference
                    return (self.module if self.sharded else self.inner)(*args)

    def set_gradient_sync(self, enabled: bool) -> None:
        if self.world == 1:
            return
        if self.strategy == "ddp":
            self.module.require_backward_grad_sync = enabled
        else:
            self.module.set_requires_gradient_sync(enabled)

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        return _full(torch.nn.utils.clip_grad_norm_(self._params, max_norm))

    # ---------------------------------------------------------------------------------- export

    def save_hf(self, out_dir: Path) -> None:
        if self.kind == "lora":
            self._save_adapter(out_dir)
        elif self.job.hyperparameters.lora is not None:
            self._save_merged(out_dir)
        else:
            self._save_full(out_dir)

    def _gather(self, named: list[tuple[str, torch.Tensor]], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
        """Full tensors on rank 0's CPU (every rank takes part in the all-gathers, in the same order)."""
        out = {}
        for name, tensor in named:
            full = _full(tensor.detach())
            if self.rank == 0:
                out[name] = full.to("cpu", dtype or full.dtype).contiguous()
        return out

    def _unique_state(self) -> list[tuple[str, torch.Tensor]]:
        unique, seen = [], set()
        for name, tensor in self.lm.state_dict(keep_vars=True).items():
            if id(tensor) not in seen:  # tied weights (lm_head = embeddings) are written once, as HF does
                seen.add(id(tensor))
                unique.append((name, tensor))
        return unique

    def _save_full(self, out_dir: Path) -> None:
        weights = self._gather(self._unique_state(), self.export_dtype)
        if self.rank == 0:
            write_hf_checkpoint(out_dir, weights, self.base_config, self.tokenizer, self.model_path)

    def _save_merged(self, out_dir: Path) -> None:
        """A LoRA trained on a full fine-tune's weights, written as full weights W + (alpha/rank)·B·A:
        the engine that serves it holds those weights, not a store model to put an adapter on."""
        state = self._gather(self._unique_state(), None)
        if self.rank != 0:
            return
        scaling = self.job.hyperparameters.lora.alpha / self.job.hyperparameters.lora.rank
        weights = {}
        for name, tensor in state.items():
            if ".lora_" in name:
                continue
            if name.endswith(".base_layer.weight"):
                layer = name.removesuffix(".base_layer.weight")
                down, up = state[f"{layer}.lora_A.default.weight"], state[f"{layer}.lora_B.default.weight"]
                tensor = tensor + scaling * (up @ down)
            weights[name.removeprefix("base_model.model.").replace(".base_layer.", ".")] = tensor.to(self.export_dtype)
        write_hf_checkpoint(out_dir, weights, self.base_config, self.tokenizer, self.model_path)

    def _save_adapter(self, out_dir: Path) -> None:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        trained = self._named_trainable(self.lm)
        weights = self._gather(trained, self.export_dtype)
        if self.rank != 0:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        adapter = get_peft_model_state_dict(self.lm, state_dict=weights)
        save_file({k: v.contiguous() for k, v in adapter.items()}, out_dir / "adapter_model.safetensors",
                  metadata={"format": "pt"})
        config = copy.deepcopy(self.lm.peft_config["default"])
        config.inference_mode = True
        config.base_model_name_or_path = str(self.model_path)
        config.save_pretrained(out_dir)

    # ---------------------------------------------------------------------------------- resume

    def state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        model = {n: _local_copy(p) for n, p in self._named_trainable(self.inner)}
        opt = optimizer.state_dict()
        opt["state"] = {k: {n: _local_copy(v) for n, v in s.items()} for k, s in opt["state"].items()}
        return {"model": model, "optimizer": opt}

    def load_state_dict(self, state: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
        from torch.distributed.tensor import DTensor

        params = dict(self.inner.named_parameters())
        with torch.no_grad():
            for name, saved in state["model"].items():
                param = params[name]
                (param.to_local() if isinstance(param, DTensor) else param).copy_(saved)
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # optimizer state of sharded parameters must be sharded too
            for param in group["params"]:
                if not isinstance(param, DTensor):
                    continue
                slots = optimizer.state.get(param, {})
                for key, value in slots.items():
                    if key != "step" and torch.is_tensor(value) and not isinstance(value, DTensor):
                        slots[key] = DTensor.from_local(
                            value.to(param.device), param.device_mesh, param.placements,
                            run_check=False, shape=param.shape, stride=param.stride(),
                        )


def _with_adapter(model: nn.Module, path: str, trainable: bool = False) -> nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(model, path, is_trainable=trainable)


@contextmanager
def _adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run the base model under a PEFT model.

    Not ``PeftModel.disable_adapter()``: it toggles the adapters' ``requires_grad``, which under
    FSDP2 lands on whichever copy (sharded or unsharded) is registered at that moment, and the
    adapters of a layer left unsharded after forward silently stop training.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield
    finally:
        for layer in layers:
            layer._disable_adapters = False


def _full(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _local_copy(value: Any) -> Any:
    if not torch.is_tensor(value):
        return value
    from torch.distributed.tensor import DTensor

    local = value.to_local() if isinstance(value, DTensor) else value
    return local.detach().to("cpu", copy=True)
