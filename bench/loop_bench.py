"""One round of the flywheel on examples/addition.py, through the platform against in-process.

Subject: ``flywheel.run_loop`` for one round through `llama stack run` (samples through the bulk
route and the engine worker's vLLM, a LoRA job sbatched to SLURM, the checkpoint picked up hot,
held-out answers through the queue), its time split into generate / train / serve / evaluate.
Baseline, in this process: the same round with transformers and peft alone, no serving (the issue's
in-process figure): sample the same number of completions per prompt at the same temperature, keep
the rewarded ones, SFT a LoRA adapter of the same rank on them for the same epochs, batch size and
learning rate, and answer the held-out prompts greedily. Each pair seeds its round differently, so
every platform round trains a new job. Held-out reward before and after is reported for both.

Starts its own `llama stack run` (one worker on the model) and, unless ``--slurm-state`` names a
running cluster's state root, its own SLURM cluster (slurm/cluster.sh).
"""

from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness  # noqa: E402
from llama_stack_scalarlm.client import ScalarLMClient  # noqa: E402
from llama_stack_scalarlm.config import ScalarLMConfig  # noqa: E402
from llama_stack_scalarlm.flywheel import LoopSettings, load_task, run_loop  # noqa: E402
from llama_stack_scalarlm.models.builtin import ensure_model  # noqa: E402
from llama_stack_scalarlm.models.store import ModelStore  # noqa: E402
from tests.stack import ROOT  # noqa: E402


class InProcess:
    """The round with transformers and peft in this process (the model loaded once)."""

    def __init__(self, model_dir: Path, settings: LoopSettings):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.settings = settings
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        self.model_dir = model_dir
        self.base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    def _prompt(self, prompt: str) -> str:
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                  tokenize=False)

    def generate(self, model, prompts: list[str], n: int, temperature: float) -> list[list[str]]:
        batch = self.tokenizer([self._prompt(p) for p in prompts], return_tensors="pt", padding=True,
                               add_special_tokens=False)
        sampling = dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0) if temperature else dict(do_sample=False)
        with self.torch.no_grad():
            out = model.generate(**batch, max_new_tokens=self.settings.max_tokens, num_return_sequences=n,
                                 pad_token_id=self.tokenizer.pad_token_id, **sampling)
        texts = self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]

    def evaluate(self, model, heldout: list[str], reward) -> float:
        answers = [group[0] for group in self.generate(model, heldout, 1, 0.0)]
        return sum(reward(p, a) for p, a in zip(heldout, answers, strict=True)) / len(heldout)

    def train(self, rows: list[tuple[str, str]], seed: int):
        """LoRA SFT on (prompt, completion) rows, the loss on the completion and its end of turn."""
        from peft import LoraConfig, get_peft_model

        torch, s = self.torch, self.settings
        torch.manual_seed(seed)
        model = get_peft_model(self.base, LoraConfig(r=s.lora_rank, lora_alpha=2 * s.lora_rank, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.learning_rate)
        examples = []
        for prompt, completion in rows:
            head = self.tokenizer(self._prompt(prompt), add_special_tokens=False)["input_ids"]
            tail = self.tokenizer(completion + self.tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            examples.append((head + tail, [-100] * len(head) + tail))
        steps = max(1, math.ceil(len(examples) * s.epochs / s.batch_size))
        order = random.Random(seed)
        model.train()
        for _ in range(steps):
            batch = order.sample(examples, min(s.batch_size, len(examples)))
            width = max(len(ids) for ids, _ in batch)
            pad = self.tokenizer.pad_token_id
            ids = torch.tensor([[pad] * (width - len(i)) + i for i, _ in batch])
            labels = torch.tensor([[-100] * (width - len(lab)) + lab for _, lab in batch])
            mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(i) for i, _ in batch])[:, None]).long()
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        return model

    def round(self, task, seed: int) -> dict:
        s = self.settings
        prompts, heldout = task.prompts(1), task.heldout()
        self.torch.manual_seed(seed)
        started = time.monotonic()
        groups = self.generate(self.base, prompts, s.samples, s.temperature)
        generate_s = time.monotonic() - started
        rows = sorted({(p, t.strip()) for p, texts in zip(prompts, groups, strict=True) for t in texts
                       if task.reward(p, t) > 0 and t.strip()})
        started = time.monotonic()
        model = self.train(rows, seed)
        train_s = time.monotonic() - started
        started = time.monotonic()
        after = self.evaluate(model, heldout, task.reward)
        evaluate_s = time.monotonic() - started
        self.base = model.unload()  # the base weights, the adapter dropped, for the next pair
        return {"round_s": generate_s + train_s + evaluate_s, "generate_s": generate_s, "train_s": train_s,
                "serve_s": 0.0, "evaluate_s": evaluate_s, "rows": len(rows), "heldout": after}


def platform_round(client: ScalarLMClient, model: str, task, settings: LoopSettings, out: Path) -> dict:
    first, record = run_loop(client, model, task.prompts, task.heldout(), task.reward, settings, out, progress=False)
    phases = {k: getattr(record, k) for k in ("generate_s", "train_s", "serve_s", "evaluate_s")}
    return {"round_s": sum(phases.values()), **phases, "rows": record.train_rows, "heldout": record.heldout_reward,
            "before": first.heldout_reward}


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--task", type=Path, default=ROOT / "examples" / "addition.py")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--slurm-state", type=Path, help="state root of a running SLURM cluster to use")
    args = harness.parse(parser, smoke={"model": "tiny-llama", "samples": 2})
    task = load_task(args.task)
    if args.smoke:  # the tiny model knows no sums: a reward it can earn, so that a round has rows to train on
        task.reward = lambda prompt, completion: float(bool(completion.strip()))
    settings = LoopSettings(rounds=1, samples=args.samples, learning_rate=args.lr, max_tokens=16)
    report = harness.Report("loop_bench", args, variant=args.model)
    with harness.served(args.slurm_state, timeout_s=900, served_models=[args.model]) as server:
        state = server.state_dir
        client = ScalarLMClient(server.url, api_key=server.token, timeout_s=600)
        config = ScalarLMConfig.load({"state_dir": str(state)})
        baseline = InProcess(ensure_model(ModelStore(config.models_dir), args.model), settings)
        before = baseline.evaluate(baseline.base, task.heldout(), task.reward)
        seeds = iter(range(args.pairs * 2))

        def subject() -> dict:
            seed = next(seeds)
            return platform_round(client, args.model, task, settings.model_copy(update={"seed": seed}),
                                  state / f"loop-{seed}")

        measured = harness.pairs(lambda: baseline.round(task, next(seeds)), subject, args.pairs)
    report.compare("one round: platform / in-process, s", "s", [(b["round_s"], s["round_s"]) for b, s in measured],
                   subject="run_loop through the distribution", baseline="transformers + peft in-process")
    for phase in ("generate_s", "train_s", "serve_s", "evaluate_s"):
        report.value(f"  platform {phase.removesuffix('_s')}", "s", [s[phase] for _, s in measured])
        report.value(f"  in-process {phase.removesuffix('_s')}", "s", [b[phase] for b, _ in measured])
    report.value("held-out reward before (platform, greedy)", "fraction", [s["before"] for _, s in measured])
    report.value("held-out reward before (in-process, greedy)", "fraction", [before])
    report.value("held-out reward after one round: platform", "fraction", [s["heldout"] for _, s in measured])
    report.value("held-out reward after one round: in-process", "fraction", [b["heldout"] for b, _ in measured])
    report.value("rows trained on: platform", "rows", [s["rows"] for _, s in measured])
    report.value("rows trained on: in-process", "rows", [b["rows"] for b, _ in measured])
    report.finish()


if __name__ == "__main__":
    main()
