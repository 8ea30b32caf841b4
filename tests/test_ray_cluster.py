"""The ES population across two Ray nodes (simulated on this machine with ray.cluster_utils.Cluster):
the workers land on different nodes, join through ray.address, and the run equals the sequential one."""

from __future__ import annotations

import pytest
import torch

from esgrpo.checkpoints import same_weights
from esgrpo.config import ESConfig, ModelConfig, RayConfig, TinyModelConfig
from esgrpo.models import load_policy, resolve_model_path
from esgrpo.runs import RunDir
from esgrpo.tasks import get_task, load_examples
from esgrpo.train.es import train_es
from esgrpo.train.population import es_scorer

ray = pytest.importorskip("ray")

ES = ESConfig(population=4, sigma=0.02, alpha=0.02, iterations=2, batch_size=0, max_new_tokens=24,
              checkpoint_every=0)
TASK = get_task("math")
EXAMPLES = load_examples("math", "synthetic", "train", 8, seed=1234)


@pytest.mark.slow
def test_es_population_on_a_two_node_cluster_equals_the_sequential_run(tmp_path):
    from ray.cluster_utils import Cluster

    from esgrpo.train.ray_population import RayPopulationEvaluator

    torch.set_num_threads(1)
    seq = RunDir(tmp_path / "seq")
    train_es(load_policy(ModelConfig(threads=1)), TASK, EXAMPLES, ES, seq)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        policy = load_policy(ModelConfig(threads=1))
        run = RunDir(tmp_path / "ray")
        ev = RayPopulationEvaluator(RayConfig(address=cluster.address, workers=2, check_every=1),
                                    resolve_model_path(ModelConfig(), TinyModelConfig()), ModelConfig(),
                                    es_scorer(TASK, ES), ES.sigma, policy.named_parameters(),
                                    run.path / "updates.jsonl")
        try:
            train_es(policy, TASK, EXAMPLES, ES, run, evaluator=ev)
            ev.close()
        finally:
            ev.close(check=False)
        assert len({w["node_id"] for w in ev.worker_info}) == 2  # one worker per node
        assert run.metrics("updates.jsonl") == seq.metrics("updates.jsonl")
        assert same_weights(run.path / "checkpoints" / "final", seq.path / "checkpoints" / "final")
    finally:
        ray.shutdown()
        cluster.shutdown()
