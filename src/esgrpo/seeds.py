"""A study over several seeds (`study.seeds: [s1, s2, ...]`): one full study per seed, then the statistics.

`run_seeds`, step by step:
    1. check the config and the study directory's identity before anything is written;
    2. per seed s, the whole study (`run_study`) with es.seed = grpo.seed = s in `<out>/seed-<s>/`: a complete
       study directory of its own (its own report), reused or resumed when started again. The model, the
       data, the prompts and the analysis seeds are the same for every seed, so the spread over seeds is
       the spread of training itself (noise seeds, prompt batches, sampled responses);
    3. the nulls between seeds: cosines and interpolation barriers ES-vs-ES, GRPO-vs-GRPO beside
       ES-vs-GRPO (analysis/seeds.py; `<out>/seeds.json`);
    4. every Table 1, geometry and sequential number as a mean with a 95% interval over seeds, and the
       paper's findings decided from them (`<out>/results.json`);
    5. the report: `<out>/report.html` and `report.md`, with error bars (report/seeds.py).
`esgrpo study --only TASK:METHOD` runs those cells for every seed (steps 1-2).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from esgrpo.config import StudyConfig, validate
from esgrpo.runs import JsonRecord, RunDir


def _say(msg: str) -> None:
    print(f"[seeds] {msg}", file=sys.stderr, flush=True)


def seed_config(cfg: StudyConfig, seed: int) -> StudyConfig:
    """The single-seed study of `seed` inside the multi-seed study `cfg`."""
    return dataclasses.replace(cfg, seeds=[], es=dataclasses.replace(cfg.es, seed=seed),
                               grpo=dataclasses.replace(cfg.grpo, seed=seed), out=str(Path(cfg.out) / f"seed-{seed}"),
                               extra_models=cfg.extra_models if seed == cfg.seeds[0] else [])


def run_seeds(cfg: StudyConfig, only: list[str] | None = None) -> dict[str, Any]:
    """Every seed's study, the nulls between them, the statistics over them and the report (resumable)."""
    from esgrpo.study import run_study

    # 1. Checks: the config, and every seed's settings (a refused seed study refuses the whole run up front).
    validate(cfg)
    subs = {s: seed_config(cfg, s) for s in cfg.seeds}
    for sub in subs.values():
        validate(sub)
        if Path(sub.out).is_dir():
            RunDir(sub.out, sub)  # the identity check alone; writes nothing
    t0 = time.time()
    with RunDir(cfg.out, cfg, command="study") as run:
        root = run.path
        record = JsonRecord(root / "results.json")
        record.data["seeds"] = list(cfg.seeds)
        record.data.setdefault("seed_seconds", {})

        # 2. One study per seed.
        for i, (s, sub) in enumerate(subs.items(), start=1):
            _say(f"seed {s} ({i}/{len(subs)}): {sub.out}")
            ts = time.time()
            run_study(sub, only)
            record.data["seed_seconds"][str(s)] = record.data["seed_seconds"].get(str(s), 0.0) + time.time() - ts
            record.save()
        if only:
            return record.data
        finish_seeds(root, cfg)
        record = JsonRecord(root / "results.json")
        record.data["seconds"] = record.data.get("seconds", 0.0) + time.time() - t0  # summed over invocations
        record.save()
    from esgrpo.report.seeds import write_seeds_report

    md = write_seeds_report(root)
    print(md)
    return record.data


def finish_seeds(root: Path, cfg: StudyConfig) -> dict[str, Any]:
    """Steps 3-4 on finished seed studies: the nulls (seeds.json), the statistics and findings (results.json)."""
    from esgrpo.analysis.seeds import between_seeds, refresh

    dirs = {s: Path(seed_config(cfg, s).out) for s in cfg.seeds}
    if cfg.train and len(dirs) > 1:
        between_seeds(root, cfg, dirs)
    record = JsonRecord(root / "results.json")
    record.data["seed_dirs"] = {str(s): str(d) for s, d in dirs.items()}
    record.save()
    return refresh(root)
