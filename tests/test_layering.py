"""The package's layers only point down: no module imports one that sits above it.

Layers, bottom to top (a module may import its own layer and the ones below):
    foundation      errors, config, runs, progress, memory, parallel (jobs on Ray), tracking
    rewards         answer extraction and the binary rewards
    tasks           examples, prompts, the one scoring path
    models          model loading, the policy interface, generation (rollout)
    checkpoints     reading weights, trainer checkpoints; evaluate (accuracy of a policy)
    train           the ES and GRPO trainers
    analyses        analysis, theory, report, bench: read run directories and checkpoints
    run             one run (train then evaluate, or evaluate)
    sequence        the tasks one after another
    study           the main job
    seeds           the main job once per seed, and the statistics over seeds
    cli             argument parsing
"""

from __future__ import annotations

import ast
from pathlib import Path

import esgrpo

LAYERS = [
    {"errors", "config", "runs", "progress", "memory", "parallel", "tracking"},
    {"rewards"},
    {"tasks"},
    {"models", "rollout"},
    {"checkpoints", "evaluate"},
    {"train"},
    {"analysis", "theory", "report", "bench"},
    {"run"},
    {"sequence"},
    {"study"},
    {"seeds"},
    {"cli"},
]
ROOT = Path(esgrpo.__file__).parent


def _layer(top: str) -> int:
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"esgrpo.{top} is in no declared layer: add it to LAYERS")


def _imports(path: Path) -> set[str]:
    """esgrpo top-level units imported anywhere in the module (also inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "esgrpo" and len(parts) > 1:
                out.add(parts[1])
    return out


def test_every_module_imports_only_its_layer_or_below():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        top = rel.parts[0].removesuffix(".py")
        if top == "__init__":
            continue
        own = _layer(top)
        for imported in _imports(path):
            if _layer(imported) > own:
                bad.append(f"{rel} (layer {own}) imports esgrpo.{imported} (layer {_layer(imported)})")
    assert not bad, "imports that point up:\n" + "\n".join(bad)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The checker itself: an import of a higher layer, even inside a function, is found."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from esgrpo.study import run_study\n")
    assert _imports(f) == {"study"} and _layer("study") > _layer("train")
