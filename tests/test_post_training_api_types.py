"""The post_training external API (0.6.1 contract): models, routes and one HTTP round trip. No server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import TypeAdapter, ValidationError

from llama_stack_scalarlm.api import post_training as pt

# A request body as llama-stack-client 0.6.x sends it for client.alpha.post_training.supervised_fine_tune(...)
SFT_BODY = {
    "job_uuid": "job-1",
    "model": "scalarlm/SmolLM2-135M-Instruct",
    "checkpoint_dir": None,
    "algorithm_config": {
        "type": "LoRA",
        "lora_attn_modules": ["q_proj", "v_proj"],
        "apply_lora_to_mlp": False,
        "apply_lora_to_output": False,
        "rank": 8,
        "alpha": 16,
    },
    "training_config": {
        "n_epochs": 1,
        "max_steps_per_epoch": 10,
        "gradient_accumulation_steps": 1,
        "data_config": {
            "dataset_id": "my-sft-set",
            "batch_size": 4,
            "shuffle": True,
            "data_format": "instruct",
        },
        "optimizer_config": {"optimizer_type": "adamw", "lr": 3e-4, "weight_decay": 0.0, "num_warmup_steps": 2},
    },
    "hyperparam_search_config": {},
    "logger_config": {},
}

EXPECTED_ROUTES = sorted(
    [
        ("POST", "/v1alpha/post-training/supervised-fine-tune"),
        ("POST", "/v1alpha/post-training/preference-optimize"),
        ("GET", "/v1alpha/post-training/jobs"),
        ("GET", "/v1alpha/post-training/jobs/{job_uuid}/status"),
        ("POST", "/v1alpha/post-training/jobs/{job_uuid}/cancel"),
        ("GET", "/v1alpha/post-training/jobs/{job_uuid}/artifacts"),
        # older forms, still called by llama-stack-client <= 0.6.1
        ("GET", "/v1alpha/post-training/job/status"),
        ("POST", "/v1alpha/post-training/job/cancel"),
        ("GET", "/v1alpha/post-training/job/artifacts"),
    ]
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class FakePostTraining:
    """Records calls; answers with fixed models."""

    def __init__(self):
        self.calls: list[tuple[str, object]] = []

    async def supervised_fine_tune(self, request: pt.SupervisedFineTuneRequest) -> pt.PostTrainingJob:
        self.calls.append(("supervised_fine_tune", request))
        return pt.PostTrainingJob(job_uuid=request.job_uuid)

    async def preference_optimize(self, request: pt.PreferenceOptimizeRequest) -> pt.PostTrainingJob:
        self.calls.append(("preference_optimize", request))
        return pt.PostTrainingJob(job_uuid=request.job_uuid)

    async def get_training_jobs(self) -> pt.ListPostTrainingJobsResponse:
        self.calls.append(("get_training_jobs", None))
        return pt.ListPostTrainingJobsResponse(data=[pt.PostTrainingJob(job_uuid="job-1")])

    async def get_training_job_status(
        self, request: pt.GetTrainingJobStatusRequest
    ) -> pt.PostTrainingJobStatusResponse:
        self.calls.append(("get_training_job_status", request))
        return pt.PostTrainingJobStatusResponse(
            job_uuid=request.job_uuid,
            status=pt.JobStatus.in_progress,
            scheduled_at=T0,
            started_at=T0,
            checkpoints=[self._checkpoint(request.job_uuid)],
        )

    async def cancel_training_job(self, request: pt.CancelTrainingJobRequest) -> None:
        self.calls.append(("cancel_training_job", request))

    async def get_training_job_artifacts(
        self, request: pt.GetTrainingJobArtifactsRequest
    ) -> pt.PostTrainingJobArtifactsResponse:
        self.calls.append(("get_training_job_artifacts", request))
        checkpoints = [self._checkpoint(request.job_uuid)]
        return pt.PostTrainingJobArtifactsResponse(job_uuid=request.job_uuid, checkpoints=checkpoints)

    def request_body_limit(self) -> int:
        return 1 << 20

    @staticmethod
    def _checkpoint(job_uuid: str) -> pt.Checkpoint:
        return pt.Checkpoint(
            identifier=f"{job_uuid}-epoch-0",
            created_at=T0,
            epoch=0,
            post_training_job_id=job_uuid,
            path=f"/state/jobs/{job_uuid}/checkpoint-0",
            training_metrics=pt.PostTrainingMetric(epoch=0, train_loss=1.5, validation_loss=1.7, perplexity=5.47),
        )


@pytest.fixture
def fake():
    return FakePostTraining()


@pytest.fixture
def client(fake):
    app = FastAPI()
    app.include_router(pt.create_router(fake))
    return TestClient(app)


def _missing(exc: ValidationError) -> set[tuple]:
    return {e["loc"] for e in exc.errors() if e["type"] == "missing"}


# ---------------------------------------------------------------------------- models


def test_sft_body_validates_with_0_6_defaults():
    req = pt.SupervisedFineTuneRequest.model_validate(SFT_BODY)
    assert isinstance(req.algorithm_config, pt.LoraFinetuningConfig)
    assert req.algorithm_config.rank == 8 and req.algorithm_config.use_dora is False
    assert req.algorithm_config.quantize_base is False
    tc = req.training_config
    assert (tc.max_validation_steps, tc.dtype, tc.efficiency_config) == (1, "bf16", None)
    dc = tc.data_config
    assert dc.dataset_id == "my-sft-set" and dc.data_format is pt.DatasetFormat.instruct
    assert (dc.validation_dataset_id, dc.packed, dc.train_on_input) == (None, False, False)
    oc = tc.optimizer_config
    assert oc.optimizer_type is pt.OptimizerType.adamw and oc.lr == 3e-4 and oc.num_warmup_steps == 2
    # it serializes back to the same wire values
    dumped = req.model_dump(mode="json")
    assert dumped["algorithm_config"]["type"] == "LoRA"
    assert dumped["training_config"]["data_config"]["data_format"] == "instruct"
    assert dumped["training_config"]["optimizer_config"]["optimizer_type"] == "adamw"


def test_defaults_of_optional_parts():
    minimal = pt.SupervisedFineTuneRequest(
        job_uuid="j", training_config=pt.TrainingConfig(n_epochs=1), hyperparam_search_config={}, logger_config={}
    )
    assert (minimal.model, minimal.checkpoint_dir, minimal.algorithm_config) == (None, None, None)
    tc = minimal.training_config
    assert (tc.max_steps_per_epoch, tc.gradient_accumulation_steps, tc.max_validation_steps) == (1, 1, 1)
    assert (tc.data_config, tc.optimizer_config, tc.efficiency_config, tc.dtype) == (None, None, None, "bf16")
    assert pt.EfficiencyConfig().model_dump() == {
        "enable_activation_checkpointing": False,
        "enable_activation_offloading": False,
        "memory_efficient_fsdp_wrap": False,
        "fsdp_cpu_offload": False,
    }
    assert pt.DPOAlignmentConfig(beta=0.1).loss_type is pt.DPOLossType.sigmoid
    status = pt.PostTrainingJobStatusResponse(job_uuid="j", status="scheduled")
    assert status.checkpoints == [] and status.scheduled_at is None and status.resources_allocated is None
    assert pt.PostTrainingJobArtifactsResponse(job_uuid="j").checkpoints == []
    assert [s.value for s in pt.JobStatus] == ["completed", "in_progress", "failed", "scheduled", "cancelled"]
    assert [t.value for t in pt.DPOLossType] == ["sigmoid", "hinge", "ipo", "kto_pair"]
    assert [t.value for t in pt.OptimizerType] == ["adam", "adamw", "sgd"]


def test_algorithm_config_is_discriminated_on_type():
    adapter = TypeAdapter(pt.AlgorithmConfig)
    qat = adapter.validate_python({"type": "QAT", "quantizer_name": "int8", "group_size": 32})
    assert isinstance(qat, pt.QATFinetuningConfig)
    with pytest.raises(ValidationError) as e:
        adapter.validate_python({"type": "Full", "rank": 8})
    assert e.value.errors()[0]["type"] == "union_tag_invalid"
    with pytest.raises(ValidationError) as e:
        adapter.validate_python({"rank": 8})
    assert e.value.errors()[0]["type"] == "union_tag_not_found"


def test_missing_required_fields_are_named():
    body = {k: v for k, v in SFT_BODY.items() if k not in ("job_uuid", "logger_config")}
    with pytest.raises(ValidationError) as e:
        pt.SupervisedFineTuneRequest.model_validate(body)
    assert _missing(e.value) == {("job_uuid",), ("logger_config",)}

    body = {**SFT_BODY, "training_config": {**SFT_BODY["training_config"], "data_config": {"batch_size": 4}}}
    with pytest.raises(ValidationError) as e:
        pt.SupervisedFineTuneRequest.model_validate(body)
    assert _missing(e.value) == {
        ("training_config", "data_config", "dataset_id"),
        ("training_config", "data_config", "shuffle"),
        ("training_config", "data_config", "data_format"),
    }

    body = {**SFT_BODY, "algorithm_config": {"type": "LoRA", "rank": 8}}
    with pytest.raises(ValidationError) as e:
        pt.SupervisedFineTuneRequest.model_validate(body)
    assert _missing(e.value) == {
        ("algorithm_config", "LoRA", "lora_attn_modules"),
        ("algorithm_config", "LoRA", "apply_lora_to_mlp"),
        ("algorithm_config", "LoRA", "apply_lora_to_output"),
        ("algorithm_config", "LoRA", "alpha"),
    }

    with pytest.raises(ValidationError) as e:
        pt.PreferenceOptimizeRequest.model_validate({"job_uuid": "j", "training_config": {"n_epochs": 1}})
    assert _missing(e.value) == {
        ("finetuned_model",),
        ("algorithm_config",),
        ("hyperparam_search_config",),
        ("logger_config",),
    }


# ---------------------------------------------------------------------------- routes


def test_router_exposes_the_0_6_routes(fake):
    router = pt.create_router(fake)
    pairs = sorted((m, r.path) for r in router.routes if isinstance(r, APIRoute) for m in r.methods)
    assert pairs == EXPECTED_ROUTES


def test_router_can_be_built_without_an_impl():
    # the stack builds routers with impl=None to list routes (llama_stack/core/admin.py)
    assert len([r for r in pt.create_router(None).routes if isinstance(r, APIRoute)]) == len(EXPECTED_ROUTES)


def test_supervised_fine_tune_round_trip(client, fake):
    r = client.post("/v1alpha/post-training/supervised-fine-tune", json=SFT_BODY)
    assert r.status_code == 200, r.text
    assert r.json() == {"job_uuid": "job-1"}
    name, request = fake.calls[-1]
    assert name == "supervised_fine_tune"
    assert isinstance(request, pt.SupervisedFineTuneRequest)
    assert request.training_config.data_config.dataset_id == "my-sft-set"


def test_supervised_fine_tune_missing_field_is_422(client, fake):
    body = {k: v for k, v in SFT_BODY.items() if k != "training_config"}
    r = client.post("/v1alpha/post-training/supervised-fine-tune", json=body)
    assert r.status_code == 422
    assert any(err["loc"][-1] == "training_config" for err in r.json()["detail"])
    assert fake.calls == []


def test_status_round_trip_has_the_response_shape(client, fake):
    r = client.get("/v1alpha/post-training/jobs/job-7/status")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == set(pt.PostTrainingJobStatusResponse.model_fields)
    assert body["job_uuid"] == "job-7" and body["status"] == "in_progress"
    assert body["completed_at"] is None
    assert set(body["checkpoints"][0]) == set(pt.Checkpoint.model_fields)
    assert set(body["checkpoints"][0]["training_metrics"]) == {"epoch", "train_loss", "validation_loss", "perplexity"}
    assert pt.PostTrainingJobStatusResponse.model_validate(body).started_at == T0
    assert fake.calls[-1] == ("get_training_job_status", pt.GetTrainingJobStatusRequest(job_uuid="job-7"))


def test_other_routes_reach_the_impl(client, fake):
    assert client.get("/v1alpha/post-training/jobs").json() == {"data": [{"job_uuid": "job-1"}]}

    r = client.get("/v1alpha/post-training/jobs/job-2/artifacts")
    assert r.status_code == 200 and r.json()["job_uuid"] == "job-2" and len(r.json()["checkpoints"]) == 1

    r = client.post("/v1alpha/post-training/jobs/job-3/cancel")
    assert r.status_code == 200 and r.json() is None
    assert fake.calls[-1] == ("cancel_training_job", pt.CancelTrainingJobRequest(job_uuid="job-3"))

    dpo = {
        "job_uuid": "job-4",
        "finetuned_model": "scalarlm/SmolLM2-135M-Instruct",
        "algorithm_config": {"beta": 0.1},
        "training_config": {"n_epochs": 1},
        "hyperparam_search_config": {},
        "logger_config": {},
    }
    r = client.post("/v1alpha/post-training/preference-optimize", json=dpo)
    assert r.status_code == 200 and r.json() == {"job_uuid": "job-4"}
    assert fake.calls[-1][1].algorithm_config.loss_type is pt.DPOLossType.sigmoid


def test_older_query_and_body_forms(client, fake):
    r = client.get("/v1alpha/post-training/job/status", params={"job_uuid": "job-5"})
    assert r.status_code == 200 and r.json()["job_uuid"] == "job-5"

    r = client.get("/v1alpha/post-training/job/artifacts", params={"job_uuid": "job-5"})
    assert r.status_code == 200 and r.json()["job_uuid"] == "job-5"

    r = client.post("/v1alpha/post-training/job/cancel", json={"job_uuid": "job-5"})
    assert r.status_code == 200
    assert fake.calls[-1] == ("cancel_training_job", pt.CancelTrainingJobRequest(job_uuid="job-5"))

    r = client.post("/v1alpha/post-training/job/cancel", params={"job_uuid": "job-6"})
    assert r.status_code == 200
    assert fake.calls[-1] == ("cancel_training_job", pt.CancelTrainingJobRequest(job_uuid="job-6"))

    n = len(fake.calls)
    assert client.get("/v1alpha/post-training/job/status").status_code == 422
    assert client.post("/v1alpha/post-training/job/cancel").status_code == 400
    assert len(fake.calls) == n


# ---------------------------------------------------------------------------- stack wiring


def test_available_providers_and_protocol(fake):
    from llama_stack_api import Api, InlineProviderSpec

    from llama_stack_scalarlm.providers.post_training.provider import get_provider_spec

    assert pt.available_providers() == []  # the run config's `module:` entry declares the provider
    spec = get_provider_spec()
    assert isinstance(spec, InlineProviderSpec)
    assert spec.api == Api("post_training") and spec.api.value == "post_training"
    assert spec.api is Api.add("post_training")  # idempotent, as the stack's loader calls it again
    assert spec.provider_type == "inline::scalarlm"
    assert spec.module == "llama_stack_scalarlm.providers.post_training"
    assert spec.config_class == "llama_stack_scalarlm.providers.post_training.config.ScalarLMConfig"
    assert spec.api_dependencies == [Api.datasetio]
    assert isinstance(fake, pt.PostTraining)
