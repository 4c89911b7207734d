"""Each DVC stage must depend on every saelib module its notebook imports (transitively).

Stages list saelib modules individually (so editing figure code does not retrain SAEs); this test keeps
those lists honest: a stage that misses a module it runs would not re-run when that module changes.
"""
import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    as_pkg = ROOT.joinpath(*parts, "__init__.py")
    as_mod = ROOT.joinpath(*parts[:-1], parts[-1] + ".py")
    return as_mod if as_mod.exists() else as_pkg if as_pkg.exists() else None


def _imports(path: Path) -> set[str]:
    """Absolute names of saelib modules imported anywhere in ``path`` (also inside functions)."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(ROOT).with_suffix("")
    package = list(rel.parts[:-1])  # the package a relative import starts from
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "saelib"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "saelib":
                continue
            found.add(mod)
            for alias in node.names:  # `from saelib.evals import absorption` imports a submodule
                if _module_file(f"{mod}.{alias.name}"):
                    found.add(f"{mod}.{alias.name}")
    return found


def _closure(start: Path) -> set[Path]:
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        for name in _imports(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                f = _module_file(".".join(parts[:i]))
                if f and f not in seen:
                    seen.add(f)
                    todo.append(f)
    return seen


def _stages():
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in spec.items():
        body = stage.get("do", stage)
        notebook = next(d for d in body["deps"] if str(d).startswith("notebooks/"))
        yield name, ROOT / notebook, [str(d) for d in body["deps"]]


@pytest.mark.parametrize("stage,notebook,deps", list(_stages()), ids=lambda v: v if isinstance(v, str) else "")
def test_stage_lists_every_saelib_module_it_runs(stage, notebook, deps):
    needed = {p.relative_to(ROOT).as_posix() for p in _closure(notebook)}
    needed.add("saelib/runner.py")  # every stage runs through the papermill runner

    def covered(path: str) -> bool:
        return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)

    missing = sorted(p for p in needed if not covered(p))
    assert not missing, f"stage {stage!r} runs {missing} but does not depend on them in dvc.yaml"


def test_figures_stage_depends_on_the_ledger_data_files():
    """The ledger (saelib.claims) reads its claims and the original runs from docs/spec/: editing either must
    re-run the figures stage, so both are deps of it."""
    from saelib import claims

    deps = dict((name, d) for name, _, d in _stages())["figures"]
    for path in (claims.CLAIMS_FILE, claims.ORIGINAL_RUNS_FILE):
        assert path.relative_to(ROOT).as_posix() in deps, f"figures stage lacks {path.relative_to(ROOT)}"
