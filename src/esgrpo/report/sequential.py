"""Report section for the sequential study (from `sequence.json`): matrices, forgetting, norms, KL heatmaps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from esgrpo.report.document import Document
from esgrpo.report.geometry import COLORS, LABELS, _f, _pct, _plt, save_figure

PAPER_TABLE3 = "ES 87.28 / 122.76 / 149.99 / 173.00 vs GRPO 1.00 / 1.15 / 1.65 / 1.84 (Qwen3-4B; ratio 87-107x)"


def add_sequential_section(doc: Document, data: dict[str, Any], figs: Path) -> None:
    """Append the "Sequential" section."""
    h = data.get("settings") or data["header"]
    order = h["order"]
    methods = [m for m in h["methods"] if m in data["methods"] and len(data["methods"][m]["stages"]) == len(order)
               and "metrics" in data["methods"][m]]
    doc.heading("Sequential")
    doc.para(f"Tasks trained one after another, {' -> '.join(order)}, no replay, each stage from the previous "
             f"stage's weights with the method's single-task budget per stage (ES short {h['es_iterations']} "
             f"iterations, ES long {h['es_iterations'] * h['es_long_factor']}, GRPO {h['grpo_steps']} steps; GRPO "
             f"optimizer {'carried over' if h['keep_optimizer'] else 'fresh per stage'}). Greedy test accuracy (%), "
             f"n_test {h['n_test']} per task. Definitions: average accuracy = mean over tasks after the last stage; "
             "BWT = mean over all but the last task of (final accuracy - accuracy right after training it); "
             "forgetting = max accuracy over the stages from training the task to the one before last, minus the "
             "final accuracy.")
    if not methods:
        doc.para("No method has finished the sequence yet.")
        return
    for m in methods:
        st = data["methods"][m]["stages"]
        rows = [["base", *[_pct(data["base"]["accuracy"][t]) for t in order]]]
        rows += [[f"{s + 1}: {x['task']}", *[(f"**{_pct(x['accuracy'][t])}**" if t == x["task"] else
                                              _pct(x["accuracy"][t])) for t in order]] for s, x in enumerate(st)]
        doc.para(f"**{LABELS[m]}**: accuracy after each stage (bold: the task just trained).")
        doc.table(["after stage", *order], rows)
    rows = []
    for m in methods:
        met = data["methods"][m]["metrics"]
        rows.append([LABELS[m], _pct(met["average_accuracy"]), _pct(met["bwt"], "+.1f"),
                     _pct(met["mean_forgetting"], ".1f"),
                     ", ".join(f"{t} {_pct(v, '.1f')}" for t, v in met["forgetting"].items())])
    doc.table(["method", "average accuracy (%)", "BWT (points)", "mean forgetting (points)", "forgetting per task"],
              rows)
    # Table 3 layout: cumulative norm per stage, with the ES/GRPO ratio
    norm_rows = []
    for s, t in enumerate(order):
        vals = {m: data["methods"][m]["stages"][s]["norm"] for m in methods}
        ratio = [f"{vals[m] / vals['grpo']:.0f}x" if "grpo" in vals and vals["grpo"] else "-"
                 for m in methods if m != "grpo"]
        norm_rows.append([f"{s + 1}: {t}", *[_f(vals[m]) for m in methods], *ratio])
    es_methods = [m for m in methods if m != "grpo"]
    doc.para("Cumulative ||theta_stage - theta_base|| per stage (the paper's Table 3 layout; paper: "
             f"{PAPER_TABLE3}). A pure random walk grows like sqrt(stage): "
             + "; ".join(_sqrt_note(data, m, order) for m in es_methods) + ".")
    doc.table(["stage", *[LABELS[m] for m in methods], *[f"{LABELS[m]} / GRPO" for m in es_methods]], norm_rows)
    if all("heldout_nll" in x for m in methods for x in data["methods"][m]["stages"]) and "heldout_nll" in data["base"]:
        b = data["base"]["heldout_nll"]
        doc.para(f"Held-out capability before and after the sequence (the paper's Table 2 layout): per-token NLL "
                 f"of the tiny model's held-out pretraining slice; base {b:.4f}.")
        doc.table(["method", "after the sequence", "change"],
                  [[LABELS[m], f"{data['methods'][m]['stages'][-1]['heldout_nll']:.4f}",
                    f"{data['methods'][m]['stages'][-1]['heldout_nll'] - b:+.4f}"] for m in methods])
    split_rows = [[LABELS[m], _f(data["methods"][m]["kl_split"]["diagonal"]),
                   _f(data["methods"][m]["kl_split"]["off_diagonal"])] for m in methods]
    doc.para("Incremental KL(pi_stage || pi_previous stage), nats per response, on each task's test prompts "
             "(exact per-token KL summed over responses sampled from the new stage): the stage's own task "
             "(diagonal) vs the others (off-diagonal). The paper finds ES's off-diagonal drift larger than GRPO's.")
    doc.table(["method", "mean diagonal KL", "mean off-diagonal KL"], split_rows)
    _figures(doc, data, methods, order, figs)


def _sqrt_note(data: dict[str, Any], m: str, order: list[str]) -> str:
    st = data["methods"][m]["stages"]
    first = st[0]["norm"]
    pred = ", ".join(f"{first * (s + 1) ** 0.5:.3g}" for s in range(len(order)))
    return f"{LABELS[m]} sqrt-predicted from stage 1: {pred}"


def _figures(doc: Document, data: dict[str, Any], methods: list[str], order: list[str], figs: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(order), figsize=(3.4 * len(order), 3.0), squeeze=False)
    for ax, t in zip(axes[0], order, strict=True):
        for m in methods:
            ys = [data["base"]["accuracy"][t]] + [x["accuracy"][t] for x in data["methods"][m]["stages"]]
            ax.plot(range(len(ys)), [100 * y for y in ys], marker="o", ms=3, color=COLORS[m], label=LABELS[m])
        ax.axvline(order.index(t) + 1, color="gray", ls=":", lw=1)
        ax.set_xticks(range(len(order) + 1), ["base", *[str(i + 1) for i in range(len(order))]])
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("after stage")
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=7)
    save_figure(doc, fig, figs / "sequential_accuracy.png",
                "Accuracy on each task (panel) after each stage of the sequence "
               f"{' -> '.join(order)}; the dotted line marks the stage that trains that task.")

    import numpy as np

    mats = {m: np.array([[x["kl"][t]["kl"] for t in order] for x in data["methods"][m]["stages"]]) for m in methods}
    vmax = max(float(v.max()) for v in mats.values()) or 1.0
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.2), squeeze=False)
    for ax, m in zip(axes[0], methods, strict=True):
        im = ax.imshow(mats[m], vmin=0, vmax=vmax, cmap="magma")
        ax.set_xticks(range(len(order)), order, rotation=45, fontsize=7)
        ax.set_yticks(range(len(order)), [f"{i + 1}: {t}" for i, t in enumerate(order)], fontsize=7)
        ax.set_title(LABELS[m], fontsize=9)
        for i in range(len(order)):
            for j in range(len(order)):
                ax.text(j, i, f"{mats[m][i, j]:.2g}", ha="center", va="center", fontsize=6,
                        color="white" if mats[m][i, j] < 0.6 * vmax else "black")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="KL (nats / response)")
    fig.savefig(figs / "sequential_kl.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    doc.figure(figs / "sequential_kl.png", "Incremental KL(after stage || before stage) per stage (rows) and task "
               "prompts (columns), one heatmap per method on the same color scale; the diagonal is on-task.")

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    xs = range(1, len(order) + 1)
    for m in methods:
        ax.plot(xs, [x["norm"] for x in data["methods"][m]["stages"]], marker="o", color=COLORS[m], label=LABELS[m])
    ax.set_yscale("log")
    ax.set_xticks(list(xs))
    ax.set_xlabel("stage")
    ax.set_ylabel("||theta - theta_base|| (log)")
    ax.legend(fontsize=7)
    save_figure(doc, fig, figs / "sequential_norms.png",
                "Cumulative distance from the base model after each stage, per method.")


def write_sequence_report(out: Path, data: dict[str, Any] | None = None) -> str:
    """report.html/report.md of a standalone `esgrpo sequence` run; returns the Markdown."""
    out = Path(out)
    data = data or json.loads((out / "sequence.json").read_text())
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    doc = Document(f"esgrpo sequence: {(data.get('settings') or data['header'])['model']}")
    add_sequential_section(doc, data, figs)
    doc.write(out)
    return doc.markdown(out)
