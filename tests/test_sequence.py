"""Sequential post-training: metrics by hand, stage order, resume without recomputation, KL split."""

from __future__ import annotations

import json

import pytest

from esgrpo.sequence import Runner, kl_split, run_stages, sequence_metrics

ORDER = ["countdown", "math", "chemistry", "boolq"]


def test_sequence_metrics_match_a_hand_computation():
    # rows: base, after stage 1..3; tasks a, b, c trained in that order
    m = [{"a": 0.1, "b": 0.2, "c": 0.3},
         {"a": 0.6, "b": 0.2, "c": 0.3},
         {"a": 0.5, "b": 0.7, "c": 0.2},
         {"a": 0.3, "b": 0.6, "c": 0.8}]
    r = sequence_metrics(m, ["a", "b", "c"])
    assert r["average_accuracy"] == pytest.approx((0.3 + 0.6 + 0.8) / 3)
    assert r["bwt"] == pytest.approx(((0.3 - 0.6) + (0.6 - 0.7)) / 2)  # final minus just-trained, all but last
    assert r["forgetting"] == pytest.approx({"a": 0.6 - 0.3, "b": 0.7 - 0.6})  # max earlier minus final
    assert r["mean_forgetting"] == pytest.approx(0.2)
    assert r["gain_on_trained"] == pytest.approx({"a": 0.5, "b": 0.5, "c": 0.6})
    with pytest.raises(ValueError, match="base"):
        sequence_metrics(m[:3], ["a", "b", "c"])


def test_kl_heatmap_diagonal_and_off_diagonal_split():
    kl = [{"a": 1.0, "b": 0.1, "c": 0.2},  # stage 1 trained a
          {"a": 0.3, "b": 2.0, "c": 0.4},  # stage 2 trained b
          {"a": 0.5, "b": 0.6, "c": 3.0}]  # stage 3 trained c
    r = kl_split(kl, ["a", "b", "c"])
    assert r["diagonal"] == pytest.approx(2.0)
    assert r["off_diagonal"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.4 + 0.5 + 0.6) / 6)


class FakeRunner(Runner):
    """Scripted accuracies: training on a task sets it to 0.9 and halves every other task."""

    def __init__(self, fail_train_at: tuple[str, int] | None = None, fail_extras_at: str | None = None):
        self.calls: list[tuple[str, int, str, str]] = []
        self.fail_train_at, self.fail_extras_at = fail_train_at, fail_extras_at
        self.state: dict[str, dict[str, float]] = {"base": {t: 0.2 for t in ORDER}}

    def train(self, method, stage, task, init):
        if self.fail_train_at == (method, stage):
            self.fail_train_at = None
            raise KeyboardInterrupt("killed")
        self.calls.append((method, stage, task, init))
        ckpt = f"{method}/s{stage}"
        prev = self.state[init]
        self.state[ckpt] = {t: 0.9 if t == task else prev[t] / 2 for t in ORDER}
        return ckpt

    def accuracy(self, ckpt):
        return dict(self.state[ckpt])

    def extras(self, ckpt, prev):
        if self.fail_extras_at == ckpt:
            self.fail_extras_at = None
            raise KeyboardInterrupt("killed while measuring")
        stage = 0 if ckpt == "base" else int(ckpt.rsplit("s", 1)[1])
        return {"norm": float(stage), "kl": {t: {"kl": 1.0 if stage and t == ORDER[stage - 1] else 0.1, "kl_se": 0}
                                             for t in ORDER}}


HEADER = {"order": ORDER}


def test_stage_order_is_honoured_and_matrix_is_bookkept(tmp_path):
    runner = FakeRunner()
    data = run_stages(runner, ORDER, ["es_short", "grpo"], "base", tmp_path, HEADER)
    for method in ("es_short", "grpo"):
        calls = [c for c in runner.calls if c[0] == method]
        assert [c[2] for c in calls] == ORDER  # the configured order
        assert [c[3] for c in calls] == ["base", f"{method}/s1", f"{method}/s2", f"{method}/s3"]  # chained weights
        st = data["methods"][method]["stages"]
        assert st[1]["accuracy"] == {"countdown": 0.45, "math": 0.9, "chemistry": 0.05, "boolq": 0.05}
        met = data["methods"][method]["metrics"]
        assert met["forgetting"]["countdown"] == pytest.approx(0.9 - 0.1125)
        assert data["methods"][method]["kl_split"] == pytest.approx({"diagonal": 1.0, "off_diagonal": 0.1})
    assert json.loads((tmp_path / "sequence.json").read_text()) == data  # persisted


@pytest.mark.parametrize("where", ["stage boundary", "mid-stage"])
def test_interrupted_sequence_resumes_without_recomputing_finished_stages(tmp_path, where):
    full = run_stages(FakeRunner(), ORDER, ["es_long", "grpo"], "base", tmp_path / "full", HEADER)
    if where == "stage boundary":
        runner = FakeRunner(fail_train_at=("grpo", 3))  # es_long done, grpo stages 1-2 done
    else:
        runner = FakeRunner(fail_extras_at="grpo/s2")  # grpo stage 2 trained and evaluated, not yet measured
    with pytest.raises(KeyboardInterrupt):
        run_stages(runner, ORDER, ["es_long", "grpo"], "base", tmp_path / "cut", HEADER)
    before = list(runner.calls)
    resumed = run_stages(runner, ORDER, ["es_long", "grpo"], "base", tmp_path / "cut", HEADER)
    new = runner.calls[len(before):]
    assert [(m, s) for m, s, _, _ in new] == [("grpo", 3), ("grpo", 4)]  # no finished stage trained again
    assert len(before) + len(new) == 8
    assert resumed == full


def test_other_settings_in_the_same_directory_are_refused(tmp_path):
    from esgrpo.errors import EsgrpoError

    run_stages(FakeRunner(), ORDER, ["grpo"], "base", tmp_path, HEADER)
    with pytest.raises(EsgrpoError, match="other sequence settings"):
        run_stages(FakeRunner(), ORDER[::-1], ["grpo"], "base", tmp_path, {"order": ORDER[::-1]})
