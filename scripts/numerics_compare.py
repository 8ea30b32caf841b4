"""The precision table: studies that differ in dtype or numerics (exact vs as published), side by side.

    .venv/bin/python scripts/numerics_compare.py LABEL=STUDY_DIR [LABEL=STUDY_DIR ...] [--json OUT]

e.g. fp32=runs/study-seeds/seed-0 bf16-exact=runs/study-bf16-exact bf16-published=runs/study-bf16-published.
Per task and study, from the checkpoints and run records only: accuracy (base, ES short, ES long, GRPO),
||ES long|| and ||GRPO|| (L2 of theta - theta_base), their ratio, the share of weights each update left
unchanged, the cosine of the two updates, and the per-step precision audit averaged over the run (cosine of
the applied to the float32 update, share of weights changed per step; ES: the drift of restoring by
subtraction, published mode only). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from esgrpo.analysis import weights
from esgrpo.analysis.study import method_checkpoints
from esgrpo.config import StudyConfig
from esgrpo.runs import RunDir, read_json, read_jsonl


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if isinstance(r.get(key), int | float)]
    return sum(vals) / len(vals) if vals else None


def study_numbers(root: Path) -> dict[str, dict[str, Any]]:
    cfg = RunDir(root).saved_config(StudyConfig)
    res = read_json(root / "results.json")
    out = {}
    for task, r in res["tasks"].items():
        ck = method_checkpoints(r, cfg.es.iterations)
        es_run, grpo_run = Path(r["runs"]["es"]), Path(r["runs"]["grpo"])
        base = es_run / "checkpoints" / "step-000000"
        n_es, n_gr = (weights.update_norms(base, ck[m])["total"]["abs"] for m in ("es_long", "grpo"))
        unchanged = {m: 1.0 - weights.sparsity(base, ck[m])["frac_changed"] for m in ("es_long", "grpo")}
        es_rows, gr_rows = read_jsonl(es_run / "metrics.jsonl"), read_jsonl(grpo_run / "metrics.jsonl")
        out[task] = {
            "dtype": cfg.model.dtype, "numerics": f"{cfg.es.numerics}/{cfg.grpo.numerics}",
            "accuracy": {"base": res["base"][task], **r["accuracy"]},
            "norm_es_long": n_es, "norm_grpo": n_gr, "ratio": n_es / n_gr if n_gr else None,
            "unchanged_es_long": unchanged["es_long"], "unchanged_grpo": unchanged["grpo"],
            "cosine": weights.cosine(base, ck["es_long"], ck["grpo"])["cosine"],
            "audit": {"es_cosine": _mean(es_rows, "update_cosine"), "es_changed": _mean(es_rows, "changed_frac"),
                      "es_drift_frac": _mean(es_rows, "restore_drift_frac"),
                      "grpo_cosine": _mean(gr_rows, "update_cosine"), "grpo_changed": _mean(gr_rows, "changed_frac")},
        }
    return out


def _f(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(studies: dict[str, dict[str, dict[str, Any]]]) -> str:
    head = ["task", "study", "base", "ES short", "ES long", "GRPO", "norm ES long", "norm GRPO", "ratio",
            "unchanged ES long %", "unchanged GRPO %", "cos ES-GRPO", "audit cos ES / GRPO", "changed/step ES / GRPO %",
            "ES restore drift %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    tasks = list(dict.fromkeys(t for s in studies.values() for t in s))
    for t in tasks:
        for label, s in studies.items():
            if t not in s:
                continue
            n = s[t]
            acc = n["accuracy"]
            a = n["audit"]
            lines.append("| " + " | ".join([
                t, label, *(_f(100 * acc[m], ".1f") if m in acc else "-"
                        for m in ("base", "es_short", "es_long", "grpo")),
                _f(n["norm_es_long"], ".3g"), _f(n["norm_grpo"], ".3g"), _f(n["ratio"], ".3g"),
                _f(100 * n["unchanged_es_long"], ".1f"), _f(100 * n["unchanged_grpo"], ".1f"), _f(n["cosine"], ".2g"),
                f"{_f(a['es_cosine'], '.3f')} / {_f(a['grpo_cosine'], '.3f')}",
                f"{_f(a['es_changed'] and 100 * a['es_changed'], '.1f')} / "
                f"{_f(a['grpo_changed'] and 100 * a['grpo_changed'], '.1f')}",
                _f(a["es_drift_frac"] and 100 * a["es_drift_frac"], ".1f")]) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("studies", nargs="+", help="LABEL=STUDY_DIR")
    p.add_argument("--json", help="also write the numbers to this file")
    a = p.parse_args()
    studies = {}
    for item in a.studies:
        label, _, path = item.partition("=")
        studies[label] = study_numbers(Path(path))
    print(table(studies))
    if a.json:
        Path(a.json).write_text(json.dumps(studies, indent=1))


if __name__ == "__main__":
    main()
