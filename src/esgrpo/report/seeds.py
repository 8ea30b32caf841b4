"""The report of a study over several seeds: findings, Table 1 with intervals and error bars, the nulls
between seeds, the geometry and sequential numbers with intervals (from `<out>/results.json`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from esgrpo.analysis.seeds import interval_note
from esgrpo.config import variant_arms
from esgrpo.report.document import Document
from esgrpo.report.geometry import _plt, save_figure
from esgrpo.runs import read_json

LABELS = {"base": "base", "es_short": "ES short", "es_long": "ES long", "grpo": "GRPO"}


def ci(iv: dict[str, Any] | None, scale: float = 100.0, spec: str = ".1f") -> str:
    """'mean [lo, hi]' (x scale), the mean alone for one seed, '-' when missing."""
    if not iv or iv.get("mean") is None:
        return "-"
    m = format(scale * iv["mean"], spec)
    return m if iv.get("lo") is None else f"{m} [{format(scale * iv['lo'], spec)}, {format(scale * iv['hi'], spec)}]"


def variants_of(t1: dict[str, Any]) -> list[str]:
    """The ES variant arms (es_variants) in Table 1's numbers, in their order."""
    return variant_arms(dict.fromkeys(k.split("/gain ")[1] for k in t1 if "/gain " in k))


def arms_of(t1: dict[str, Any]) -> list[str]:
    return [*LABELS, *variants_of(t1)]


def table1_rows(agg: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    t1 = agg["table1"]
    tasks = list(dict.fromkeys(k.split("/")[0] for k in t1))
    arms = arms_of(t1)
    header = ["task", *(LABELS.get(m, m) for m in arms), "gain ES short", "gain GRPO", "ES short - GRPO"]
    rows = [[t, *(ci(t1.get(f"{t}/{m}")) for m in arms), ci(t1.get(f"{t}/gain es_short")),
             ci(t1.get(f"{t}/gain grpo")), ci(t1.get(f"{t}/es_short - grpo"))] for t in tasks]
    return header, rows


def variant_rows(agg: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per task and ES variant arm: accuracy against ES short and GRPO, then its geometry beside theirs."""
    t1, geo, nulls = agg["table1"], agg.get("geometry", {}), agg.get("nulls", {})
    tasks = list(dict.fromkeys(k.split("/")[0] for k in t1))
    header = ["task", "arm", "accuracy", "minus ES short", "minus GRPO", "norm / predicted", "norm / GRPO's",
              "cos with ES short", "cos with GRPO", "cos arm-vs-arm (seeds)", "off-task KL minus ES short",
              "barrier to GRPO", "barrier arm-vs-arm (seeds)"]
    rows = []
    for t in tasks:
        n = nulls.get(t, {})
        for v in variants_of(t1):
            rows.append([t, v, ci(t1.get(f"{t}/{v}")), ci(t1.get(f"{t}/{v} - es_short")),
                         ci(t1.get(f"{t}/{v} - grpo")), ci(geo.get(f"{t}/norm {v} / predicted"), 1.0, ".4g"),
                         ci(geo.get(f"{t}/norm ratio {v}/grpo"), 1.0, ".3g"),
                         ci(geo.get(f"{t}/cosine es_short|{v}"), 1.0, ".3g"),
                         ci(geo.get(f"{t}/cosine grpo|{v}"), 1.0, ".3g"), ci(n.get(f"cosine {v}|{v}"), 1.0, ".3g"),
                         ci(geo.get(f"{t}/off-task KL {v} - es_short"), 1.0, ".3g"),
                         ci(n.get(f"barrier {v}|grpo")), ci(n.get(f"barrier {v}|{v}"))])
    return header, rows


def variant_sequence_rows(agg: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per ES variant arm: its mean forgetting in the sequence (one number over all tasks) minus ES
    short's and minus GRPO's."""
    seq = agg.get("sequence", {})
    return (["arm", "forgetting minus ES short", "forgetting minus GRPO"],
            [[v, ci(seq.get(f"mean_forgetting {v} - es_short")), ci(seq.get(f"mean_forgetting {v} - grpo"))]
             for v in variants_of(agg["table1"]) if f"mean_forgetting {v} - es_short" in seq])


def table1_figure(agg: dict[str, Any]) -> Any:
    """Grouped bars (mean accuracy) with 95% interval error bars and one dot per seed (None: nothing to draw)."""
    t1 = agg["table1"]
    tasks = list(dict.fromkeys(k.split("/")[0] for k in t1))
    if not tasks:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    arms = arms_of(t1)
    width = 0.8 / len(arms)
    for j, m in enumerate(arms):
        for i, t in enumerate(tasks):
            iv = t1.get(f"{t}/{m}")
            if not iv or iv.get("mean") is None:
                continue
            x = i + (j - (len(arms) - 1) / 2) * width
            err = None if iv.get("lo") is None else [[100 * (iv["mean"] - iv["lo"])], [100 * (iv["hi"] - iv["mean"])]]
            ax.bar(x, 100 * iv["mean"], width, color=f"C{j}", label=LABELS.get(m, m) if i == 0 else None, yerr=err,
                   capsize=3)
            ax.plot([x] * len(iv["values"]), [100 * v for v in iv["values"]], "k.", ms=3)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8, ncol=4)
    return fig


def nulls_rows(agg: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["task", "cos ES-vs-ES", "cos GRPO-vs-GRPO", "cos ES-vs-GRPO (same seed)", "cos ES-vs-GRPO (other seeds)",
              "1/sqrt(d)", "barrier ES-vs-ES", "barrier GRPO-vs-GRPO", "barrier ES-vs-GRPO"]
    rows = []
    for t, n in agg.get("nulls", {}).items():
        cos = [ci(n.get(f"cosine {k}"), 1.0, ".3g") for k in ("es_long|es_long", "grpo|grpo", "es_long|grpo",
                                                               "es_long|grpo (other seeds)")]
        bars = [ci(n.get(f"barrier {k}")) for k in ("es_long|es_long", "grpo|grpo", "es_long|grpo")]
        rows.append([t, *cos, f"{n.get('inv_sqrt_d') or float('nan'):.2g}", *bars])
    return header, rows


def barrier_path_rows(agg: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Every barrier path with its bootstrap interval over test examples."""
    rows = []
    for t, n in agg.get("nulls", {}).items():
        for kind in [k[len("barrier "):] for k in n if k.startswith("barrier ")]:
            for p in (n.get(f"barrier {kind}") or {}).get("paths", []):
                label = p.get("path", kind).replace("es_long@", "ES seed ").replace("grpo@", "GRPO seed ")
                rows.append([t, label.replace("->", " -> "),
                             f"{100 * p['value']:.1f} [{100 * p['lo']:.1f}, {100 * p['hi']:.1f}]", str(p["n"])])
    return ["task", "path", "barrier (points) [bootstrap 95%]", "examples"], rows


def in_points(key: str) -> bool:
    """Accuracies, gains, forgetting and accuracy barriers are shown in points (x 100); norms, cosines, KL, NLL not."""
    return "KL" not in key and any(w in key for w in ("accuracy", "bwt", "forgetting", "gain", "barrier"))


def part_rows(part: dict[str, Any]) -> list[list[str]]:
    rows = []
    for k, v in part.items():
        scale = 100.0 if in_points(k) else 1.0
        spec = ".1f" if scale == 100.0 else ".3g"  # points to a tenth, like the mean (a difference of equal
        # accuracies can come out as 1e-15 of float round-off)
        rows.append([k + (" (points)" if scale == 100.0 else ""), ci(v, scale, spec),
                     str(v.get("n", 0)), ", ".join(f"{scale * x:{spec}}" for x in v.get("values", []))])
    return rows


def write_seeds_report(root: Path) -> str:
    """report.html + report.md of a multi-seed study directory; returns the Markdown."""
    root = Path(root)
    res = read_json(root / "results.json")
    seeds = res.get("seeds", [])
    doc = Document(f"ES vs GRPO over {len(seeds)} seeds")
    dirs = res.get("seed_dirs", {})
    secs = {s: (read_json(Path(d) / "results.json").get("seconds") if (Path(d) / "results.json").exists() else None)
            for s, d in dirs.items()}
    doc.para(f"Seeds {', '.join(map(str, seeds))}: each a complete study (es.seed = grpo.seed = the seed; model, "
             "data and analysis seeds fixed), with its own report in `seed-<s>/report.html`. " + interval_note())
    nulls_s = read_json(root / "seeds.json").get("seconds") if (root / "seeds.json").exists() else None
    doc.para("Wall time (summed over the invocations that worked on each): "
             + ", ".join(f"seed {s} {v:.0f} s" for s, v in secs.items() if v)
             + (f", nulls between seeds {nulls_s:.0f} s" if nulls_s else "") + ".")

    doc.heading("Findings")
    doc.table(["claim", "task", "numbers: mean [95% interval]", "verdict"],
              [[f["claim"], f["task"], f["numbers"], f["verdict"]] for f in res.get("findings", [])])

    doc.heading("Table 1 over seeds")
    doc.para("Greedy test accuracy (%), mean [95% interval] over seeds; the base model is the same for every seed.")
    doc.table(*table1_rows(res))
    figs = root / "figures"
    fig = table1_figure(res)
    if fig is not None:
        figs.mkdir(parents=True, exist_ok=True)
        save_figure(doc, fig, figs / "table1-seeds.png", "Test accuracy per task and method: bars the mean over "
                    "seeds, error bars the 95% Student-t interval, dots the seeds.")

    if res.get("nulls"):
        doc.heading("Nulls between seeds")
        doc.para("Cosine of the updates (from the base): ES long vs ES long and GRPO vs GRPO of two seeds on the same "
                 "task are the null for ES vs GRPO; 1/sqrt(d) is the scale of two random directions. Barriers: "
                 "greedy accuracy along the straight path between two checkpoints, the largest dip below the line "
                 "joining its ends (points); mean [95% interval] over the pairs of seeds.")
        doc.table(*nulls_rows(res))
        doc.table(*barrier_path_rows(res))

    if variants_of(res["table1"]):
        doc.heading("ES variant arms")
        doc.para("Each variant (es_variants) is one ES run per task with ES short's budget and seed. Mean [95% "
                 "interval] over seeds: accuracy (%) and its paired differences; the update norm over the walk's "
                 "prediction and over GRPO's; the cosine of its update with ES short's and GRPO's (same seed) beside "
                 "its own seed-vs-seed null; off-task KL (nats) minus ES short's; accuracy barriers (points) to "
                 "GRPO (same seed) and between two seeds of the arm. In the sequence (second table), the arm's mean "
                 "forgetting (points, over all tasks) minus ES short's and minus GRPO's.")
        doc.table(*variant_rows(res))
        header, rows = variant_sequence_rows(res)
        if rows:
            doc.table(header, rows)

    for part, title in (("geometry", "Geometry over seeds"), ("sequence", "Sequential metrics over seeds")):
        if res.get(part):
            doc.heading(title)
            doc.table(["number", "mean [95% interval]", "seeds", "per seed"], part_rows(res[part]))
    doc.write(root)
    return doc.markdown(root)
