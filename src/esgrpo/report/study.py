"""The study's report: the paper's Table 1 layout with our numbers, budgets, figures (HTML + Markdown)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from esgrpo.report.document import Document
from esgrpo.runs import read_jsonl

LABELS = {"es_short": "ES short", "es_long": "ES long", "grpo": "GRPO"}
PAPER_TABLE1 = {  # Qwen3-4B, test accuracy %: base, ES(100), ES(300), GRPO
    "countdown": (20.5, 75.1, 78.6, 74.5), "math": (61.8, 72.4, 74.0, 68.8),
    "chemistry": (63.4, 68.1, 76.5, 74.9), "boolq": (83.7, 87.2, 88.1, 86.6),
}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:.0f}"


def table1(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The paper's Table 1 layout, with the best constant answer's accuracy beside it: header and rows."""
    es = results.get("es_config", {})
    short = es.get("iterations", "?")
    long_ = short * results.get("es_long_factor", 3) if isinstance(short, int) else "?"
    variants = variant_arms(results)
    header = ["task", "base", f"ES({short})", f"ES({long_})", "GRPO", *variants, f"gain ES({short})", "gain GRPO",
              *(f"gain {v}" for v in variants), "constant answer", "paper: base / ES(100) / ES(300) / GRPO"]
    rows = []
    for task, base in results["base"].items():
        r = results["tasks"].get(task)
        acc = r["accuracy"] if r else {}
        gains = [f"{100 * (acc[m] - base):+.1f}" if m in acc else "-" for m in ("es_short", "grpo", *variants)]
        const = (results.get("constant_baseline") or {}).get(task)
        const_cell = f"{_pct(const['accuracy'])} (always {const['answer']})" if const else "-"
        paper = " / ".join(f"{v:.1f}" for v in PAPER_TABLE1.get(task, ()))
        rows.append([task, _pct(base), *(_pct(acc.get(m)) for m in ("es_short", "es_long", "grpo", *variants)),
                     *gains, const_cell, paper])
    return header, rows


def variant_arms(results: dict[str, Any]) -> list[str]:
    """The ES variant arms (es_variants) the study trained, in their order."""
    return list(dict.fromkeys(m for r in results.get("tasks", {}).values() for m in r.get("accuracy", {})
                              if m not in LABELS))


def format_only_gain(rf_base: float, acc_rf_base: float, rf: float) -> float:
    """The part of a gain that answer format alone explains: the newly well-formatted answers scored as the base
    model's well-formatted answers did, (rf - rf_base) x acc_rf_base (accuracy = rf x accuracy among them)."""
    return (rf - rf_base) * acc_rf_base


def format_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """Per task and model: right-format rate, accuracy among right-format answers (%), and for each method the
    part of its gain that format alone explains (None if not recorded)."""
    base = results.get("base_right_format")
    if not base:
        return None
    base_acc_rf = results.get("base_accuracy_right_format") or {}
    rows = []
    for task, b in base.items():
        t = results["tasks"].get(task, {})
        rf, acc_rf, acc = t.get("right_format", {}), t.get("accuracy_right_format", {}), t.get("accuracy", {})
        cells = [task, f"{_pct(b)} / {_pct(base_acc_rf.get(task))}"]
        for m in ("es_short", "es_long", "grpo"):
            cell = f"{_pct(rf.get(m))} / {_pct(acc_rf.get(m))}"
            base_acc = results.get("base", {}).get(task)
            if None not in (rf.get(m), b, base_acc_rf.get(task), acc.get(m), base_acc):
                part = format_only_gain(b, base_acc_rf[task], rf[m])
                cell += f" (format {100 * part:+.1f} of {100 * (acc[m] - base_acc):+.1f})"
            cells.append(cell)
        rows.append(cells)
    es = results.get("es_config", {})
    short = es.get("iterations", "?")
    long_ = short * results.get("es_long_factor", 3) if isinstance(short, int) else "?"
    return ["task", "base", f"ES({short})", f"ES({long_})", "GRPO"], rows


def precision_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """Per task and trainer, the precision audit of its updates over the run (metrics.jsonl): mean share of
    weights changed, smallest and mean cosine, mean norm ratio (None when no run logged it)."""
    rows = []
    for task, r in results["tasks"].items():
        for key, label in (("es", "ES"), ("grpo", "GRPO")):
            path = r.get("runs", {}).get(key)
            audit = [m for m in read_jsonl(Path(path) / "metrics.jsonl") if "changed_frac" in m] if path else []
            if not audit:
                continue
            n = len(audit)
            rows.append([task, label, str(n), f"{100 * sum(m['changed_frac'] for m in audit) / n:.1f}",
                         f"{min(m['update_cosine'] for m in audit):.4f}",
                         f"{sum(m['update_cosine'] for m in audit) / n:.4f}",
                         f"{sum(m['update_norm_ratio'] for m in audit) / n:.4f}"])
    if not rows:
        return None
    return ["task", "method", "updates", "weights changed (%, mean)", "cosine (min)", "cosine (mean)",
            "norm ratio (mean)"], rows


def budget_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["task", "method", "iterations/steps", "rollouts", "generated tokens", "train seconds",
              "peak added by training (MiB)", "process peak (MiB)", "measurement seconds", "measurement memory (MiB)"]
    rows = []
    for task, r in results["tasks"].items():
        for m, b in r["budgets"].items():
            steps = b.get("iterations", b.get("steps"))
            shared = m == "es_short"  # ES short is a checkpoint of ES long: its memory and measurement are ES long's
            mem = [_mb(b.get("peak_memory_added_bytes")), _mb(b.get("peak_memory_bytes"))]
            measure = [f"{b['measure_seconds']:.0f}" if b.get("measure_seconds") is not None else "-",
                       _mb(b.get("measure_memory_bytes"))]
            rows.append([task, LABELS.get(m, m), str(steps), f"{b['rollouts']:,}", f"{b['tokens']:,}",
                         f"{b['seconds']:.0f}",
                         *(["(ES long)"] * 2 if shared else mem), *(["(ES long)"] * 2 if shared else measure)])
    return header, rows


def accuracy_figure(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = list(results["base"])
    series = [("base", [results["base"][t] for t in tasks])]
    for m in ("es_short", "es_long", "grpo", *variant_arms(results)):
        series.append((LABELS.get(m, m), [results["tasks"].get(t, {}).get("accuracy", {}).get(m, np.nan)
                                          for t in tasks]))
    x = np.arange(len(tasks))
    w = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (label, vals) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * w, 100 * np.array(vals, dtype=float), w, label=label)
    ax.set_xticks(x, tasks)
    ax.set_ylabel("test accuracy (%, greedy)")
    ax.set_ylim(0, 100)
    ax.legend(ncol=4, fontsize=8)
    ax.set_title(f"{results['model']}: single-task test accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def learning_curves_figure(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["tasks"])
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        runs = results["tasks"][task]["runs"]
        es = read_jsonl(Path(runs["es"]) / "metrics.jsonl")
        gr = read_jsonl(Path(runs["grpo"]) / "metrics.jsonl")
        ax.plot([r["rollouts"] for r in es], [r["reward_mean"] for r in es], label="ES (mean member fitness)")
        ax.plot([r["rollouts"] for r in gr], [r["reward_mean"] for r in gr], label="GRPO (mean sample reward)",
                alpha=0.8)
        ax.axhline(results["base"][task], color="gray", ls=":", label="base test acc.")
        ax.set_xscale("log")
        ax.set_title(task)
        ax.set_xlabel("rollouts")
        ax.set_ylabel("training reward")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def study_document(root: Path, results: dict[str, Any], cfg: Any) -> Document:
    """Table 1, budgets, other models and the accuracy figures as a Document (analyses add sections)."""
    from dataclasses import asdict

    results = dict(results, es_config=asdict(cfg.es), es_long_factor=cfg.es_long_factor)
    figs = root / "figures"
    figs.mkdir(exist_ok=True)
    accuracy_figure(results, figs / "accuracy.png")
    learning_curves_figure(results, figs / "learning_curves.png")
    g = cfg.grpo
    doc = Document(f"esgrpo study: {results['model']} ({results['parameters']:,} parameters)")
    doc.heading("Accuracy (Table 1)")
    doc.para(f"Greedy test accuracy (%), data source {cfg.data.source}, n_test per task: "
             + ", ".join(f"{t} {n}" for t, n in results["n_test"].items()) + ". "
             f"Budget mode: **{results['budget_mode']}** "
             + ("(each method on its own configured budget, as the paper's configs)."
                if results["budget_mode"] == "paper" else "(GRPO gets exactly the rollouts of ES short)."))
    doc.table(*table1(results))
    doc.para("Constant answer: the accuracy of always giving the most common reference answer of the test "
             "split (e.g. always \"yes\"), the bar a model that ignores the question clears; countdown has none.")
    fmt = format_table(results)
    if fmt is not None:
        doc.para("Right-format rate / accuracy among right-format answers (%): the share of test responses that "
                 "give an answer in the required format (a parseable \\boxed{} or answer letter), right or wrong, "
                 "and how many of those are right. Accuracy = the product. In brackets: the part of the method's "
                 "gain that format alone explains, (rate - base rate) x the base's accuracy among right-format "
                 "answers, of the whole gain (points); the rest comes from answering right more often.")
        doc.table(*fmt)
    doc.para(f"ES: N={cfg.es.population}, sigma={cfg.es.sigma}, alpha={cfg.es.alpha}, "
             f"batch={cfg.es.batch_size or 'all'}, decoding={cfg.es.decoding}, antithetic={cfg.es.antithetic}. "
             f"GRPO: K={g.group_size}, prompts/step={g.prompts_per_step}, lr={g.lr}, steps={g.steps}, beta={g.beta}, "
             f"loss={g.loss_type}.")
    for v, over in cfg.es_variants.items() if hasattr(cfg, "es_variants") else ():
        doc.para(f"ES variant **{v}**: ES short's settings with " + ", ".join(f"es.{k} = {x}" for k, x in over.items())
                 + ".")
    doc.figure(figs / "accuracy.png", "Greedy test accuracy per task: base model and each method trained on that "
               "task alone (single-task runs).")
    doc.heading("Budgets")
    doc.para("What each column holds. A rollout is one generated response (the paper's forward pass). Train "
             "seconds: wall time of the training loop only (perturb, generate, score, update / generate, score, "
             "backward, step). Peak added by training: the process's peak during training minus its memory when "
             "training started (the loaded model and any reference copy); process peak: the peak itself (CPU: "
             "resident set size; GPU: peak allocated bytes). Measurement: KL tracking against a frozen copy of the "
             "base model, which is not part of either method (GRPO with beta = 0 measures it every grpo.kl_every "
             "steps, ES every es.kl_every iterations): its seconds and the copy's size, kept apart from training. "
             "ES short is the checkpoint of ES long at its iteration count, so its memory and measurement are ES "
             "long's.")
    if results["tasks"]:
        doc.table(*budget_table(results))
    prec = precision_table(results)
    if prec is not None:
        doc.para("Precision audit: each update is computed in float32 and rounded once into the weights' dtype; "
                 "over a run's iterations / steps, the share of weights an update changed at all, and the cosine "
                 "and norm ratio of the applied update to the float32 one (1 / 1 for float32 weights).")
        doc.table(*prec)
    doc.figure(figs / "learning_curves.png", "Training reward against rollouts (log scale): ES's mean member "
               "fitness and GRPO's mean sampled reward per step, on the training prompts; the dotted line is "
               "the base model's test accuracy.")
    if results.get("extra_models"):
        doc.heading("Other models (base, greedy)")
        p = cfg.extra_prompt
        doc.para(f"Prompts: format line {'on' if p.format_line else 'off'}, {p.shots} worked examples, stop rule "
                 f"{'on' if p.stop else 'off'}{', prefill ' + repr(p.prefill) if p.prefill else ''}. Each cell: "
                 "accuracy %, right-format %, the best constant answer's accuracy %, truncated %.")
        rows = []
        for name, e in results["extra_models"].items():
            cells = []
            for t in results["base"]:
                const = (e.get("constant_baseline") or {}).get(t)
                cells.append(f"{_pct(e['accuracy'].get(t))} (format {_pct((e.get('right_format') or {}).get(t))}, "
                             f"constant {_pct(const['accuracy']) if const else '-'}, "
                             f"trunc. {100 * e['truncated'].get(t, 0):.0f}%)")
            rows.append([name, f"{e['parameters']:,}", str(e["n"]), *cells])
        doc.table(["model", "parameters", "n/task", *results["base"]], rows)
    doc.para(f"Tiny model build: {results['build_seconds']:.0f} s (0 if cached). "
             f"Total study time (summed over the invocations that worked on it): {results['seconds']:.0f} s.")
    return doc


def write_study_report(root: Path, results: dict[str, Any], cfg: Any) -> str:
    """report.html + report.md (+ figures): Table 1 and budgets, geometry, theory, sequential; returns the Markdown."""
    import json

    from esgrpo.report.geometry import add_geometry_sections
    from esgrpo.report.sequential import add_sequential_section
    from esgrpo.report.theory import add_theory_section

    doc = study_document(root, results, cfg)
    add_geometry_sections(doc, root)
    if (root / "analysis.json").exists():
        from esgrpo.report.theory import toy_summary

        figs = root / "figures"
        add_theory_section(doc, json.loads((root / "analysis.json").read_text()), figs, toy=toy_summary(figs),
                           grpo=getattr(cfg, "grpo", None))
    seq = root / "sequence" / "sequence.json"
    if seq.exists():
        add_sequential_section(doc, json.loads(seq.read_text()), root / "figures")
    doc.write(root)
    return doc.markdown(root)
