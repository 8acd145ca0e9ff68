"""The post_training provider's translation of 0.6 requests: every field is honoured, or a 400 naming it.

Calls the provider's own functions on the route types (no server); tests/test_training.py sends the
same requests through a real stack.
"""

from __future__ import annotations

import copy

import pytest

from llama_stack_scalarlm.api import post_training as pt
from llama_stack_scalarlm.errors import InvalidFieldError
from llama_stack_scalarlm.providers.post_training.scalarlm import _check_request, _dpo_loss, _hyperparameters, _lora

SFT = {
    "job_uuid": "run-1", "model": "tiny-llama", "logger_config": {}, "hyperparam_search_config": {},
    "algorithm_config": {"type": "LoRA", "lora_attn_modules": ["q_proj", "v_proj"], "apply_lora_to_mlp": True,
                         "apply_lora_to_output": False, "rank": 16, "alpha": 32},
    "training_config": {
        "n_epochs": 2, "max_steps_per_epoch": 10, "gradient_accumulation_steps": 2,
        "data_config": {"dataset_id": "sha256:" + "0" * 64, "batch_size": 4, "shuffle": True,
                        "data_format": "instruct"},
        "optimizer_config": {"optimizer_type": "adamw", "lr": 2e-3, "weight_decay": 0.1, "num_warmup_steps": 3},
    },
}


def sft(**changes) -> pt.SupervisedFineTuneRequest:
    """SFT with ``changes`` applied: keys are paths into the body, joined by ``__``."""
    body = copy.deepcopy(SFT)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = body
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return pt.SupervisedFineTuneRequest.model_validate(body)


def hyper(request: pt.SupervisedFineTuneRequest):
    return _hyperparameters(request.training_config, request.hyperparam_search_config, method="sft",
                            lora=_lora(request.algorithm_config))


def test_the_0_6_defaults_and_the_fields_we_honour():
    request = sft()
    _check_request(request)
    hp = hyper(request)
    assert (hp.steps, hp.batch_size, hp.gradient_accumulation_steps) == (20, 4, 2)
    assert (hp.shuffle, hp.pack_sequences) == (True, False)
    assert (hp.learning_rate, hp.weight_decay, hp.warmup_steps) == (2e-3, 0.1, 3)
    assert (hp.lora.rank, hp.lora.alpha) == (16, 32)
    assert hp.lora.target_modules == ["down_proj", "gate_proj", "q_proj", "up_proj", "v_proj"]
    assert hyper(sft(training_config__data_config__packed=True)).pack_sequences is True
    assert hyper(sft(training_config__dtype="bf16", training_config__max_validation_steps=1)).steps == 20
    assert hyper(sft(training_config__optimizer_config__optimizer_type="adam",
                     training_config__optimizer_config__weight_decay=0.0)).weight_decay == 0.0  # Adam = AdamW here


def test_shuffle_false_keeps_the_file_order_and_is_another_job():
    hp = hyper(sft(training_config__data_config__shuffle=False))
    assert hp.shuffle is False
    assert hp.weight_settings() != hyper(sft()).weight_settings()


@pytest.mark.parametrize("loss", ["sigmoid", "hinge", "ipo"])
def test_dpo_loss_types_are_honoured(loss):
    config = pt.DPOAlignmentConfig(beta=0.1, loss_type=loss)
    hp = _hyperparameters(sft().training_config, {}, method="dpo", dpo_beta=0.1, dpo_loss=_dpo_loss(config))
    assert hp.dpo_loss == loss


def test_kto_pair_is_a_400_naming_loss_type():
    with pytest.raises(InvalidFieldError) as refused:
        _dpo_loss(pt.DPOAlignmentConfig(beta=0.1, loss_type="kto_pair"))
    assert refused.value.field == "algorithm_config.loss_type"


@pytest.mark.parametrize("change, field", [
    ({"algorithm_config__apply_lora_to_output": True}, "algorithm_config.apply_lora_to_output"),
    ({"algorithm_config__use_dora": True}, "algorithm_config.use_dora"),
    ({"algorithm_config__quantize_base": True}, "algorithm_config.quantize_base"),
    ({"algorithm_config__lora_attn_modules": ["q_proj", "nope"]}, "algorithm_config.lora_attn_modules"),
    ({"training_config__data_config__validation_dataset_id": "val"},
     "training_config.data_config.validation_dataset_id"),
    ({"training_config__data_config__train_on_input": True}, "training_config.data_config.train_on_input"),
    ({"training_config__max_validation_steps": 5}, "training_config.max_validation_steps"),
    ({"training_config__dtype": "fp16"}, "training_config.dtype"),
    ({"training_config__dtype": "fp32"}, "training_config.dtype"),
    ({"training_config__efficiency_config": {"enable_activation_checkpointing": True}},
     "training_config.efficiency_config.enable_activation_checkpointing"),
    ({"training_config__efficiency_config": {"enable_activation_offloading": True}},
     "training_config.efficiency_config.enable_activation_offloading"),
    ({"training_config__efficiency_config": {"memory_efficient_fsdp_wrap": True}},
     "training_config.efficiency_config.memory_efficient_fsdp_wrap"),
    ({"training_config__efficiency_config": {"fsdp_cpu_offload": True}},
     "training_config.efficiency_config.fsdp_cpu_offload"),
    ({"training_config__optimizer_config__optimizer_type": "sgd"}, "training_config.optimizer_config.optimizer_type"),
    ({"training_config__optimizer_config__optimizer_type": "adam"}, "training_config.optimizer_config.optimizer_type"),
    ({"hyperparam_search_config": {"learning_rate": 0.5}}, "hyperparam_search_config.learning_rate"),
    ({"hyperparam_search_config": {"method": "dpo"}}, "hyperparam_search_config.method"),
    ({"hyperparam_search_config": {"shuffle": False}}, "hyperparam_search_config.shuffle"),
    ({"hyperparam_search_config": {"no_such_knob": 1}}, "hyperparam_search_config.no_such_knob"),
])
def test_a_setting_we_do_not_honour_is_a_400_naming_it(change, field):
    with pytest.raises(InvalidFieldError) as refused:
        hyper(sft(**change))
    assert refused.value.field == field, refused.value


@pytest.mark.parametrize("change, field", [
    ({"logger_config": {"wandb_project": "p"}}, "logger_config"),
    ({"checkpoint_dir": "/elsewhere"}, "checkpoint_dir"),
])
def test_request_fields_we_do_not_honour_are_a_400_naming_them(change, field):
    with pytest.raises(InvalidFieldError) as refused:
        _check_request(sft(**change))
    assert refused.value.field == field


def test_scalarlm_settings_by_name_still_pass():
    hp = hyper(sft(hyperparam_search_config={"checkpoint_every": 5, "seed": 3, "backend": "ddp"}))
    assert (hp.checkpoint_every, hp.seed, hp.backend) == (5, 3, "ddp")
    # a 0.6 field left at its default may be set by name instead (the CLI's --set pack_sequences=true)
    assert hyper(sft(hyperparam_search_config={"pack_sequences": True})).pack_sequences is True
    with pytest.raises(InvalidFieldError) as refused:
        hyper(sft(training_config__data_config__packed=False, hyperparam_search_config={"pack_sequences": True}))
    assert refused.value.field == "hyperparam_search_config.pack_sequences"
