"""Execute a Jupytext ``py:percent`` notebook through papermill (what every DVC stage calls).

    python -m saelib.runner notebooks/02_train.py -p variant topk

The ``.py`` file is the source of truth; the executed ``.ipynb`` lands in ``executed/`` and is an
output, never a dependency. Exit status is non-zero when any cell fails, 130 after Ctrl-C.

While the notebook runs, what its cells print (stdout, stderr) and the text form of their results
(tables, reprs) is echoed to the terminal, preceded by an ``Executing Cell N`` line.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

KERNEL_ARGS = ["--IPKernelApp.log_level=CRITICAL"]
"""Arguments of the notebook kernel. The kernel's own log is silenced: on every shutdown jupyter_client
interrupts it first (``[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel``) and it warns that
its local TCP sockets are unencrypted. Errors inside cells still reach the terminal and fail the run."""

INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT, what a shell reports for an interrupted command)."""


ENGINE = "saelib-echo"
"""papermill engine name of :func:`_register_engine`'s engine."""

_QUIET_PREFIXES = ("Ending Cell", "Input Notebook", "Working directory")


class _EchoFilter(logging.Filter):
    """Drops papermill's ``Ending Cell`` separators (one ``Executing Cell N`` line per cell is enough)
    and the temporary input path."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_QUIET_PREFIXES)


def _register_engine() -> str:
    """papermill's nbclient engine, except that widget outputs (tqdm progress bars: their text form
    is a frozen ``0%``) are not echoed; they still land in the executed notebook."""
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines

    class EchoClient(PapermillNotebookClient):
        def log_output_message(self, output):
            if "application/vnd.jupyter.widget-view+json" in output.get("data", {}):
                return
            super().log_output_message(output)

    class EchoEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None, stderr_file=None,
                                     start_timeout=60, execution_timeout=None, **kwargs):
            kwargs.pop("input_path", None)
            kwargs.pop("startup_timeout", None)
            timeout = execution_timeout or kwargs.pop("timeout", None)
            client = EchoClient(nb_man, timeout=timeout, startup_timeout=start_timeout, kernel_name=kernel_name,
                                log=logging.getLogger("papermill"), log_output=log_output, stdout_file=stdout_file,
                                stderr_file=stderr_file, **kwargs)
            return client.execute()

    papermill_engines.register(ENGINE, EchoEngine)
    return ENGINE


def _echo_cell_output(stdout=None, stderr=None) -> None:
    """Route papermill's log (cell output when ``log_output=True``) to the terminal, messages only:
    INFO (cell stdout and results) to stdout, WARNING and above (cell stderr) to stderr."""
    logger = logging.getLogger("papermill")
    for handler in [h for h in logger.handlers if getattr(h, "_saelib_echo", False)]:
        logger.removeHandler(handler)
    out = logging.StreamHandler(stdout or sys.stdout)
    out.setLevel(logging.INFO)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err = logging.StreamHandler(stderr or sys.stderr)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler._saelib_echo = True
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(_EchoFilter())
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


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
        _echo_cell_output()
        papermill.execute_notebook(
            str(src),
            str(out_path),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(Path.cwd()),
            progress_bar=False,
            log_output=True,
            engine_name=_register_engine(),
            extra_arguments=KERNEL_ARGS,
        )
    return out_path


_QUIET_ON_INTERRUPT = ("papermill", "nbclient", "asyncio", "traitlets")
"""Loggers silenced once Ctrl-C arrives: the kernel shutdown that follows logs 'Kernel died' and, at
exit, asyncio reports the cancelled cell's task ('Task exception was never retrieved')."""


class _Interrupt:
    """SIGINT handler for the run: mutes the loggers that would print tracebacks during the
    shutdown that follows, remembers the interrupt, then raises KeyboardInterrupt as Python does."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, signum, frame) -> None:
        if not self.seen:
            self.seen = True
            for name in _QUIET_ON_INTERRUPT:
                logger = logging.getLogger(name)
                logger.handlers.clear()
                logger.addHandler(logging.NullHandler())
                logger.propagate = False
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--out-dir", default="executed")
    args = parser.parse_args(argv)
    params = {name: _coerce(value) for name, value in args.param}
    interrupt = _Interrupt()
    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        out = run_notebook(args.notebook, params, args.out_dir)
    except KeyboardInterrupt:
        return _interrupted(args.notebook)
    except Exception as exc:  # papermill's error already carries the failing cell's traceback
        # Ctrl-C reached the kernel first (the cell fails with KeyboardInterrupt), or killed it mid-reply
        if interrupt.seen or getattr(exc, "ename", None) == "KeyboardInterrupt":
            return _interrupted(args.notebook)
        print(f"notebook {args.notebook} failed: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)
    print(f"executed {args.notebook} -> {out}")
    return 0


def _interrupted(notebook: str) -> int:
    print(f"interrupted: {notebook} stopped by Ctrl-C; run the same command again to resume", file=sys.stderr)
    return INTERRUPTED


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # a second Ctrl-C while the kernel shuts down
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
