"""Report sections for the geometry analyses (from `<study>/analysis.json`): tables and figures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from esgrpo.config import variant_arms
from esgrpo.report.document import Document


class _Named(dict):
    """A lookup whose missing keys give `default(key)`: an ES variant arm is labelled by its own name and drawn in
    matplotlib's next colour (None)."""

    def __init__(self, items: dict[str, Any], default: Any) -> None:
        super().__init__(items)
        self.default = default

    def __missing__(self, key: str) -> Any:
        return self.default(key)


LABELS = _Named({"es_short": "ES short", "es_long": "ES long", "grpo": "GRPO", "es": "ES long", "random": "random"},
                lambda key: key)
COLORS = _Named({"es_short": "#9ecae1", "es_long": "#3182bd", "es": "#3182bd", "grpo": "#e6550d", "random": "#888888"},
                lambda key: None)


def _f(x: Any, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def _pct(x: Any, spec: str = ".1f") -> str:
    """100 x, formatted; '-' for missing values (NaN is stored as null in JSON)."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(100 * x, spec)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(doc: Document, fig: Any, path: Path, caption: str) -> None:
    """Lay out, write (PNG, 110 dpi) and close a matplotlib figure, then add it to the report."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    doc.figure(path, caption)


def add_geometry_sections(doc: Document, root: Path) -> None:
    """Append the geometry sections if the study has an analysis.json."""
    path = Path(root) / "analysis.json"
    if not path.exists():
        return
    a = json.loads(path.read_text())
    figs = Path(root) / "figures"
    figs.mkdir(exist_ok=True)
    if a.get("weights"):
        norms_section(doc, a, figs)
        cosine_section(doc, a)
        sparsity_section(doc, a)
    if a.get("kl"):
        kl_section(doc, a, figs)
    if a.get("interpolation"):
        interpolation_section(doc, a, figs)
    if a.get("probes"):
        probes_section(doc, a, figs)
    if a.get("capability"):
        capability_section(doc, a)
    if any(len(w["norms"]) > 3 for w in a.get("weights", {}).values()):
        variants_section(doc, a)


def variants_section(doc: Document, a: dict[str, Any]) -> None:
    """The ES variant arms (es_variants) beside ES short, ES long and GRPO: norm against its prediction, cosines,
    KL drift, held-out NLL change and the barriers from ES short and to GRPO."""
    doc.heading("ES variant arms: geometry")
    doc.para("Each variant is one ES run per task (es_variants). Norm: ||theta - theta_base|| over the walk's "
             "prediction (alpha sqrt(dT/N); with the l2 anchor its Ornstein-Uhlenbeck level, theory/predict.awd_norm); "
             "cosines of its update with the other arms' (1/sqrt(d) is two random directions' scale); KL to the base "
             "on the trained task's prompts and the mean over the others (nats per response); accuracy barriers "
             "(points) along ES short -> variant and variant -> GRPO.")
    rows = []
    for t, w in a["weights"].items():
        for v in variant_arms(w["norms"]):
            walk = a.get("theory", {}).get("walks", {}).get(t, {}).get("variants", {}).get(v, {})
            ng = w["norms"]["grpo"]["total"]["abs"]
            nv = w["norms"][v]["total"]["abs"]
            cos = {pair.replace(f"|{v}", "").replace(f"{v}|", ""): c["cosine"] for pair, c in w["cosine"].items()
                   if v in pair.split("|")}
            kl = a.get("kl", {}).get(t, {}).get(v, {})
            off = [r["kl"] for e, r in kl.items() if e != t]
            nll, nll0 = (a.get("capability", {}).get(t, {}).get(v, {}).get("nll"),
                         a.get("capability", {}).get("base", {}).get("nll"))
            bars = [a.get("interpolation", {}).get(t, {}).get(p, {}).get("barriers", {}).get(f"{t}/accuracy")
                    for p in (f"es_short->{v}", f"{v}->grpo")]
            rows.append([t, v, f"{_f(nv)} / {_f(walk.get('predicted'))}", _f(nv / ng if ng else None),
                         ", ".join(f"{LABELS[k]} {_f(x, '.3g')}" for k, x in cos.items()),
                         _f(kl.get(t, {}).get("kl")), _f(sum(off) / len(off)) if off else "-",
                         _f(nll - nll0, "+.3f") if nll is not None and nll0 is not None else "-",
                         *(_pct(b, "+.1f") for b in bars)])
    doc.table(["task", "arm", "norm / predicted", "norm / GRPO's", "cosine with", "on-task KL", "mean off-task KL",
               "held-out NLL change", "barrier from ES short", "barrier to GRPO"], rows)


def norms_section(doc: Document, a: dict[str, Any], figs: Path) -> None:
    doc.heading("Update norms")
    doc.para("||theta - theta_base||_2 over all parameters, in fp32 from the stored checkpoints, and relative to "
             "||theta_base||. The paper (Qwen3-4B) reports ||dES|| ~ 87 against ||dGRPO|| ~ 1 after one task (~90x).")
    rows = []
    for t, w in a["weights"].items():
        n = w["norms"]
        ratio = n["es_long"]["total"]["abs"] / n["grpo"]["total"]["abs"] if n["grpo"]["total"]["abs"] else None
        ratio_s = n["es_short"]["total"]["abs"] / n["grpo"]["total"]["abs"] if n["grpo"]["total"]["abs"] else None
        rows.append([t, *[f"{_f(n[m]['total']['abs'])} ({_pct(n[m]['total']['relative'], '.2g')}%)"
                          for m in ("es_short", "es_long", "grpo")], _f(ratio_s), _f(ratio)])
    doc.table(["task", "ES short", "ES long", "GRPO", "ES short / GRPO", "ES long / GRPO"], rows)
    modules = sorted({k for w in a["weights"].values() for k in w["norms"]["es_long"]["per_module"]})
    rows = []
    for t, w in a["weights"].items():
        for m in ("es_long", "grpo"):
            pm = w["norms"][m]["per_module"]
            rows.append([t, LABELS[m], *[_f(pm[k]["abs"]) if k in pm else "-" for k in modules]])
    doc.para("Per module type (absolute norm):")
    doc.table(["task", "method", *modules], rows)
    tasks = list(a["weights"])
    plt = _plt()
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.2), squeeze=False)
    for ax, t in zip(axes[0], tasks, strict=True):
        layers = list(a["weights"][t]["norms"]["es_long"]["per_layer"])
        w = 0.4
        for i, m in enumerate(("es_long", "grpo")):
            vals = [a["weights"][t]["norms"][m]["per_layer"][k]["abs"] for k in layers]
            ax.bar([j + (i - 0.5) * w for j in range(len(layers))], vals, w, label=LABELS[m], color=COLORS[m])
        ax.set_yscale("log")
        ax.set_xticks(range(len(layers)), [k.replace("layer ", "L") for k in layers], fontsize=7, rotation=45)
        ax.set_title(t, fontsize=9)
    axes[0][0].set_ylabel("||delta|| per layer (log)")
    axes[0][0].legend(fontsize=7)
    save_figure(doc, fig, figs / "norms_per_layer.png",
                "Update norm per transformer layer (non-layer = embeddings and the "
               "final norm), ES long vs GRPO, each trained on the task in the panel title; log scale.")


def cosine_section(doc: Document, a: dict[str, Any]) -> None:
    doc.heading("Update directions")
    first = next(iter(a["weights"].values()))["cosine"]["es_long|grpo"]
    doc.para(f"Cosine between two updates from the same base, over all d = {first['d']:,} parameters. For scale: two "
             f"independent random directions have E|cos| = {_f(first['random_baseline'])} (about sqrt(2/(pi d))); "
             f"1/sqrt(d) = {_f(first['inv_sqrt_d'])}. The paper finds ES and GRPO updates nearly orthogonal.")
    rows = []
    for t, w in a["weights"].items():
        c = w["cosine"]
        rows.append([t, *[_f(c[k]["cosine"], ".4f") for k in ("es_long|grpo", "es_short|grpo", "es_short|es_long")],
                     ", ".join(f"{k} {_f(v, '.3f')}" for k, v in c["es_long|grpo"]["per_module"].items())])
    doc.table(["task", "cos(ES long, GRPO)", "cos(ES short, GRPO)", "cos(ES short, ES long)",
               "cos(ES long, GRPO) per module type"], rows)
    if a.get("cross_task"):
        doc.para("Across tasks (same method, different trained task):")
        doc.table(["method: task pair", "cosine"], [[k, _f(v, ".4f")] for k, v in a["cross_task"].items()])


def sparsity_section(doc: Document, a: dict[str, Any]) -> None:
    doc.heading("Sparsity and rank of the updates")
    atol = a.get("config", {}).get("sparsity_atol", 0.0)
    doc.para(f"Changed = |delta| > {atol:g} (fp32 checkpoints). 'Below bf16 spacing' = share of the changed weights "
             "whose change is smaller than one bf16 step at that weight: such updates would vanish if the model "
             "were stored in bf16. Effective rank = exp(entropy of the normalised singular values) of each update "
             "matrix, as a fraction of its full rank, averaged over matrices.")
    rows = []
    for t, w in a["weights"].items():
        for m in ("es_short", "es_long", "grpo"):
            s, r = w["sparsity"][m], w["rank"][m]
            rows.append([t, LABELS[m], _pct(s["frac_changed"], ".1f"),
                         _pct(s.get("frac_changed_below_bf16_spacing")),
                         _f(r["mean_effective_rank_fraction"], ".2f")])
    doc.table(["task", "method", "changed (%)", "changes below bf16 spacing (%)", "effective rank / full rank"], rows)


def kl_section(doc: Document, a: dict[str, Any], figs: Path) -> None:
    doc.heading("KL drift (on-task and off-task)")
    some = next(iter(next(iter(a["kl"].values())).values()))
    est = next(iter(some.values()))
    doc.para(f"KL(pi_method || pi_base) in nats per response, mean +- standard error over {est['n']} sampled "
             f"responses per task ({est['n_prompts']} test prompts x {est['samples_per_prompt']}); estimator: "
             f"{est['estimator']}. Rows: method and the task it was trained on; columns: the task whose prompts are "
             "used. The diagonal (**bold**) is on-task drift, the rest off-task. The paper finds GRPO's drift "
             "concentrated on the trained task and ES drifting on every task (e.g. 0.23 vs 0.01 nats on BoolQ).")
    eval_tasks = list(some)
    rows = []
    for t, per_m in a["kl"].items():
        for m, per_task in per_m.items():
            cells = []
            for e in eval_tasks:
                r = per_task[e]
                cell = f"{_f(r['kl'])} +- {_f(r['kl_se'], '.2g')}"
                cells.append(f"**{cell}**" if e == t else cell)
            off = [per_task[e]["kl"] for e in eval_tasks if e != t]
            rows.append([t, LABELS[m], *cells, _f(sum(off) / len(off)) if off else "-"])
    doc.table(["trained on", "method", *eval_tasks, "mean off-task"], rows)
    plt = _plt()
    trained = list(a["kl"])
    fig, ax = plt.subplots(figsize=(7, 3.2))
    w = 0.25
    for i, m in enumerate(("es_short", "es_long", "grpo")):
        on = [a["kl"][t][m][t]["kl"] for t in trained]
        off = [sum(a["kl"][t][m][e]["kl"] for e in eval_tasks if e != t) / max(1, len(eval_tasks) - 1)
               for t in trained]
        xs = [j + (i - 1) * w for j in range(len(trained))]
        ax.bar(xs, on, w, color=COLORS[m], label=f"{LABELS[m]} on-task")
        ax.scatter(xs, off, color="black", marker="_", s=200, zorder=3, label="mean off-task" if i == 0 else None)
    ax.set_xticks(range(len(trained)), trained)
    ax.set_ylabel("KL to base (nats / response)")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.legend(fontsize=7)
    save_figure(doc, fig, figs / "kl_drift.png", "KL drift from the base model: bars = on the trained task's prompts, "
               "black ticks = mean over the other tasks' prompts; one group per trained task.")


def interpolation_section(doc: Document, a: dict[str, Any], figs: Path) -> None:
    doc.heading("Linear connectivity")
    doc.para("Metrics along theta(a) = (1 - a) theta_A + a theta_B. Barrier = max over a of (straight line between "
             "the end values - value at a) for accuracy (higher is better) and the opposite for NLLs; positive = "
             "a dip (or bump) between the ends, 0 = none. ref NLL is the per-token NLL of the base model's greedy "
             "answers; held-out NLL is the tiny model's pretraining held-out slice. The paper finds no barrier "
             "between ES and GRPO solutions.")
    rows = []
    for t, paths in a["interpolation"].items():
        for name, r in paths.items():
            b = r["barriers"]
            pts = r["points"]
            acc = f"{t}/accuracy"
            rows.append([t, name, _pct(pts[0]["metrics"][acc], ".1f"), _pct(pts[-1]["metrics"][acc], ".1f"),
                         _pct(min(p["metrics"][acc] for p in pts), ".1f"), _pct(b[acc], "+.1f"),
                         _f(b.get("ref_nll"), "+.3f"), _f(b.get("heldout_nll"), "+.3f")])
    doc.table(["task", "path", "acc. at a=0 (%)", "acc. at a=1 (%)", "min acc. (%)", "accuracy barrier (points)",
               "ref NLL barrier", "held-out NLL barrier"], rows)
    tasks = list(a["interpolation"])
    plt = _plt()
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.2), squeeze=False)
    styles = {"base->es_long": COLORS["es_long"], "base->grpo": COLORS["grpo"], "es_long->grpo": "#31a354"}
    for ax, t in zip(axes[0], tasks, strict=True):
        for name, r in a["interpolation"][t].items():
            ax.plot([p["alpha"] for p in r["points"]], [100 * p["metrics"][f"{t}/accuracy"] for p in r["points"]],
                    marker="o", ms=3, color=styles.get(name), label=name)
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("a")
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=7)
    save_figure(doc, fig, figs / "interpolation.png",
                "Accuracy on the trained task along the straight lines base->ES long, "
               "base->GRPO and ES long->GRPO (runs trained on the task in the panel title; first "
               f"{a.get('config', {}).get('n_examples', '?')} test examples).")


def probes_section(doc: Document, a: dict[str, Any], figs: Path) -> None:
    doc.heading("Direction probes")
    doc.para("Accuracy along theta_base + t u for the unit ES-long direction, the unit GRPO direction and a seeded "
             "random unit direction; t spans both methods' actual displacements (marked). Off-task = mean over "
             "the tasks not trained. The paper: GRPO's direction peaks fast then falls, ES's needs a much larger "
             "displacement, and off-task the ES direction behaves like a random one.")
    skipped = [t for t, p in a["probes"].items() if "directions" not in p]
    if skipped:
        doc.para("Not probed (both updates zero): " + ", ".join(skipped) + ".")
    tasks = [t for t in a["probes"] if t not in skipped]
    if not tasks:
        return
    plt = _plt()
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.6 * len(tasks), 5.6), squeeze=False)
    rows = []
    for j, t in enumerate(tasks):
        p = a["probes"][t]
        for label, d in p["directions"].items():
            ts = [pt["t"] for pt in d["points"]]
            on = [100 * pt["metrics"][f"{t}/accuracy"] for pt in d["points"]]
            others = [k[:-len("/accuracy")] for k in d["points"][0]["metrics"]
                      if k.endswith("/accuracy") and k != f"{t}/accuracy"]
            off = [100 * sum(pt["metrics"][f"{o}/accuracy"] for o in others) / max(1, len(others))
                   for pt in d["points"]]
            axes[0][j].plot(ts, on, marker="o", ms=3, color=COLORS.get(label), label=LABELS.get(label, label))
            axes[1][j].plot(ts, off, marker="o", ms=3, color=COLORS.get(label), label=LABELS.get(label, label))
            for pt in d["points"]:
                for m in (k for k in ("es", "grpo") if k in p["directions"]):
                    if abs(pt["t"] - float(f"{p['directions'][m]['norm']:.6g}")) < 1e-9 * max(1.0, pt["t"]):
                        rows.append([t, LABELS.get(label, label), f"||d {LABELS[m]}|| = {_f(pt['t'])}",
                                     _pct(pt["metrics"][f"{t}/accuracy"], ".1f"),
                                     _f(sum(100 * pt["metrics"][f"{o}/accuracy"] for o in others) / max(1, len(others)),
                                        ".1f")])
        for ax in axes[:, j]:
            ax.set_xscale("symlog", linthresh=min(x["norm"] for x in p["directions"].values() if x["norm"]) / 2)
            for m in (k for k in ("es", "grpo") if k in p["directions"]):
                ax.axvline(p["directions"][m]["norm"], color=COLORS[m], ls=":", lw=1)
        axes[0][j].set_title(t, fontsize=9)
        axes[1][j].set_xlabel("t (distance from base)")
    axes[0][0].set_ylabel("trained task acc. (%)")
    axes[1][0].set_ylabel("off-task mean acc. (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figs / "probes.png", dpi=110)
    plt.close(fig)
    doc.table(["trained task", "direction", "t", "trained-task acc. (%)", "off-task mean acc. (%)"], rows)
    doc.figure(figs / "probes.png", "Direction probes: accuracy on the trained task (top) and mean accuracy on the "
               "other tasks (bottom) at theta_base + t u; dotted lines mark ||dES long|| and ||dGRPO||; first "
               f"{a.get('config', {}).get('probe_n_examples', '?')} test examples per task.")


def capability_section(doc: Document, a: dict[str, Any]) -> None:
    doc.heading("Held-out capability (pretraining NLL)")
    cap = a["capability"]
    base = cap.get("base", {}).get("nll")
    doc.para(f"Per-token NLL of the tiny model's held-out pretraining documents (the stand-in for MMLU/IFEval): "
             f"base {_f(base, '.4f')}. Positive change = capability lost.")
    rows = []
    for t, per_m in cap.items():
        if t == "base":
            continue
        rows.append([t, *[f"{_f(per_m[m]['nll'], '.4f')} ({_f(per_m[m]['nll'] - base, '+.4f')})" if m in per_m else "-"
                          for m in ("es_short", "es_long", "grpo")]])
    doc.table(["trained on", "ES short", "ES long", "GRPO"], rows)
