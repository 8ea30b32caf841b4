"""Report section "Theory": the random-walk predictions against the study's ES runs, and the toy landscape."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from esgrpo.report.document import Document
from esgrpo.report.geometry import _f, _pct, _plt, save_figure


def add_theory_section(doc: Document, a: dict[str, Any], figs: Path, toy: dict[str, Any] | None = None,
                       grpo: Any = None) -> None:
    """grpo: the study's GRPOConfig (lr, steps, schedule), for GRPO's predicted norm."""
    th = a.get("theory", {})
    walks = th.get("walks", {})
    if not walks and toy is None:
        return
    doc.heading("Theory")
    if walks:
        first = next(iter(walks.values()))
        doc.para(f"The paper's theory: an ES step is a signal in a few directions plus an isotropic random walk in "
                 f"the rest, so ||dtheta_ES|| ~ alpha sqrt(d T / N) whatever the task. Here alpha = {first['alpha']}, "
                 f"N = {first['population']}, d = {first['d']:,}. 'Conditioned' uses the logged coefficients "
                 "(d x sum of squared coefficients; differs from the paper's when fitness ties zero an iteration). "
                 f"Random-walk fraction: {first['random_walk_rule']}. Aligned with GRPO: cosine between the ES "
                 "walk and the GRPO update (exact, from the replayed walk).")
        rows = []
        for t, w in walks.items():
            pred = w["predicted_norm_paper"]
            rows.append([t, str(w["iterations"]), _f(w["measured_norm"], ".4g"), _f(pred, ".4g"),
                         _f(w["measured_norm"] / pred, ".3f") if pred else "-",
                         _f(w["predicted_norm_conditioned"], ".4g"), _f(w["r2_sq_vs_t"], ".4f"),
                         f"{_pct(w['random_walk_fraction'], '.0f')}% of {w['n_matrices']}",
                         str(w["zero_update_iterations"]), _f(w.get("aligned_cosine"), "+.4f"),
                         _f(w["decomposition_rel_error"], ".1e")])
        doc.table(["task", "T", "measured ||dES||", "alpha sqrt(dT/N)", "measured / predicted", "conditioned",
                   "R^2 of ||d||^2 vs t", "random-walk matrices", "zero-update iterations", "cos(walk, dGRPO)",
                   "decomposition error"], rows)
        norm_rows = _norm_rows(a, walks, grpo)
        if norm_rows:
            doc.para("Norms predicted before training, from the settings alone: ES alpha sqrt(d T / N); GRPO the "
                     "AdamW random walk (every coordinate moves about lr per step whatever its gradient's scale; "
                     "theory/adamw.py, the run's learning-rate schedule), so the ES/GRPO ratio is fixed by alpha, "
                     "N, T against lr and the steps. Measured: ||theta - theta_base|| of the final checkpoints.")
            doc.table(["task", "ES short: predicted / measured", "ES long: predicted / measured",
                       "GRPO: predicted / measured", "ES long / GRPO: predicted / measured"], norm_rows)
        kl_rows = _kl_rows(a, th)
        if kl_rows:
            doc.para("Off-task KL: predicted 1/2 (sum of squared ES coefficients) tr(F_B), with tr(F_B) the base "
                     "model's sequence-level Fisher trace on task B (mean ||grad log p(y|x)||^2 over sampled "
                     "responses), against the measured KL(pi_ES || pi_base) on task B's prompts (nats per response). "
                     "The quadratic model holds while KL is small; past a few nats it under-estimates. 'Exact "
                     "random walk': the same random-walk model without the quadratic approximation, the KL of the "
                     "base model moved by a random Gaussian step of the walk's size alpha sqrt(T / N) per weight "
                     "(mean over random steps; theory/validate.random_walk_kl), predicted from the settings and the "
                     "base model alone.")
            doc.table(["trained on", "method", "KL on", "tr(F_B)", "predicted KL (quadratic)", "measured KL",
                       "measured / quadratic", "predicted KL (exact random walk)", "measured / exact"], kl_rows)
        _walk_figures(doc, walks, figs)
    if toy is not None:
        _toy_part(doc, toy, figs)


def _norm_rows(a: dict[str, Any], walks: dict[str, Any], grpo: Any) -> list[list[str]]:
    from esgrpo.theory.adamw import grpo_norm, schedule
    from esgrpo.theory.predict import es_norm

    if grpo is None or not grpo.steps:
        return []
    rows = []
    short = a.get("es_short_iterations")
    for t, w in walks.items():
        norms = a.get("weights", {}).get(t, {}).get("norms", {})
        measured = {m: norms[m]["total"]["abs"] for m in ("es_short", "es_long", "grpo") if m in norms}
        if "grpo" not in measured or "es_long" not in measured:
            continue
        es_long = es_norm(w["alpha"], w["population"], w["iterations"], w["d"])
        es_short = es_norm(w["alpha"], w["population"], short, w["d"]) if short else None
        g = grpo_norm(schedule(grpo.lr, grpo.steps, grpo.lr_schedule, grpo.warmup_steps, grpo.schedule_steps), w["d"])
        rows.append([t, f"{_f(es_short, '.3g')} / {_f(measured.get('es_short'), '.3g')}",
                     f"{es_long:.3g} / {measured['es_long']:.3g}", f"{g:.3g} / {measured['grpo']:.3g}",
                     f"{es_long / g:.3g} / " + (f"{measured['es_long'] / measured['grpo']:.3g}" if measured["grpo"]
                                                else "- (GRPO did not move)")])
    return rows


def _kl_rows(a: dict[str, Any], th: dict[str, Any]) -> list[list[str]]:
    fisher = th.get("fisher", {})
    rows = []
    short = a.get("es_short_iterations")
    for t, w in th.get("walks", {}).items():
        for m, T in (("es_short", short), ("es_long", w["iterations"])):
            if not T or len(w["cum_coef_sq"]) < T or m not in a.get("kl", {}).get(t, {}):
                continue
            for b, f in fisher.items():
                if b == t or b not in a["kl"][t][m]:
                    continue
                pred = 0.5 * w["cum_coef_sq"][T - 1] * f["trace"]
                meas = a["kl"][t][m][b]["kl"]
                exact = th.get("random_walk_kl", {}).get(str(T), {}).get("kl", {}).get(b)
                rows.append([t, f"{'ES short' if m == 'es_short' else 'ES long'} (T={T})", b, _f(f["trace"], ".4g"),
                             _f(pred, ".3g"), _f(meas, ".3g"), _f(meas / pred, ".2f") if pred else "-",
                             _f(exact, ".3g"), _f(meas / exact, ".2f") if exact else "-"])
    return rows


def _walk_figures(doc: Document, walks: dict[str, Any], figs: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for t, w in walks.items():
        ts = list(range(1, w["iterations"] + 1))
        (line,) = axes[0].plot(ts, w["measured_sq"], marker="o", ms=2, label=f"{t} measured")
        axes[0].plot(ts, w["predicted_sq_conditioned"], ls=":", color=line.get_color())
    first = next(iter(walks.values()))
    axes[0].plot(range(1, first["iterations"] + 1), first["predicted_sq_paper"], color="black", lw=1,
                 label="alpha^2 d t / N")
    axes[0].set_xlabel("ES iteration t")
    axes[0].set_ylabel("||theta_t - theta_0||^2")
    axes[0].legend(fontsize=7)
    ratios = [r for w in walks.values() for r in w.get("tensor_ratios", {}).values()
              if r is not None and not math.isnan(r)]
    axes[1].hist(ratios, bins=30, color="#3182bd")
    axes[1].axvline(1.0, color="black", lw=1)
    axes[1].set_xlabel("measured / predicted squared drift per weight matrix")
    axes[1].set_ylabel("matrices (all tasks)")
    save_figure(doc, fig, figs / "theory_walk.png",
                "Left: squared ES drift per iteration for each task's ES-long run, replayed "
               "from its update log (dotted: the random-walk prediction from the logged coefficients; black: the "
               "paper's alpha^2 d t / N). Right: measured over predicted squared drift for every weight matrix.")


def _toy_part(doc: Document, toy: dict[str, Any], figs: Path) -> None:
    doc.heading("Toy landscape", level=3)
    doc.para(toy.get("description", ""))
    rows = [[k, _f(v, ".4g") if isinstance(v, float) else str(v)] for k, v in toy.get("summary", {}).items()]
    if rows:
        doc.table(["quantity", "value"], rows)
    if toy.get("figure"):
        doc.figure(Path(toy["figure"]), toy.get("caption", "Toy landscape."))


def toy_summary(figs: Path, seed: int = 0) -> dict[str, Any]:
    """Run the toy landscape (theory/toy.py, ~2 s) and draw its panels; the dict `add_theory_section` shows."""
    import numpy as np

    from esgrpo.theory.toy import four_phenomena

    r = four_phenomena(seed=seed)
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].bar(["||dES||", "alpha sqrt(dT/N)", "||dGA||"], [r["norm_es"], r["norm_es_predicted"], r["norm_ga"]],
                color=["#3182bd", "#9ecae1", "#e6550d"])
    axes[0].set_ylabel("distance from theta_0")
    t, curve = np.asarray(r["offtask_t"]), np.asarray(r["offtask_es_curve"])
    axes[1].plot(t, curve, label="ES: 1/2 w^T C_B w (measured)")
    axes[1].plot(t, r["offtask_slope_predicted"] * t, ls=":", color="black", label="1/2 alpha^2 t / N tr(P C_B P)")
    axes[1].axhline(r["offtask_ga"], color="#e6550d", label="gradient ascent (final)")
    axes[1].set_xlabel("iteration t")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path = figs / "theory_toy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    keys = ["norm_ratio", "norm_es", "norm_es_predicted", "cos", "cos_random", "cos_signal_scale", "barrier",
            "offset_flat_share", "offtask_es", "offtask_ga", "offtask_slope", "offtask_slope_predicted", "offtask_r2"]
    return {"description": "Quadratic J_A = 1 - 1/2 (theta - theta*)^T C (theta - theta*) in d = 500 dimensions with "
                           "r = 4 stiff directions; ES (z-scored, N = 30) against gradient ascent run until it "
                           "matches ES's J_A; task B shares 2 of A's stiff directions and has 14 that are flat for "
                           "A (means over 32 seeded repetitions, theory/toy.py).",
            "summary": {k: float(r[k]) for k in keys}, "figure": str(path),
            "caption": "Toy landscape. Left: ES travels far further than gradient ascent for the same J_A, as "
                       "alpha sqrt(dT/N) predicts. Right: ES's off-task loss on task B grows linearly in t at the "
                       "predicted slope; gradient ascent's stays near 0."}
