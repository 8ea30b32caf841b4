"""grpo.backend trl: TRL's GRPOTrainer with our tasks, prompts, rewards, optimizer and run directory."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

from esgrpo.cli import main  # noqa: E402
from esgrpo.config import GRPOConfig  # noqa: E402
from esgrpo.errors import ConfigError  # noqa: E402
from esgrpo.rollout import response_logprobs  # noqa: E402
from esgrpo.train.grpo import grpo_loss  # noqa: E402
from esgrpo.train.grpo_trl import FIELD_MAP, _leave_process_group, trl_arguments  # noqa: E402


def test_every_grpo_field_has_a_documented_trl_counterpart_or_refusal():
    assert set(FIELD_MAP) == {f.name for f in dataclasses.fields(GRPOConfig)}


def test_field_map_values(tmp_path):
    cfg = GRPOConfig(prompts_per_step=4, group_size=8, micro_batch_size=16, lr=3e-4, clip_eps=0.3, beta=0.05,
                     loss_type="dr_grpo", temperature=0.7, top_p=0.9, max_new_tokens=40, steps=12, seed=5)
    a = trl_arguments(cfg, tmp_path, planned_steps=12)
    assert (a["num_generations"], a["generation_batch_size"], a["per_device_train_batch_size"],
            a["gradient_accumulation_steps"]) == (8, 32, 16, 2)
    assert (a["learning_rate"], a["epsilon"], a["epsilon_high"], a["beta"], a["loss_type"], a["scale_rewards"]) == \
        (3e-4, 0.3, 0.3, 0.05, "dr_grpo", "none")
    assert (a["temperature"], a["top_p"], a["top_k"], a["max_completion_length"], a["max_steps"], a["seed"]) == \
        (0.7, 0.9, 0, 40, 12, 5)
    assert a["use_bias_correction_kl"] is False and a["weight_decay"] == 0.0
    assert trl_arguments(GRPOConfig(), tmp_path, 1)["scale_rewards"] == "group"
    assert trl_arguments(GRPOConfig(micro_batch_size=8), tmp_path, 1, world=2)["gradient_accumulation_steps"] == 4
    assert trl_arguments(GRPOConfig(), tmp_path, 1)["gradient_checkpointing"] is False
    assert trl_arguments(GRPOConfig(gradient_checkpointing=True), tmp_path, 1)["gradient_checkpointing"] is True


@pytest.mark.parametrize("change, stop, key", [
    ({"gen_batch_size": 32}, False, "grpo.gen_batch_size"),
    ({}, True, "prompt.stop"),
    ({"micro_batch_size": 5}, False, "grpo.micro_batch_size"),
    ({"shared_prompt": True}, False, "grpo.shared_prompt"),
])
def test_a_setting_trl_cannot_honour_is_refused_by_name(tmp_path, change, stop, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        trl_arguments(GRPOConfig(**change), tmp_path, 1, stop=stop)


def _trl_trainer(policy, cfg, tmp_path):
    import datasets
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    def zero(prompts, completions, **columns):
        return [0.0] * len(completions)

    return GRPOTrainer(model=policy.model, processing_class=policy.tokenizer, reward_funcs=[zero],
                       args=TRLConfig(**trl_arguments(cfg, tmp_path, 1)),
                       train_dataset=datasets.Dataset.from_dict({"prompt": ["a", "b"]}))


@pytest.mark.parametrize("loss_type, beta", [("grpo", 0.0), ("dr_grpo", 0.0), ("grpo", 0.04), ("dr_grpo", 0.04)])
def test_native_loss_equals_trls_on_one_fixed_batch(micro_policy, tmp_path, loss_type, beta):
    """Same weights, prompts, responses, advantages and old log-probs (off-policy, so the clip binds):
    TRL's loss and gradient equal ours to 1e-6."""
    policy = micro_policy
    policy.model.save_pretrained(tmp_path / "base")  # with beta > 0 TRL loads its reference from the model's path
    policy.model.config._name_or_path = str(tmp_path / "base")
    T = 6
    cfg = GRPOConfig(loss_type=loss_type, beta=beta, prompts_per_step=2, group_size=4, micro_batch_size=8,
                     max_new_tokens=T, temperature=0.7, clip_eps=0.2)
    trainer = _trl_trainer(policy, cfg, tmp_path)
    trainer.current_gradient_accumulation_steps = 1
    g = torch.Generator().manual_seed(0)
    vocab = policy.model.config.vocab_size
    prompts = torch.randint(5, vocab, (8, 5), generator=g)  # equal lengths: no prompt padding
    lengths = [6, 3, 1, 6, 4, 2, 5, 6]
    responses = [torch.randint(5, vocab, (n,), generator=g).tolist() for n in lengths]
    advantages = torch.randn(8, generator=g)

    with torch.no_grad():
        logp0, mask = response_logprobs(policy.model, prompts.tolist(), responses, policy.pad_id, cfg.temperature)
    old = logp0 + 0.3 * torch.sin(torch.arange(logp0.numel(), dtype=torch.float32)).view_as(logp0)  # rho != 1
    ref = logp0 - 0.2 * torch.cos(torch.arange(logp0.numel(), dtype=torch.float32)).view_as(logp0)

    policy.model.train()
    policy.model.zero_grad()
    logp, mask = response_logprobs(policy.model, prompts.tolist(), responses, policy.pad_id, cfg.temperature)
    ours, stats = grpo_loss(logp, old, advantages, mask, cfg.clip_eps, loss_type, T,
                            logp_ref=ref if beta else None, beta=beta)
    ours.backward()
    grads_ours = [p.grad.clone() for p in policy.model.parameters()]
    assert stats["clipped"] > 0  # the comparison covers the clipped branch

    policy.model.zero_grad()
    completion = torch.full((8, T), policy.pad_id)
    for i, r in enumerate(responses):
        completion[i, :len(r)] = torch.tensor(r)
    inputs = {"prompt_ids": prompts, "prompt_mask": torch.ones_like(prompts), "completion_ids": completion,
              "completion_mask": mask.long(), "advantages": advantages, "old_per_token_logps": old,
              "num_items_in_batch": mask.sum()}
    if beta:
        inputs["ref_per_token_logps"] = ref
    theirs = trainer._compute_loss(policy.model, inputs)
    theirs.backward()
    assert abs(float(ours.detach()) - float(theirs.detach())) <= 1e-6
    for a, b in zip(grads_ours, (p.grad for p in policy.model.parameters()), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


BASE = ["train", "grpo", "--task", "boolq", "--grpo.backend", "trl", "--grpo.prompts_per_step", "4",
        "--grpo.group_size", "4", "--grpo.micro_batch_size", "8", "--data.n_train", "32", "--data.n_test", "10",
        "--grpo.checkpoint_every", "1", "--grpo.lr_schedule", "constant", "--grpo.lr", "1e-3",
        "--model.threads", "1"]
SHARED_METRICS = {"trainer", "step", "reward_mean", "reward_std", "reward_min", "reward_max", "frac_zero_adv",
                  "reward_errors", "loss", "grad_norm", "update_norm", "lr", "kl", "clip_frac", "response_len",
                  "finished_frac", "rollouts", "tokens", "seconds", "t_measure", "step_seconds"}


def _final_weights(run):
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / "final" / "model.safetensors"))


@pytest.mark.slow
def test_trl_run_directory_is_the_native_one_and_extending_it_is_bit_exact(tmp_path):
    """The same metrics names, budget fields and checkpoints as a native run; TensorBoard gets the rows; a
    finished run extended with --resume ends with the weights of an uninterrupted longer run."""
    main([*BASE, "--grpo.backend", "native", "--grpo.steps", "2", "--out", str(tmp_path / "native")])
    main([*BASE, "--grpo.steps", "4", "--out", str(tmp_path / "long"), "--report_to", "tensorboard"])
    main([*BASE, "--grpo.steps", "2", "--out", str(tmp_path / "ext")])
    main([*BASE, "--grpo.steps", "4", "--out", str(tmp_path / "ext"), "--resume"])

    rows = [json.loads(line) for line in (tmp_path / "long" / "metrics.jsonl").read_text().splitlines()]
    native = [json.loads(line) for line in (tmp_path / "native" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and [r["rollouts"] for r in rows] == [16, 32, 48, 64]
    assert set(rows[0]) >= SHARED_METRICS and set(native[0]) >= SHARED_METRICS
    assert rows[0]["kl"] == 0.0 and rows[-1]["kl"] > 0  # measured on the samples, with the weights that drew them
    assert all(r["lr"] == 1e-3 for r in rows)
    res = json.loads((tmp_path / "long" / "results.json").read_text())
    res_native = json.loads((tmp_path / "native" / "results.json").read_text())
    assert set(res_native) - {"backend"} <= set(res) and res["backend"] == "trl"
    assert res["tokens"] == rows[-1]["tokens"] > 0 and res["measure_memory_bytes"] > 0
    # checkpoint_every 1, checkpoint_keep 2 (the default): the two newest periodic checkpoints and final
    assert {p.name for p in (tmp_path / "long" / "checkpoints").iterdir()} == {"final", "step-000003", "step-000004"}
    assert (tmp_path / "long" / "checkpoints" / "final" / "optimizer.pt").exists()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "long" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("grpo/reward_mean")] == [1, 2, 3, 4]

    long_w, ext_w = _final_weights(tmp_path / "long"), _final_weights(tmp_path / "ext")
    assert all(torch.equal(long_w[k], ext_w[k]) for k in long_w)
    ext_rows = [json.loads(line) for line in (tmp_path / "ext" / "metrics.jsonl").read_text().splitlines()]
    assert [r["reward_mean"] for r in ext_rows] == [r["reward_mean"] for r in rows]


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_trl_run(tmp_path):
    for name in ("a", "b"):
        main([*BASE, "--grpo.steps", "2", "--grpo.checkpoint_every", "0", "--out", str(tmp_path / name)])
    a, b = _final_weights(tmp_path / "a"), _final_weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_cpu_processes_through_accelerate_launch(tmp_path):
    """accelerate launch, 2 processes on CPU (gloo): the main process keeps the run directory, each step's
    rewards and tokens are gathered from both, and TRL's checkpoint holds both processes' RNG states."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    bin_dir = Path(sys.executable).parent
    out = tmp_path / "run"
    cmd = [str(bin_dir / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(bin_dir / "esgrpo"), "train",
           *BASE[1:], "--grpo.micro_batch_size", "4", "--grpo.steps", "2", "--grpo.checkpoint_every", "2",
           "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["processes"] == 2 and res["steps"] == 2 and res["rollouts"] == 32
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["tokens"] == round(rows[0]["response_len"] * 16)  # 16 responses per step, from both processes
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in (out / "trl" / "checkpoint-2").iterdir()}
    from safetensors.torch import load_file

    from esgrpo.models.tiny import SHIPPED

    base = load_file(str(SHIPPED / "model.safetensors"))
    final = _final_weights(out)
    assert base.keys() == final.keys() and any(not torch.equal(base[k], final[k]) for k in base)
    assert json.loads((out / "eval.json").read_text())["final"]["boolq"]["n"] == 10


@pytest.mark.slow
def test_the_study_runs_unchanged_with_the_trl_backend(tmp_path):
    """Table 1, the analyses, the sequence (each GRPO stage starts from the previous stage's AdamW moments)
    and the report, with GRPO through TRL."""
    from esgrpo.config import (
        AnalysisConfig,
        DataConfig,
        ESConfig,
        GenerationConfig,
        ModelConfig,
        StudyConfig,
        TinyModelConfig,
    )
    from esgrpo.study import run_study

    cfg = StudyConfig(
        model=ModelConfig(name="tiny", cache_dir=str(tmp_path / "cache")), tiny=TinyModelConfig(),
        data=DataConfig(tasks=["math", "boolq"], n_train=12, n_test=8),
        generation=GenerationConfig(max_new_tokens=24, batch_size=16),
        es=ESConfig(population=2, sigma=0.02, alpha=0.02, iterations=1, batch_size=4, max_new_tokens=16),
        grpo=GRPOConfig(backend="trl", steps=2, prompts_per_step=3, group_size=4, micro_batch_size=4,
                        max_new_tokens=16, lr=1e-3),
        es_long_factor=2, extra_models=[], out=str(tmp_path / "study"),
        analysis=AnalysisConfig(n_examples=4, alphas=2, probe_points=2, probe_n_examples=4, kl_prompts=2,
                                kl_samples=1, kl_max_new_tokens=8, heldout_docs=10))
    run_study(cfg)
    root = tmp_path / "study"
    assert json.loads((root / "runs" / "math-grpo" / "results.json").read_text())["backend"] == "trl"
    stage2 = json.loads((root / "sequence" / "runs" / "grpo" / "stage-2-boolq" / "results.json").read_text())
    assert stage2["backend"] == "trl" and stage2["steps"] == 2
    md = (root / "report.md").read_text()
    assert "| math |" in md and "## Sequential" in md


def _join_and_leave(rank: int, port: int, out: str) -> None:
    """One process of a two-process gloo job, as accelerate launch starts it (WORLD_SIZE, RANK set)."""
    import torch.distributed as dist

    os.environ.update(WORLD_SIZE="2", RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    _leave_process_group()
    Path(out, f"rank{rank}").write_text(str(dist.is_initialized()))


def test_every_process_leaves_the_process_group_after_training(tmp_path):
    """After training each process of a multi-process job leaves the group (a process that exits with it
    alive can abort in its communication threads' destructors and fail a finished launch)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_join_and_leave, args=(port, str(tmp_path)), nprocs=2)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["False", "False"]
