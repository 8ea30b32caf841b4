"""Command line: argument parsing only; every subcommand calls one function in the package.

Config flags are generated from the config dataclasses (config/schema.py): every field `a.b` is
`--a.b VALUE` with the field's help string (booleans are plain flags: `--resume`, `--no-resume`),
applied on top of `--config FILE.yaml`; `--set a.b=VALUE` sets any field. All of them go through one
parser (config.parse_overrides). A few fields have short aliases (`--tasks`, `--n`, `--source`).
Bad input prints one line and exits with status 2; nothing here imports torch, so `esgrpo --help`
is fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from typing import Any

from esgrpo.config import (
    BuildConfig,
    EvalConfig,
    SequenceConfig,
    StudyConfig,
    TrainConfig,
    field_help,
    leaf_types,
    load_config,
    parse_overrides,
    validate,
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
    """One flag per config field (help from the dataclass), plus --config and --set.

    aliases: short flag -> dotted key (e.g. {"n": "data.n_test"}); positional: argument name -> key."""
    p.add_argument("--config", metavar="FILE", help="YAML config file (flags override its values).")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="Set any config key, e.g. --set generation.max_new_tokens=64 (repeatable).")
    helps, types_ = field_help(cls), leaf_types(cls)
    for name, key in (positional or {}).items():
        p.add_argument(name, nargs="?", default=None, help=helps[key])
    g = p.add_argument_group("config fields")
    for key, help_ in helps.items():
        flags = [f"--{key}"] + [f"--{a}" for a, k in (aliases or {}).items() if k == key and a != key]
        if types_[key] is bool:
            g.add_argument(*flags, dest=f"cfg:{key}", action=argparse.BooleanOptionalAction, default=None,
                           help=help_)
        else:
            g.add_argument(*flags, dest=f"cfg:{key}", metavar="V", default=None, help=help_ + _type_note(types_[key]))
    p.set_defaults(_config_cls=cls, _positional=positional or {})


def config_pairs(args: argparse.Namespace) -> list[str | tuple[str, Any]]:
    """Every config value given on the command line, as (key, value) pairs in increasing precedence."""
    pairs: list[str | tuple[str, Any]] = list(args.set)
    pairs += [(key, getattr(args, name)) for name, key in args._positional.items() if getattr(args, name) is not None]
    pairs += [(k[4:], v) for k, v in vars(args).items() if k.startswith("cfg:") and v is not None]
    return pairs


def config_from_args(args: argparse.Namespace) -> Any:
    return load_config(args._config_cls, args.config, parse_overrides(config_pairs(args)))


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=1, default=float))


# ----------------------------------------------------------------------------------------------
# Subcommands


def cmd_models_build(args: argparse.Namespace) -> None:
    from esgrpo.models import build_model

    print(build_model(config_from_args(args)))


def cmd_models_list(args: argparse.Namespace) -> None:
    from esgrpo.models import BUILTIN

    print("\n".join(BUILTIN) + "\n(or any Hugging Face causal LM id or local path)")


def cmd_tasks_list(args: argparse.Namespace) -> None:
    from esgrpo.tasks import TASK_NAMES, get_task

    for name in TASK_NAMES:
        print(f"{name:10s} {get_task(name).system_prompt}")


def cmd_tasks_show(args: argparse.Namespace) -> None:
    from esgrpo.tasks import load_examples

    for ex in load_examples(args.task, args.source, args.split, args.n, seed=args.seed, path=args.path,
                            level=args.level):
        print(json.dumps({"uid": ex.uid, "question": ex.question, "target": ex.target}))


def cmd_eval(args: argparse.Namespace) -> None:
    from esgrpo.run import run_eval

    run_eval(config_from_args(args))


def cmd_study(args: argparse.Namespace) -> None:
    from esgrpo.seeds import run_seeds
    from esgrpo.study import run_study

    cfg: StudyConfig = config_from_args(args)
    cfg = cfg.quick() if args.quick else cfg
    (run_seeds if cfg.seeds else run_study)(cfg, only=[c for x in args.only for c in x.split(",") if c] or None)


def cmd_sequence(args: argparse.Namespace) -> None:
    from pathlib import Path

    from esgrpo.report.sequential import write_sequence_report
    from esgrpo.sequence import run_sequence

    cfg = config_from_args(args)
    print(write_sequence_report(Path(cfg.out), run_sequence(cfg)))


def cmd_train(args: argparse.Namespace) -> None:
    from esgrpo.run import load_train_config, run_training

    out = run_training(args.method, load_train_config(args.config, parse_overrides(config_pairs(args))))
    if out["eval"] is None:  # a process of a multi-process job other than the main one: it keeps nothing
        return
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
    from esgrpo.bench import bench, bench_rollout

    cfg = config_from_args(args)
    if args.method == "rollout":
        print(bench_rollout(cfg, batch=args.batch, repeats=args.repeats))
    elif args.method == "lowrank":
        from esgrpo.bench import bench_lowrank

        print(bench_lowrank(cfg, repeats=args.repeats))
    elif args.method == "noise":
        from esgrpo.bench import bench_noise

        print(bench_noise(cfg, repeats=args.repeats))
    elif args.method == "threads":
        from esgrpo.bench import bench_threads

        print(bench_threads(cfg, iterations=args.iterations, repeats=args.repeats))
    else:
        print(bench(args.method, cfg, iterations=args.iterations, repeats=args.repeats, as_json=args.json))


def cmd_signal(args: argparse.Namespace) -> None:
    from esgrpo.analysis.fitness_signal import fitness_signal

    if args.study:  # a study's model, data, prompts and ES settings for --task, the flags over them
        overrides = parse_overrides(config_pairs(args))
        task = overrides.pop("task", None) or TrainConfig().task
        cfg = load_config(StudyConfig, args.study, overrides).train_config(task)
        validate(cfg)
    else:
        cfg = config_from_args(args)
    _print_json(fitness_signal(cfg, batches=args.batches, iteration=args.iteration))


def cmd_analyze(args: argparse.Namespace) -> None:
    if args.what == "study":
        from esgrpo.study import reanalyze

        if len(args.paths) != 1:
            raise EsgrpoError(f"analyze study takes one study directory, got {len(args.paths)} paths")
        reanalyze(args.paths[0], args.set)
        print(f"{args.paths[0]}/report.html")
    elif args.what in ("kl", "interpolate", "probe"):
        from esgrpo.analysis.commands import behaviour_analysis
        from esgrpo.config import TASK_NAMES

        tasks = args.tasks.split(",") if args.tasks else list(TASK_NAMES)
        _print_json(behaviour_analysis(args.what, args.paths, tasks, n=args.n, seed=args.seed, samples=args.samples,
                                       points=args.points, max_new_tokens=args.max_new_tokens))
    else:
        from esgrpo.analysis.commands import weight_analysis

        _print_json(weight_analysis(args.what, args.paths, atol=args.atol, top_k=args.top_k, full=args.full))


def cmd_theory(args: argparse.Namespace) -> None:
    from esgrpo.theory import commands

    if args.action == "predict":
        _print_json(commands.predictions(args.alpha, args.N, args.T, args.d, args.r, args.fisher_trace,
                                         args.grpo_lr, args.grpo_steps, args.grpo_schedule))
    elif args.action == "validate":
        _print_json(commands.validation(args.run_dir, args.alpha, args.N, direction=args.direction))
    else:
        _print_json(commands.toy(seed=args.seed))


def cmd_report(args: argparse.Namespace) -> None:
    from esgrpo.study import write_report

    for path in write_report(args.study_dir, screenshot=args.screenshot):
        print(path)


# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="esgrpo", description="Post-train causal LMs with ES and GRPO and "
                                "compare the geometry of their updates.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("study", help="Run a study end to end (the main job): evaluate, train, analyze, report.",
                       description="Run a study end to end from a config (default: the values of "
                       "configs/study-default.yaml built in). Resumable: finished runs are reused.")
    add_config_args(s, StudyConfig)
    s.add_argument("--quick", action="store_true", help="Small, fast version of the study (smoke run).")
    s.add_argument("--only", metavar="TASK:METHOD", action="append", default=[],
                   help="Only these cells of Table 1 (repeatable or comma-separated; METHOD: base, es (ES short and "
                   "long, one run), grpo, or an es_variants arm), into the study directory; the analyses, sequence "
                   "and report follow once every cell is done.")
    s.set_defaults(func=cmd_study)

    sq = sub.add_parser("sequence", help="Sequential post-training: the tasks one after another, per method.",
                        description="Train ES short, ES long and GRPO through the tasks in order (each stage from "
                        "the previous stage's weights), measuring every task after every stage; writes "
                        "OUT/sequence.json and OUT/report.html. Resumable. `esgrpo study` runs this too.")
    add_config_args(sq, SequenceConfig)
    sq.set_defaults(func=cmd_sequence)

    tr = sub.add_parser("train", help="Train one model on one task with ES or GRPO, then evaluate it.",
                        description="Train with ES or GRPO on one task; writes a run directory (metrics.jsonl, "
                        "checkpoints/, updates.jsonl for ES, results.json, eval.json). An interrupted run in --out "
                        "resumes from its latest checkpoint; --resume continues a finished one to a larger budget.")
    tr.add_argument("method", choices=["es", "grpo"], help="The trainer.")
    add_config_args(tr, TrainConfig)
    tr.set_defaults(func=cmd_train)

    rp = sub.add_parser("replay", help="Rebuild an ES run's weights from its base checkpoint and update log.",
                        description="Rebuild the weights of an ES run bit-exactly from checkpoints/step-000000 "
                        "and updates.jsonl, and check them against checkpoints/final.")
    rp.add_argument("run_dir", help="The ES run directory.")
    rp.add_argument("--out", default=None, help="Where to write the rebuilt checkpoint (default RUN_DIR/replay).")
    rp.add_argument("--upto", type=int, default=None, help="Replay only the first UPTO iterations (0..all).")
    rp.add_argument("--base", default=None, help="Base checkpoint (default RUN_DIR/checkpoints/step-000000).")
    rp.add_argument("--device", default="cpu", help="Device to replay on (use the training device for exactness).")
    rp.set_defaults(func=cmd_replay)

    sg = sub.add_parser("signal", help="How much of an ES population's fitness ranking is signal, and the prompt "
                        "batch it needs.",
                        description="Scores one ES population (es.population members, es.sigma, es.decoding) and "
                        "the unperturbed model on --batches disjoint batches of es.batch_size training prompts; "
                        "prints JSON: the members' fitness per batch, the signal variance (covariance between "
                        "batches), the reliability of one batch's ranking (signal / total variance) and the batch "
                        "size that would make it 1/2 and 0.8, with bootstrap intervals over members "
                        "(analysis/fitness_signal.py). Takes the train options (model, task, prompt, es).")
    sg.add_argument("--batches", type=int, default=4, help="Disjoint prompt batches (>= 2).")
    sg.add_argument("--iteration", type=int, default=1, help="Which iteration's population to draw (es.seed's).")
    sg.add_argument("--study", metavar="FILE", default=None, help="Take the model, data, prompt and ES settings from "
                    "this study config (for --task; the flags override them) instead of --config.")
    add_config_args(sg, TrainConfig)
    sg.set_defaults(func=cmd_signal)

    b = sub.add_parser("bench", help="Time an ES iteration / GRPO step by phase and peak memory; or decoding.",
                       description="es|grpo: run a few ES iterations or GRPO steps and print seconds per phase, "
                       "throughput and peak memory (es with --es.backend ray: beside the sequential backend). "
                       "rollout: our decoding against Hugging Face's generate on the same prompts (greedy): "
                       "tokens/s and identical tokens. threads: an ES iteration with 1 and 2 torch threads, alone "
                       "and beside another busy process. lowrank: one ES population scored full-rank member by "
                       "member, low-rank in one batched decode (es.rank, default 1), and pure batched generation "
                       "of the same rows, interleaved. noise: ES's noise work per member on the model's weights "
                       "(perturb, restore, update share), compiled kernels beside eager ops, and the generator's "
                       "normals per second.")
    b.add_argument("method", choices=["es", "grpo", "rollout", "threads", "lowrank", "noise"], help="What to time "
                   "(threads: an ES iteration with 1 and 2 torch threads, alone and beside another busy process; "
                   "lowrank: full-rank sequential vs low-rank batched scoring vs pure generation; noise: seconds "
                   "per member of perturb, restore and update, compiled vs eager).")
    b.add_argument("--iterations", type=int, default=3, help="es/grpo: iterations/steps per run.")
    b.add_argument("--repeats", type=int, default=2, help="Interleaved rounds (es with ray, rollout, lowrank, "
                   "noise).")
    b.add_argument("--batch", type=int, default=64, help="rollout: prompts decoded together.")
    b.add_argument("--json", action="store_true", help="es/grpo: print one JSON line (median seconds, memory).")
    add_config_args(b, TrainConfig)
    b.set_defaults(func=cmd_bench)

    an = sub.add_parser("analyze", help="Geometry of updates: norms, cosine, sparsity, rank; or a whole study.",
                        description="norms BASE CKPT | cosine BASE A B | sparsity BASE CKPT | rank BASE CKPT: print "
                        "JSON (checkpoints: HF directories or .safetensors files). kl CKPT REF | interpolate A B | "
                        "probe BASE CKPT [CKPT ...]: behaviour on the synthetic test split (HF directories). "
                        "study STUDY_DIR: run every analysis of a finished study into STUDY_DIR/analysis.json and "
                        "rewrite its report; --set analysis.KEY=VALUE changes the analysis settings (delete "
                        "analysis.json first when it holds other ones).")
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
                    help="study: change an analysis setting, e.g. --set analysis.n_examples=200.")
    an.set_defaults(func=cmd_analyze)

    th = sub.add_parser("theory", help="The ES random-walk theory: predictions, validation on a run, toy landscape.",
                        description="predict --alpha A --N N --T T --d D [--r R] [--fisher-trace F] "
                        "[--grpo-lr L --grpo-steps S]: closed forms (with GRPO's settings: its AdamW random-walk "
                        "norm and the ES/GRPO ratio). "
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
    th.add_argument("--grpo-lr", type=float, default=None, help="predict: GRPO's peak learning rate (with "
                    "--grpo-steps: GRPO's AdamW random-walk norm and the ES/GRPO norm ratio).")
    th.add_argument("--grpo-steps", type=int, default=None, help="predict: GRPO's steps.")
    th.add_argument("--grpo-schedule", choices=["linear", "constant"], default="linear",
                    help="predict: GRPO's learning-rate schedule.")
    th.add_argument("--direction", default=None, help="validate: a checkpoint whose update the walk is "
                    "projected on (its base is the run's base).")
    th.add_argument("--seed", type=int, default=0, help="toy: seed.")
    th.set_defaults(func=cmd_theory)

    rep = sub.add_parser("report", help="Rewrite a study's report.html and report.md from its records.",
                         description="Regenerate STUDY_DIR/report.html and report.md (tables and figures) from "
                         "results.json, analysis.json and sequence/sequence.json.")
    rep.add_argument("study_dir", help="The study directory (its `out`).")
    rep.add_argument("--screenshot", action="store_true", help="Also render the page in headless Chromium to "
                     "STUDY_DIR/figures/report-screenshot.png (checks that it displays).")
    rep.set_defaults(func=cmd_report)

    m = sub.add_parser("models", help="Build, convert and list models.")
    msub = m.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    mb = msub.add_parser("build", help="Build (tiny) or convert (smollm2-135m) a model and cache it.",
                         description="Build or convert a model into the cache and print its directory. tiny: the "
                         "shipped build is used when the recipe is the default one; --force rebuilds it and says "
                         "whether the rebuilt weights equal the shipped ones bit for bit.")
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
    ts.add_argument("--level", type=int, default=1, help="Difficulty level of the synthetic data (1-4; README: "
                    "Tasks).")
    ts.set_defaults(func=cmd_tasks_show)

    e = sub.add_parser("eval", help="Evaluate a model on tasks; writes a run directory.",
                       description="Greedy accuracy of MODEL on the tasks' test split (by default).")
    add_config_args(e, EvalConfig, aliases={"tasks": "data.tasks", "source": "data.source", "n": "data.n_test"},
                    positional={"model": "model.name"})
    e.set_defaults(func=cmd_eval)
    return p


def join_negative_values(argv: list[str]) -> list[str]:
    """`--grpo.lr -3e-4` -> `--grpo.lr=-3e-4`: argparse reads a token that starts with '-' and is not a plain
    decimal ('-3e-4', '-inf', '-nan') as another flag and says "expected one argument"; joined to its flag,
    the value reaches the config checks, which name the key and what is allowed."""
    out: list[str] = []
    for token in argv:
        prev = out[-1] if out else ""
        if (token.startswith("-") and prev.startswith("--") and "=" not in prev and prev != "--"
                and _is_number(token)):
            out[-1] = f"{prev}={token}"
        else:
            out.append(token)
    return out


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(join_negative_values(list(sys.argv[1:] if argv is None else argv)))
    try:
        args.func(args)
    except EsgrpoError as e:
        print(f"esgrpo: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full or read-only disk, a permission: one line, finished work stays on disk
        from esgrpo.runs import disk_error

        print(f"esgrpo: error: {disk_error(e, '')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("esgrpo: interrupted; finished work is on disk (rerun to resume where supported)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
