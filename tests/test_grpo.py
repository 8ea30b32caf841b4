"""GRPO: loss and advantages against hand computations, gradient accumulation, and the training loop
(every parameter moves, budget accounting, exact resume, KL tracking, float32 masters for bf16)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from conftest import make_micro_policy
from esgrpo.config import from_dict
from esgrpo.errors import ConfigError
from esgrpo.runs import RunDir
from esgrpo.tasks.base import Example, Task
from esgrpo.train.grpo import (
    GRPOConfig,
    _shared_prompts,
    accumulate_gradients,
    group_advantages,
    grpo_loss,
    micro_batches,
    recomputed_layers,
    train_grpo,
)

# ----------------------------------------------------------------------------------------------
# Hand-checked pieces

# Two groups (3 + 2 responses), T = 4, lengths 3, 1, 4, 2, 0 (the last response is empty).
LENGTHS = [3, 1, 4, 2, 0]
LOGP = [[-1.0, -0.5, -2.0, 0.0], [-0.3, 0.0, 0.0, 0.0], [-1.2, -0.1, -0.7, -0.4], [-2.0, -0.9, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0]]
# Old log-probs differ so that some ratios leave [0.8, 1.2]: exp(0.5) = 1.65, exp(-0.4) = 0.67, ...
LOGP_OLD = [[-1.5, -0.5, -1.6, 0.0], [-0.35, 0.0, 0.0, 0.0], [-1.2, -0.6, -0.3, -0.45],
            [-1.7, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
LOGP_REF = [[-1.1, -0.4, -2.5, 0.0], [-0.2, 0.0, 0.0, 0.0], [-1.0, -0.3, -0.7, -0.9], [-2.2, -0.6, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0]]
ADV = [1.2, -0.6, -0.6, 0.7, -0.7]
EPS = 0.2
MAX_NEW = 6


def hand_loss(loss_type: str, beta: float, n: int | None = None) -> tuple[float, int]:
    """Plain-Python loop version of the loss, and the number of clipped tokens."""
    per_resp, total, clipped = [], 0.0, 0
    for i, length in enumerate(LENGTHS):
        s = 0.0
        for t in range(length):
            rho = math.exp(LOGP[i][t] - LOGP_OLD[i][t])
            a = ADV[i]
            tok = -min(rho * a, min(max(rho, 1 - EPS), 1 + EPS) * a)
            clipped += (rho > 1 + EPS and a > 0) or (rho < 1 - EPS and a < 0)
            q = LOGP_REF[i][t] - LOGP[i][t]
            tok += beta * (math.exp(q) - q - 1)
            s += tok
        per_resp.append(s / max(length, 1))
        total += s
    n = n or len(LENGTHS)
    return (sum(per_resp) / n if loss_type == "grpo" else total / (n * MAX_NEW)), clipped


def toy_tensors():
    mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(4)] for n in LENGTHS])
    logp = torch.tensor(LOGP)
    logp[4, :] = float("nan")  # padding may hold anything: it must not leak into the loss
    return logp, torch.tensor(LOGP_OLD), torch.tensor(ADV), mask, torch.tensor(LOGP_REF)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_loss_matches_hand_computation(loss_type, beta):
    logp, old, adv, mask, ref = toy_tensors()
    loss, stats = grpo_loss(logp, old, adv, mask, EPS, loss_type, MAX_NEW, logp_ref=ref, beta=beta)
    want, clipped = hand_loss(loss_type, beta)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert clipped > 0 and stats["clipped"] == clipped  # the toy batch does exercise the clip
    assert stats["tokens"] == sum(LENGTHS)
    # A larger normaliser (this batch as one micro-batch of a 12-response step) scales the loss.
    loss12, _ = grpo_loss(logp, old, adv, mask, EPS, loss_type, MAX_NEW, logp_ref=ref, beta=beta,
                          num_responses=12)
    assert loss12.item() == pytest.approx(hand_loss(loss_type, beta, n=12)[0], rel=1e-5)


def test_loss_ignores_padding_garbage_and_empty_responses():
    logp, old, adv, mask, _ = toy_tensors()
    dirty = logp.clone()
    dirty[mask == 0] = float("inf")
    a, _ = grpo_loss(logp, old, adv, mask, EPS, "grpo", MAX_NEW)
    b, _ = grpo_loss(dirty, old, adv, mask, EPS, "grpo", MAX_NEW)
    assert torch.isfinite(b) and a.item() == b.item()
    empty, stats = grpo_loss(torch.zeros(2, 1), torch.zeros(2, 1), torch.ones(2), torch.zeros(2, 1), EPS,
                             "dr_grpo", MAX_NEW)
    assert empty.item() == 0.0 and stats["tokens"] == 0


def test_loss_gradient_on_policy_is_minus_advantage():
    """mu = 1: logp_old = logp.detach(), rho = 1, and d loss / d logp = -A / (n * len) for grpo."""
    logp = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, stats = grpo_loss(logp, logp.detach(), torch.tensor([2.0, -1.0]), mask, EPS, "grpo", 4)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.5, -0.5], [0.5, 0.0]]))
    assert stats["clipped"] == 0


def test_beta_needs_reference():
    logp, old, adv, mask, _ = toy_tensors()
    with pytest.raises(ValueError, match="logp_ref"):
        grpo_loss(logp, old, adv, mask, EPS, "grpo", MAX_NEW, beta=0.1)


def test_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.1])
    sd = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)  # sample std (Bessel) of [1, 0, 0]
    want = [(2 / 3) / sd, -(1 / 3) / sd, -(1 / 3) / sd, 0, 0, 0, 0, 0, 0]
    assert torch.allclose(group_advantages(r, 3), torch.tensor(want), atol=1e-6)
    # Zero-variance groups are exactly 0, also when float round-off makes r - mean tiny but non-zero.
    assert group_advantages(r, 3)[3:].abs().max().item() == 0.0
    dr = group_advantages(r, 3, scale=False)
    assert torch.allclose(dr, torch.tensor([2 / 3, -1 / 3, -1 / 3, 0, 0, 0, 0, 0, 0]), atol=1e-6)
    pair = group_advantages(torch.tensor([1.0, 0.0]), 2)  # std of [1, 0] = sqrt(0.5)
    assert torch.allclose(pair, torch.tensor([math.sqrt(0.5), -math.sqrt(0.5)]), atol=1e-6)


def test_config_needs_a_budget():
    with pytest.raises(ConfigError, match="budget"):
        from_dict(GRPOConfig, {"steps": 0, "max_rollouts": 0})
    with pytest.raises(ConfigError, match="group_size"):
        from_dict(GRPOConfig, {"group_size": 1})


# ----------------------------------------------------------------------------------------------
# Gradient accumulation


@pytest.mark.parametrize("loss_type,beta", [("grpo", 0.0), ("grpo", 0.5), ("dr_grpo", 0.0)])
def test_gradient_accumulation_is_invisible(loss_type, beta):
    policy = make_micro_policy()
    ref = copy.deepcopy(policy.model)
    with torch.no_grad():  # a reference that differs, so the KL term has a gradient
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    questions = ("Is the sky blue?", "Compute 7+5*3.")
    prompts = policy.encode([[{"role": "user", "content": q}] for q in questions])
    prompt_ids = [prompts[0]] * 3 + [prompts[1]] * 3
    response_ids = [[5, 6, 7], [8], [], [9, 10, 11, 12, 13], [14, 15], [16, 17, 18, 19]]
    adv = torch.tensor([1.0, -0.5, -0.5, 0.3, 0.0, -0.3])
    grads, losses = [], []
    for mbs in (1, 6):
        cfg = GRPOConfig(micro_batch_size=mbs, loss_type=loss_type, beta=beta, max_new_tokens=6)
        policy.model.zero_grad(set_to_none=True)
        out = accumulate_gradients(policy, prompt_ids, response_ids, adv, cfg, ref, track_kl=True)
        grads.append([p.grad.clone() for _, p in policy.named_parameters()])
        losses.append(out["loss"])
        assert out["kl"] > 0 and out["tokens"] == sum(len(r) for r in response_ids)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-7)
    for g1, g6 in zip(*grads, strict=True):
        assert torch.allclose(g1, g6, rtol=1e-4, atol=1e-7)
    assert any(g.abs().max() > 0 for g in grads[1])


# ----------------------------------------------------------------------------------------------
# The training loop on a micro policy


class FakeTask(Task):
    """Reward 1 when the response text has an even length: varies across samples of a random model."""

    name = "fake"
    system_prompt = "Say something."

    def __init__(self, fail_every: int = 0, interrupt_after: int = 0) -> None:
        self.calls, self.fail_every, self.interrupt_after = 0, fail_every, interrupt_after

    def reward(self, text: str, example: Example) -> float:
        self.calls += 1
        if self.interrupt_after and self.calls > self.interrupt_after:
            raise KeyboardInterrupt  # simulates a killed run mid-step
        if self.fail_every and self.calls % self.fail_every == 0:
            raise ValueError("broken reward")
        return float(len(text) % 2 == 0)

    def synthetic(self, split, n, seed):
        return [Example(f"{split}-{i}", f"Count to {i + seed}.", {}) for i in range(n)]

    def from_hub(self, split, n, path):
        raise NotImplementedError

    def demonstration(self, example, rng, kind):
        return ""


EXAMPLES = FakeTask().synthetic("train", 6, 1)


def small_cfg(**kw) -> GRPOConfig:
    base = {"steps": 1, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 8, "micro_batch_size": 4,
            "lr": 1e-2, "checkpoint_every": 0, "kl_every": 0, "seed": 3}
    return from_dict(GRPOConfig, {**base, **kw})


def weights(policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.named_parameters()}


def test_one_step_changes_every_parameter(tmp_path):
    policy = make_micro_policy()
    before = weights(policy)
    run = RunDir(tmp_path / "run")
    res = train_grpo(policy, FakeTask(), EXAMPLES, small_cfg(prompts_per_step=3), run)
    row = run.metrics()[0]
    assert row["frac_zero_adv"] < 1 and row["grad_norm"] > 0 and row["update_norm"] > 0
    unchanged = [n for n, p in policy.named_parameters() if torch.equal(p.detach(), before[n])]
    assert unchanged == []
    assert res["steps"] == 1 and (tmp_path / "run/checkpoints/final/trainer_state.json").exists()


def test_gradient_checkpointing_trains_to_the_same_weights(tmp_path):
    """Two steps with grpo.gradient_checkpointing end at the weights and rewards of two steps without it, bit for
    bit, and leave the model without checkpointing."""
    runs = {}
    for on in (False, True):
        policy = make_micro_policy()
        run = RunDir(tmp_path / f"gc-{on}")
        train_grpo(policy, FakeTask(), EXAMPLES, small_cfg(steps=2, gradient_checkpointing=on), run)
        runs[on] = (weights(policy), [(r["reward_mean"], r["loss"]) for r in run.metrics()])
        assert not any(getattr(m, "gradient_checkpointing", False) for m in policy.model.modules())
    assert runs[True][1] == runs[False][1]
    assert all(torch.equal(runs[True][0][n], w) for n, w in runs[False][0].items())


def test_budget_counters_and_stop_on_rollouts(tmp_path):
    run = RunDir(tmp_path / "a")
    res = train_grpo(make_micro_policy(), FakeTask(fail_every=5), EXAMPLES, small_cfg(steps=3, lr=1e-4), run)
    rows = run.metrics()
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert res["rollouts"] == 3 * 2 * 4 == rows[-1]["rollouts"]
    assert res["tokens"] == rows[-1]["tokens"] > 0 and res["seconds"] > 0 and res["peak_memory_bytes"] > 0
    assert sum(r["reward_errors"] for r in rows) == 24 // 5  # every 5th reward call raised
    assert rows[0]["lr"] == pytest.approx(1e-4) and rows[2]["lr"] == pytest.approx(1e-4 / 3)  # linear decay
    for key in ("reward_mean", "reward_std", "loss", "clip_frac", "kl", "t_generate", "t_reward",
                "t_backward", "t_step"):
        assert key in rows[0]
    for r in rows:  # each phase's peak lies within the run's
        assert all(0 <= r[f"mem_{ph}"] <= res["peak_memory_added_bytes"] for ph in ("generate", "backward", "step"))
    # max_rollouts 17 allows two steps of 8; a third would exceed it (a step is never split).
    run = RunDir(tmp_path / "b")
    res = train_grpo(make_micro_policy(), FakeTask(), EXAMPLES, small_cfg(steps=0, max_rollouts=17), run)
    assert res["steps"] == 2 and res["rollouts"] == 16 and len(run.metrics()) == 2


def test_resume_equals_uninterrupted(tmp_path):
    cfg = small_cfg(steps=4, lr=3e-3, checkpoint_every=2, kl_every=1)
    full = make_micro_policy()
    train_grpo(full, FakeTask(), EXAMPLES, cfg, RunDir(tmp_path / "full"))

    run = RunDir(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):  # killed during step 3, after the step-2 checkpoint
        train_grpo(make_micro_policy(), FakeTask(interrupt_after=2 * 8 + 3), EXAMPLES, cfg, run)
    assert [r["step"] for r in run.metrics()] == [1, 2]
    resumed = make_micro_policy()  # the base weights: the KL reference is copied from them
    res = train_grpo(resumed, FakeTask(), EXAMPLES, cfg, run, resume=True)
    assert res["steps"] == 4 and res["rollouts"] == 4 * 8
    # Every random choice derives from (seed, step) and the optimizer state is restored: bit-identical.
    for (n, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(a, b), n
    rows_full, rows_res = RunDir(tmp_path / "full").metrics(), run.metrics()
    assert [r["step"] for r in rows_res] == [1, 2, 3, 4]
    assert [r["kl"] for r in rows_res] == [r["kl"] for r in rows_full]
    # Resuming a finished run does nothing more.
    again = train_grpo(make_micro_policy(), FakeTask(), EXAMPLES, cfg, run, resume=True)
    assert again["steps"] == 4 and len(run.metrics()) == 4


def test_kl_zero_at_start_then_grows(tmp_path):
    run = RunDir(tmp_path / "run")
    train_grpo(make_micro_policy(), FakeTask(), EXAMPLES, small_cfg(steps=4, lr=5e-2, kl_every=1), run)
    kls = [r["kl"] for r in run.metrics()]
    assert kls[0] == pytest.approx(0.0, abs=1e-7)
    assert kls[-1] > 1e-3


def test_bf16_trains_through_float32_masters_and_resumes(tmp_path):
    """lr 1e-5 is below bf16 resolution: float32 masters carry the update, and a resume restores them."""
    cfg = small_cfg(steps=2, lr=1e-5, prompts_per_step=3, checkpoint_every=1)
    full = make_micro_policy(dtype=torch.bfloat16)
    before = {n: p.detach().float().clone() for n, p in full.named_parameters()}
    train_grpo(full, FakeTask(), EXAMPLES, cfg, RunDir(tmp_path / "full"))
    masters = torch.load(tmp_path / "full/checkpoints/final/master.pt")
    names = [n for n, _ in full.named_parameters()]
    assert all(m.dtype == torch.float32 for m in masters)
    assert all(not torch.equal(m, before[n]) for n, m in zip(names, masters, strict=True))  # all moved
    for (_, p), m in zip(full.named_parameters(), masters, strict=True):
        assert torch.equal(p.detach(), m.to(torch.bfloat16))  # the model holds the masters' rounding

    run = RunDir(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):  # killed in step 2, after the step-1 checkpoint
        train_grpo(make_micro_policy(dtype=torch.bfloat16), FakeTask(interrupt_after=12 + 1), EXAMPLES, cfg,
                   run)
    train_grpo(make_micro_policy(dtype=torch.bfloat16), FakeTask(), EXAMPLES, cfg, run, resume=True)
    resumed = torch.load(tmp_path / "resumed/checkpoints/final/master.pt")
    assert all(torch.equal(a, b) for a, b in zip(masters, resumed, strict=True))


def test_init_optimizer_carries_adam_moments_but_not_the_schedule(tmp_path):
    """A sequence's next stage can start from the previous stage's AdamW moments (keep_optimizer)."""
    a = make_micro_policy()
    train_grpo(a, FakeTask(), EXAMPLES, small_cfg(steps=2, lr=1e-3), RunDir(tmp_path / "a"))
    prev = tmp_path / "a/checkpoints/final/optimizer.pt"
    saved = torch.load(prev)
    b = make_micro_policy()
    train_grpo(b, FakeTask(), EXAMPLES, small_cfg(steps=1, lr=5e-4), RunDir(tmp_path / "b"), init_optimizer=prev)
    fresh = make_micro_policy()
    train_grpo(fresh, FakeTask(), EXAMPLES, small_cfg(steps=1, lr=5e-4), RunDir(tmp_path / "c"))
    carried, new = torch.load(tmp_path / "b/checkpoints/final/optimizer.pt"), torch.load(
        tmp_path / "c/checkpoints/final/optimizer.pt")
    k = next(iter(saved["state"]))
    assert float(carried["state"][k]["step"]) == float(saved["state"][k]["step"]) + 1 == 3
    assert float(new["state"][k]["step"]) == 1
    assert carried["param_groups"][0]["initial_lr"] == pytest.approx(5e-4)  # this run's schedule
    assert not torch.equal(carried["state"][k]["exp_avg_sq"], new["state"][k]["exp_avg_sq"])


def test_micro_batches_by_hand():
    prompts = [[1]] * 4 + [[2, 2, 2]] * 4  # two groups of 4, the second with the longer prompt
    responses = [[5], [5, 5], [], [5]] + [[5]] * 4
    # per response, similar lengths together: prompt + response lengths 2, 3, 1, 2, then 4 x 4 (a stable sort)
    assert micro_batches(prompts, responses, 3) == [[2, 0, 3], [1, 4, 5], [6, 7]]
    # shared prompts: whole groups (size 8 holds both; size 4 one each) ...
    assert micro_batches(prompts, responses, 8, group_size=4) == [[0, 1, 2, 3, 4, 5, 6, 7]]
    assert micro_batches(prompts, responses, 5, group_size=4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # ... or `size` responses of one group, never two prompts' responses in a chunk
    assert micro_batches(prompts, responses, 3, group_size=4) == [[3], [0, 1, 2], [4, 5, 6], [7]]
    assert _shared_prompts([[1], [1], [2], [2], [2], [1]]) == ([[1], [2], [1]], [2, 3, 1])


def _saved_bytes_and_grads(policy, on, prompt_ids, response_ids, adv, cfg):
    """accumulate_gradients with layer recomputation on or off: the bytes autograd kept (parameters aside) and
    the gradient."""
    params = {p.data_ptr() for p in policy.model.parameters()}
    saved = [0]

    def pack(t):
        if t.data_ptr() not in params:
            saved[0] += t.numel() * t.element_size()
        return t

    policy.model.zero_grad(set_to_none=True)
    policy.model.train()
    with recomputed_layers(policy.model, on), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = accumulate_gradients(policy, prompt_ids, response_ids, adv, cfg)
    policy.model.eval()
    return out, saved[0], [p.grad.clone() for _, p in policy.named_parameters()]


def test_gradient_checkpointing_gives_the_same_loss_and_gradient_from_fewer_saved_activations():
    """grpo.gradient_checkpointing: each layer's activations are recomputed in the backward pass, so autograd
    keeps less, while the loss and every gradient equal those without it bit for bit (the recomputation repeats
    the same ops); afterwards the model is as before (no checkpointing, no input hook)."""
    policy = make_micro_policy(layers=3)
    prompts = policy.encode([[{"role": "user", "content": q}] for q in ("Is the sky blue?", "Compute 7+5*3.")])
    prompt_ids = [prompts[0]] * 3 + [prompts[1]] * 3
    response_ids = [[5, 6, 7], [8], [], [9, 10, 11, 12, 13], [14, 15], [16, 17, 18, 19]]
    adv = torch.tensor([1.0, -0.5, -0.5, 0.3, 0.0, -0.3])
    cfg = GRPOConfig(micro_batch_size=3, group_size=3, max_new_tokens=6, gradient_checkpointing=True)
    plain, plain_saved, plain_grads = _saved_bytes_and_grads(policy, False, prompt_ids, response_ids, adv, cfg)
    ckpt, ckpt_saved, ckpt_grads = _saved_bytes_and_grads(policy, True, prompt_ids, response_ids, adv, cfg)
    assert ckpt_saved < 0.7 * plain_saved
    assert ckpt["loss"] == plain["loss"] and ckpt["tokens"] == plain["tokens"]
    assert all(torch.equal(g, g0) for g, g0 in zip(ckpt_grads, plain_grads, strict=True))
    assert all(g.abs().max() > 0 for g in plain_grads)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in policy.model.modules())
    again, again_saved, _ = _saved_bytes_and_grads(policy, False, prompt_ids, response_ids, adv, cfg)
    assert again_saved == plain_saved and again["loss"] == plain["loss"]


def test_gradient_checkpointing_is_refused_with_shared_prompt_or_a_model_without_it():
    with pytest.raises(ConfigError, match=r"grpo\.gradient_checkpointing and grpo\.shared_prompt"):
        GRPOConfig(gradient_checkpointing=True, shared_prompt=True).check()
    with (pytest.raises(ConfigError, match=r"grpo\.gradient_checkpointing: Linear does not support"),
          recomputed_layers(torch.nn.Linear(2, 2), True)):
        pass
    with recomputed_layers(torch.nn.Linear(2, 2), False):  # off: nothing is asked of the model
        pass


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_shared_prompt_gives_the_same_loss_and_gradient(beta):
    """grpo.shared_prompt computes each prompt once per group: the step's loss, KL and gradient equal the
    per-response forward's to float tolerance, whatever the micro-batch size."""
    policy = make_micro_policy()
    ref = copy.deepcopy(policy.model)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    prompts = policy.encode([[{"role": "user", "content": q}] for q in ("Is the sky blue?", "Compute 7+5*3.")])
    prompt_ids = [prompts[0]] * 3 + [prompts[1]] * 3
    response_ids = [[5, 6, 7], [8], [], [9, 10, 11, 12, 13], [14, 15], [16, 17, 18, 19]]
    adv = torch.tensor([1.0, -0.5, -0.5, 0.3, 0.0, -0.3])
    results = []
    for shared, mbs in ((False, 6), (True, 6), (True, 2)):
        cfg = GRPOConfig(micro_batch_size=mbs, group_size=3, beta=beta, max_new_tokens=6, shared_prompt=shared)
        policy.model.zero_grad(set_to_none=True)
        out = accumulate_gradients(policy, prompt_ids, response_ids, adv, cfg, ref, track_kl=True)
        results.append((out, [p.grad.clone() for _, p in policy.named_parameters()]))
    (base, base_grads), *others = results
    for out, grads in others:
        assert out["loss"] == pytest.approx(base["loss"], rel=1e-5, abs=1e-7)
        assert out["kl"] == pytest.approx(base["kl"], rel=1e-4) and out["tokens"] == base["tokens"]
        for g, g0 in zip(grads, base_grads, strict=True):
            torch.testing.assert_close(g, g0, rtol=1e-4, atol=1e-6)
    assert any(g.abs().max() > 0 for g in base_grads)
