"""Command line: argument parsing only; every subcommand calls one function in the package.

Config flags are generated from the config dataclasses: every field `a.b` is `--a.b VALUE` with
the field's help string, applied on top of `--config FILE.yaml`. A few common fields have short
aliases (`--tasks`, `--split`, `--n`, `--source`). Errors in input print one clear line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path
from typing import Any

from esgrpo.config import (
    BuildConfig,
    EvalConfig,
    field_help,
    leaf_types,
    load_config,
    set_dotted,
)
from esgrpo.errors import EsgrpoError

# ----------------------------------------------------------------------------------------------
# Config <-> flags


def _type_note(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " {" + ",".join(map(str, typing.get_args(tp))) + "}"
    if typing.get_origin(tp) is list:
        return " (comma-separated)"
    if typing.get_origin(tp) is dict:
        return " (YAML mapping)"
    return ""


def add_config_args(p: argparse.ArgumentParser, cls: type, aliases: dict[str, str] | None = None,
                    positional: dict[str, str] | None = None) -> None:
    """One `--key` flag per config field (help from the dataclass), plus --config and --set."""
    p.add_argument("--config", metavar="FILE", help="YAML config file (CLI flags override its values).")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="Override any config key, e.g. --set generation.max_new_tokens=64 (repeatable).")
    helps = field_help(cls)
    types_ = leaf_types(cls)
    rev = {v: k for k, v in (aliases or {}).items()}
    for name, dest in (positional or {}).items():
        p.add_argument(name, nargs="?", default=None, help=helps[dest])
    g = p.add_argument_group("config fields")
    for key, help_ in helps.items():
        flags = [f"--{key}"] + ([f"--{rev[key]}"] if key in rev else [])
        g.add_argument(*flags, dest=f"cfg:{key}", metavar="V", default=None,
                       help=help_ + _type_note(types_[key]))
    p.set_defaults(_config_cls=cls, _positional=positional or {})


def config_from_args(args: argparse.Namespace) -> Any:
    over: dict[str, Any] = {}
    for pair in args.set:
        if "=" not in pair:
            raise EsgrpoError(f"--set '{pair}' must look like key=value")
        k, v = pair.split("=", 1)
        set_dotted(over, k.strip(), v)
    for name, dest in args._positional.items():
        v = getattr(args, name)
        if v is not None:
            set_dotted(over, dest, v)
    for k, v in vars(args).items():
        if k.startswith("cfg:") and v is not None:
            set_dotted(over, k[4:], v)
    return load_config(args._config_cls, args.config, over)


# ----------------------------------------------------------------------------------------------
# Subcommands


def cmd_models_build(args: argparse.Namespace) -> None:
    from esgrpo.models import resolve_model_path

    cfg: BuildConfig = config_from_args(args)
    print(resolve_model_path(cfg.model, cfg.tiny, force=cfg.force))


def cmd_models_list(args: argparse.Namespace) -> None:
    from esgrpo.models import BUILTIN

    for name in BUILTIN:
        print(name)
    print("(or any Hugging Face causal LM id or local path)")


def cmd_tasks_list(args: argparse.Namespace) -> None:
    from esgrpo.tasks import TASK_NAMES, get_task

    for name in TASK_NAMES:
        print(f"{name:10s} {get_task(name).system_prompt}")


def cmd_tasks_show(args: argparse.Namespace) -> None:
    from esgrpo.tasks import load_examples

    exs = load_examples(args.task, args.source, args.split, args.n, seed=args.seed, path=args.path)
    for ex in exs:
        print(json.dumps({"uid": ex.uid, "question": ex.question, "target": ex.target}))


def cmd_eval(args: argparse.Namespace) -> None:
    from esgrpo.study import run_eval

    run_eval(config_from_args(args))


def cmd_study(args: argparse.Namespace) -> None:
    from esgrpo.study import StudyConfig, run_study

    cfg: StudyConfig = config_from_args(args)
    if args.quick:
        cfg = cfg.quick()
    run_study(cfg)


def cmd_sequence(args: argparse.Namespace) -> None:
    from esgrpo.report.sequential import write_sequence_report
    from esgrpo.sequence import run_sequence

    cfg = config_from_args(args)
    data = run_sequence(cfg)
    print(write_sequence_report(Path(cfg.out), data))


def cmd_theory(args: argparse.Namespace) -> None:
    """predict: closed forms; validate: an ES run against them; toy: the quadratic landscape."""
    from esgrpo.theory import predict

    if args.action == "predict":
        if None in (args.alpha, args.N, args.T, args.d):
            raise EsgrpoError("theory predict needs --alpha, --N, --T and --d")
        out: dict[str, Any] = {"es_norm": predict.es_norm(args.alpha, args.N, args.T, args.d),
                               "es_norm_spread": predict.es_norm_spread(args.alpha, args.N, args.T, args.d),
                               "squared_drift_per_iteration": predict.squared_drift(args.alpha, args.N, 1, args.d),
                               "cosine_with_fixed_direction": predict.cosine_with_fixed_direction(args.d, args.r)}
        if args.fisher_trace is not None:
            out["offtask_kl"] = predict.offtask_kl(args.alpha, args.N, args.T, args.fisher_trace)
    elif args.action == "validate":
        from esgrpo.theory.validate import walk_drift

        if args.run_dir is None or args.alpha is None or args.N is None:
            raise EsgrpoError("theory validate needs RUN_DIR, --alpha and --N (the run's ES settings)")
        try:
            out = walk_drift(args.run_dir, args.alpha, args.N, direction=args.direction)
        except (FileNotFoundError, KeyError, ValueError) as e:
            raise EsgrpoError(f"{args.run_dir}: not a readable ES run ({e})") from e
        out.pop("per_tensor")
    else:
        from esgrpo.theory.toy import four_phenomena

        out = {k: v for k, v in four_phenomena(seed=args.seed).items() if not hasattr(v, "shape")}
    print(json.dumps(out, indent=1, default=float))


def cmd_train(args: argparse.Namespace) -> None:
    from esgrpo.train.launch import run_training

    cfg = config_from_args(args)
    out = run_training(args.method, cfg)
    acc = {t: round(100 * v["accuracy"], 1) for t, v in out["eval"]["final"].items()}
    print(json.dumps({"run": out["run"], "test_accuracy_%": acc, "rollouts": out["train"]["rollouts"],
                      "seconds": round(out["train"]["seconds"], 1)}))


def cmd_replay(args: argparse.Namespace) -> None:
    from esgrpo.train.es import replay_run

    res = replay_run(args.run_dir, out_dir=args.out, upto=args.upto, base=args.base, device=args.device)
    print(json.dumps(res))
    if res["matches_final"] is False:
        raise EsgrpoError(f"replayed weights differ from {args.run_dir}/checkpoints/final")


def cmd_bench(args: argparse.Namespace) -> None:
    from esgrpo.bench import bench

    print(bench(args.method, config_from_args(args), iterations=args.iterations))


def _study_config(study_dir: str, overrides: list[str]) -> Any:
    from esgrpo.study import StudyConfig

    path = f"{study_dir}/config.yaml"
    over: dict[str, Any] = {}
    for pair in overrides:
        k, _, v = pair.partition("=")
        set_dotted(over, k.strip(), v)
    if not Path(path).exists():
        raise EsgrpoError(f"{study_dir} is not a study directory (no config.yaml)")
    return load_config(StudyConfig, path, over)


def cmd_report(args: argparse.Namespace) -> None:
    from esgrpo.report.study import write_study_report
    from esgrpo.runs import RunDir

    cfg = _study_config(args.study_dir, [])
    results = RunDir(args.study_dir).read_results()
    if results is None:
        raise EsgrpoError(f"{args.study_dir}/results.json is missing: run `esgrpo study` first")
    write_study_report(Path(args.study_dir), results, cfg)
    print(f"{args.study_dir}/report.html")
    if getattr(args, "screenshot", False):
        from esgrpo.report.render import screenshot

        root = Path(args.study_dir)
        png = screenshot(root / "report.html", root / "figures" / "report-screenshot.png")
        print(png or "no chromium found: install the Debian package `chromium` for --screenshot", file=sys.stderr)


def _analyze_behaviour(args: argparse.Namespace) -> dict[str, Any]:
    """kl CKPT REF | interpolate A B | probe BASE CKPT [CKPT ...], on the synthetic test split."""
    from esgrpo.analysis.connectivity import barriers, default_alphas, interpolate, make_evaluate_fn
    from esgrpo.config import GenerationConfig, ModelConfig
    from esgrpo.tasks import TASK_NAMES, load_examples
    from esgrpo.train.launch import checkpoint_policy

    need = {"kl": 2, "interpolate": 2, "probe": None}[args.what]
    if (need and len(args.paths) != need) or len(args.paths) < 2:
        raise EsgrpoError(f"analyze {args.what} takes {need or 'two or more'} checkpoint paths, got {len(args.paths)}")
    tasks = args.tasks.split(",") if args.tasks else list(TASK_NAMES)
    examples = {t: load_examples(t, "synthetic", "test", args.n, seed=args.seed) for t in tasks}
    model = ModelConfig()  # only its dtype and device rules are used
    policy = checkpoint_policy(args.paths[0], model)
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens)
    if args.what == "kl":
        from esgrpo.analysis.kl import kl_drift

        return kl_drift(policy, checkpoint_policy(args.paths[1], model), examples, args.samples,
                        args.max_new_tokens, seed=0)
    if args.what == "interpolate":
        pts = interpolate(policy, args.paths[0], args.paths[1], default_alphas(args.points),
                          make_evaluate_fn(examples, gen))
        return {"points": pts, "barriers": barriers(pts)}
    from esgrpo.analysis.probes import direction_probe, probe_grid
    from esgrpo.analysis.weights import update_norms

    dirs = {f"d{i}:{Path(c).name}": c for i, c in enumerate(args.paths[1:], start=1)}
    norms = [update_norms(args.paths[0], c)["total"]["abs"] for c in dirs.values()]
    return direction_probe(policy, args.paths[0], dirs, probe_grid(norms, n=args.points),
                           make_evaluate_fn(examples, gen), random_seed=args.seed)


def cmd_analyze(args: argparse.Namespace) -> None:
    """Weight-space analyses print JSON; `study` runs every analysis of a study and rewrites its report."""
    from esgrpo.analysis import weights

    def brief(d: dict[str, Any]) -> dict[str, Any]:
        return d if args.full else {k: v for k, v in d.items() if k not in ("per_tensor", "per_matrix")}

    try:
        if args.what == "study":
            from esgrpo.analysis.study import analyze_study

            cfg = _study_config(args.paths[0], args.set)
            analyze_study(args.paths[0], cfg)
            args.study_dir = args.paths[0]
            cmd_report(args)
            return
        if args.what in ("kl", "interpolate", "probe"):
            print(json.dumps(_analyze_behaviour(args), indent=1, default=float))
            return
        need = {"norms": 2, "cosine": 3, "sparsity": 2, "rank": 2}[args.what]
        if len(args.paths) != need:
            raise EsgrpoError(f"analyze {args.what} takes {need} checkpoint paths, got {len(args.paths)}")
        if args.what == "norms":
            out = brief(weights.update_norms(*args.paths))
        elif args.what == "cosine":
            out = brief(weights.cosine(*args.paths))
        elif args.what == "sparsity":
            out = brief(weights.sparsity(*args.paths, atol=args.atol))
        else:
            out = weights.update_rank(*args.paths, top_k=args.top_k)
            if not args.full:
                out = {k: {"effective_rank": v["effective_rank"], "max_rank": v["max_rank"],
                           "top_singular_values": v["top_singular_values"][:3]} for k, v in out["per_matrix"].items()}
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise EsgrpoError(str(e)) from e
    print(json.dumps(out, indent=1, default=str))


# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from esgrpo.study import StudyConfig

    p = argparse.ArgumentParser(prog="esgrpo", description="Post-train causal LMs with ES and GRPO and "
                                "compare the geometry of their updates.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("study", help="Run a study end to end (the main job): build, evaluate, report.",
                       description="Run a study end to end from a config (default: configs/study-default.yaml "
                       "values built in).")
    add_config_args(s, StudyConfig)
    s.add_argument("--quick", action="store_true", help="Small, fast version of the study (smoke run).")
    s.set_defaults(func=cmd_study)

    from esgrpo.sequence import SequenceConfig

    sq = sub.add_parser("sequence", help="Sequential post-training: the tasks one after another, per method.",
                        description="Train ES short, ES long and GRPO through the tasks in order (each stage from "
                        "the previous stage's weights), measuring every task after every stage; writes "
                        "OUT/sequence.json and OUT/report.html. Resumable. `esgrpo study` runs this too.")
    add_config_args(sq, SequenceConfig, aliases={"out": "out"})
    sq.set_defaults(func=cmd_sequence)

    from esgrpo.train.launch import TrainConfig

    tr = sub.add_parser("train", help="Train one model on one task with ES or GRPO, then evaluate it.",
                        description="Train with ES or GRPO on one task; writes a run directory (metrics.jsonl, "
                        "checkpoints/, updates.jsonl for ES, results.json, eval.json).")
    tr.add_argument("method", choices=["es", "grpo"], help="The trainer.")
    add_config_args(tr, TrainConfig, aliases={"task": "task", "out": "out", "resume": "resume"})
    tr.set_defaults(func=cmd_train)

    rp = sub.add_parser("replay", help="Rebuild an ES run's weights from its base checkpoint and update log.",
                        description="Rebuild the weights of an ES run bit-exactly from checkpoints/step-000000 "
                        "and updates.jsonl, and check them against checkpoints/final.")
    rp.add_argument("run_dir", help="The ES run directory.")
    rp.add_argument("--out", default=None, help="Where to write the rebuilt checkpoint (default RUN_DIR/replay).")
    rp.add_argument("--upto", type=int, default=None, help="Replay only the first UPTO iterations.")
    rp.add_argument("--base", default=None, help="Base checkpoint (default RUN_DIR/checkpoints/step-000000).")
    rp.add_argument("--device", default="cpu", help="Device to replay on (use the training device for exactness).")
    rp.set_defaults(func=cmd_replay)

    b = sub.add_parser("bench", help="Time an ES iteration / GRPO step by phase, and peak memory.",
                       description="Run a few ES iterations or GRPO steps and print seconds per phase, "
                       "throughput and peak memory.")
    b.add_argument("method", choices=["es", "grpo"], help="The trainer.")
    b.add_argument("--iterations", type=int, default=3, help="Iterations/steps to time.")
    add_config_args(b, TrainConfig, aliases={"task": "task"})
    b.set_defaults(func=cmd_bench)

    an = sub.add_parser("analyze", help="Geometry of updates: norms, cosine, sparsity, rank; or a whole study.",
                        description="norms BASE CKPT | cosine BASE A B | sparsity BASE CKPT | rank BASE CKPT: print "
                        "JSON (checkpoints: HF directories or .safetensors files). kl CKPT REF | interpolate A B | "
                        "probe BASE CKPT [CKPT ...]: behaviour on the synthetic test split (HF directories). "
                        "study STUDY_DIR: run every analysis "
                        "of a finished study (norms, cosines, sparsity, rank, KL drift, interpolation, direction "
                        "probes, held-out NLL) into STUDY_DIR/analysis.json and rewrite its report; --set "
                        "analysis.KEY=VALUE changes the analysis settings.")
    an.add_argument("what", choices=["norms", "cosine", "sparsity", "rank", "kl", "interpolate", "probe", "study"],
                    help="Which analysis.")
    an.add_argument("paths", nargs="+", help="Checkpoints (base first), or the study directory.")
    an.add_argument("--atol", type=float, default=0.0, help="sparsity: a weight is changed when |delta| > atol.")
    an.add_argument("--top-k", type=int, default=8, help="rank: singular values kept per matrix.")
    an.add_argument("--full", action="store_true", help="Include per-tensor / per-matrix entries.")
    an.add_argument("--tasks", default="", help="kl/interpolate/probe: comma-separated tasks (default: all).")
    an.add_argument("--n", type=int, default=100, help="kl/interpolate/probe: synthetic test examples per task.")
    an.add_argument("--seed", type=int, default=1234, help="Synthetic data seed (probe: also the random direction).")
    an.add_argument("--samples", type=int, default=1, help="kl: sampled responses per prompt.")
    an.add_argument("--points", type=int, default=11, help="interpolate/probe: grid points.")
    an.add_argument("--max-new-tokens", type=int, default=48, help="kl/interpolate/probe: response length cap.")
    an.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                    help="study: override a study config key, e.g. --set analysis.n_examples=200.")
    an.set_defaults(func=cmd_analyze)

    th = sub.add_parser("theory", help="The ES random-walk theory: predictions, validation on a run, toy landscape.",
                        description="predict --alpha A --N N --T T --d D [--r R] [--fisher-trace F]: closed forms. "
                        "validate RUN_DIR --alpha A --N N [--direction CKPT]: replay an ES run's walk from its log "
                        "against the predictions. toy: the quadratic landscape's four phenomena.")
    th.add_argument("action", choices=["predict", "validate", "toy"], help="What to do.")
    th.add_argument("run_dir", nargs="?", default=None, help="validate: the ES run directory.")
    th.add_argument("--alpha", type=float, default=None, help="ES step size alpha (1/sigma folded in).")
    th.add_argument("--N", type=int, default=None, help="ES population size.")
    th.add_argument("--T", type=int, default=None, help="predict: iterations.")
    th.add_argument("--d", type=int, default=None, help="predict: number of parameters.")
    th.add_argument("--r", type=int, default=None, help="predict: informative directions (signal cosine scale).")
    th.add_argument("--fisher-trace", type=float, default=None, help="predict: tr(F_B) for the off-task KL.")
    th.add_argument("--direction", default=None, help="validate: a checkpoint whose update the walk is "
                    "projected on (its base is the run's base).")
    th.add_argument("--seed", type=int, default=0, help="toy: seed.")
    th.set_defaults(func=cmd_theory)

    rep = sub.add_parser("report", help="Rewrite a study's report.html and report.md from its records.",
                         description="Regenerate STUDY_DIR/report.html and report.md (tables and figures) from "
                         "results.json and analysis.json.")
    rep.add_argument("study_dir", help="The study directory (its `out`).")
    rep.add_argument("--screenshot", action="store_true", help="Also render the page in headless Chromium to "
                     "STUDY_DIR/figures/report-screenshot.png (checks that it displays).")
    rep.set_defaults(func=cmd_report)

    m = sub.add_parser("models", help="Build, convert and list models.")
    msub = m.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    mb = msub.add_parser("build", help="Build (tiny) or convert (smollm2-135m) a model and cache it.",
                         description="Build or convert a model into the cache and print its directory.")
    add_config_args(mb, BuildConfig, positional={"name": "model.name"})
    mb.set_defaults(func=cmd_models_build)
    ml = msub.add_parser("list", help="List the built-in model names.")
    ml.set_defaults(func=cmd_models_list)

    t = sub.add_parser("tasks", help="List tasks and show their examples.")
    tsub = t.add_subparsers(dest="tasks_command", required=True, metavar="ACTION")
    tl = tsub.add_parser("list", help="List the tasks and their system prompts.")
    tl.set_defaults(func=cmd_tasks_list)
    ts = tsub.add_parser("show", help="Print examples of a task as JSON lines.")
    ts.add_argument("task", help="countdown, math, chemistry or boolq.")
    ts.add_argument("--split", default="test", choices=["train", "test", "pretrain"], help="Which split.")
    ts.add_argument("--n", type=int, default=5, help="How many examples.")
    ts.add_argument("--source", default="synthetic", choices=["synthetic", "hub"], help="Data source.")
    ts.add_argument("--seed", type=int, default=1234, help="Synthetic generator seed.")
    ts.add_argument("--path", default=None, help="Local file/dir in the hub schema (source hub).")
    ts.set_defaults(func=cmd_tasks_show)

    e = sub.add_parser("eval", help="Evaluate a model on tasks; writes a run directory.",
                       description="Greedy accuracy of MODEL on the tasks' test split (by default).")
    add_config_args(e, EvalConfig, aliases={"tasks": "data.tasks", "source": "data.source", "n": "data.n_test",
                                            "split": "split", "out": "out"},
                    positional={"model": "model.name"})
    e.set_defaults(func=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except EsgrpoError as e:
        print(f"esgrpo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("esgrpo: interrupted; finished work is on disk (rerun to resume where supported)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
