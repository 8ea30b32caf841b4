"""Checkpoint retention: only the `checkpoint_keep` newest periodic checkpoints stay, beside final, ES's base
and the pinned steps; none is written at the last step; a pruned run still resumes and replays exactly."""

from __future__ import annotations

import json
from pathlib import Path

from esgrpo.checkpoints import prune_checkpoints, same_weights
from esgrpo.cli import main

SMALL = ["--data.n_train", "8", "--data.n_test", "8", "--generation.max_new_tokens", "8"]


def _fake(root: Path, name: str, complete: bool = True) -> None:
    d = root / "checkpoints" / name
    d.mkdir(parents=True)
    if complete:
        (d / "trainer_state.json").write_text(json.dumps({"iteration": 0}))


def _names(run: Path) -> set[str]:
    return {p.name for p in (run / "checkpoints").iterdir()}


def test_prune_keeps_the_newest_the_pinned_final_and_what_is_incomplete(tmp_path):
    for step in (0, 1, 2, 3, 10, 11):
        _fake(tmp_path, f"step-{step:06d}")
    _fake(tmp_path, "final")
    _fake(tmp_path, "step-000012.tmp", complete=False)  # a save in progress is not a checkpoint
    _fake(tmp_path, "step-000013", complete=False)  # nor is a directory without trainer_state.json
    assert prune_checkpoints(tmp_path, keep=0) == [] and len(_names(tmp_path)) == 9
    gone = prune_checkpoints(tmp_path, keep=2, pinned={0, 2})
    assert [p.name for p in gone] == ["step-000001", "step-000003"]
    assert _names(tmp_path) == {"step-000000", "step-000002", "step-000010", "step-000011", "final",
                                "step-000012.tmp", "step-000013"}
    assert prune_checkpoints(tmp_path, keep=2, pinned={0, 2}) == []  # idempotent


def test_es_keeps_base_pinned_and_newest_and_still_replays_and_extends(tmp_path):
    from esgrpo.train.es import replay_run

    es = [*SMALL, "--es.population", "4", "--es.max_new_tokens", "8", "--es.checkpoint_every", "1"]
    run, ref = tmp_path / "kept", tmp_path / "all"
    assert main(["train", "es", *es, "--es.iterations", "5", "--es.checkpoint_keep", "2",
                 "--es.checkpoint_pin", "2", "--out", str(run)]) == 0
    assert _names(run) == {"step-000000", "step-000002", "step-000003", "step-000004", "final"}
    assert replay_run(run)["matches_final"]  # the base and the update log are all replay needs
    # extending the pruned run to 7 iterations ends where an unpruned 7-iteration run ends
    assert main(["train", "es", *es, "--es.iterations", "7", "--es.checkpoint_keep", "2",
                 "--es.checkpoint_pin", "2", "--out", str(run), "--resume"]) == 0
    assert main(["train", "es", *es, "--es.iterations", "7", "--es.checkpoint_keep", "0", "--out", str(ref)]) == 0
    # resumed from final (iteration 5, never a periodic checkpoint): 6 is the one step written since
    assert _names(run) == {"step-000000", "step-000002", "step-000004", "step-000006", "final"}
    assert _names(ref) == {f"step-{s:06d}" for s in range(7)} | {"final"}
    assert same_weights(run / "checkpoints" / "final", ref / "checkpoints" / "final")


def test_grpo_keeps_the_newest_and_no_duplicate_of_final(tmp_path):
    run = tmp_path / "g"
    assert main(["train", "grpo", *SMALL, "--grpo.prompts_per_step", "2", "--grpo.group_size", "4",
                 "--grpo.max_new_tokens", "8", "--grpo.steps", "4", "--grpo.checkpoint_every", "1",
                 "--grpo.checkpoint_keep", "1", "--out", str(run)]) == 0
    assert _names(run) == {"step-000003", "final"}
    assert (run / "checkpoints" / "final" / "optimizer.pt").exists()


def test_checkpoint_pin_must_hold_iterations(tmp_path, capsys):
    assert main(["train", "es", *SMALL, "--es.checkpoint_pin", "3,-1", "--out", str(tmp_path / "x")]) == 2
    assert "es.checkpoint_pin" in capsys.readouterr().err and not (tmp_path / "x").exists()
