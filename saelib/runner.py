"""Execute a Jupytext ``py:percent`` notebook through papermill (what every DVC stage calls).

    python -m saelib.runner notebooks/02_train.py -p variant topk

The ``.py`` file is the source of truth; the executed ``.ipynb`` lands in ``executed/`` and is an
output, never a dependency. Exit status is non-zero when any cell fails.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


def _coerce(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None, "null": None}.get(value.lower(), value)


def run_notebook(notebook: str | Path, parameters: dict | None = None, out_dir: str | Path = "executed") -> Path:
    """Convert ``notebook`` (py:percent) to ipynb, execute it with papermill, return the executed path."""
    import jupytext
    import papermill

    notebook = Path(notebook)
    if not notebook.exists():
        raise FileNotFoundError(f"notebook {notebook} does not exist")
    parameters = dict(parameters or {})
    suffix = "".join(f"-{v}" for k, v in sorted(parameters.items()) if k != "profile")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / f"{notebook.stem}{suffix}.ipynb"
    nb = jupytext.read(notebook)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"{notebook.stem}.ipynb"
        jupytext.write(nb, src)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("SAELIB_ROOT", str(Path.cwd()))
        papermill.execute_notebook(
            str(src),
            str(out_path),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(Path.cwd()),
            progress_bar=False,
            log_output=True,
        )
    return out_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--out-dir", default="executed")
    args = parser.parse_args(argv)
    params = {name: _coerce(value) for name, value in args.param}
    try:
        out = run_notebook(args.notebook, params, args.out_dir)
    except Exception as exc:  # papermill's error already carries the failing cell's traceback
        print(f"notebook {args.notebook} failed: {exc}", file=sys.stderr)
        return 1
    print(f"executed {args.notebook} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
