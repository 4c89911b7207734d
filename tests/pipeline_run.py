"""The end-to-end run behind tests/test_pipeline.py: the repository copied to a scratch folder, switched to a
test profile, and `dvc repro` run there twice (the second must do nothing).

The first `dvc repro` is mostly process start-up (one papermill kernel per stage) and uses about one core,
so conftest.py starts it in the background as soon as the session knows it will run the pipeline tests;
the unit tests run meanwhile and the pipeline tests, ordered last, wait for it.

``SAELIB_PIPELINE_PROFILE`` picks the profile: ``tiny`` (default; the 4-layer random Gemma-3 with the real
tokenizer, every stage and notebook, a couple of minutes) or ``smoke`` (the real Gemma-3-270M, `make smoke`).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROFILE = os.environ.get("SAELIB_PIPELINE_PROFILE", "tiny")
PIPELINE_RUN = pytest.StashKey()
"""Where conftest.py keeps the session's background :class:`PipelineRun`."""


def repo_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files of the checkout (what a fresh clone plus local edits holds)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split("\n")
    return [f for f in out if f and (ROOT / f).is_file()]


def _env(threads: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SAELIB_ROOT"}
    env["HF_HUB_OFFLINE"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


@dataclass
class PipelineRun:
    """One copy of the repository on ``profile`` and its first `dvc repro`, running or finished."""

    dest: Path
    profile: str
    params: dict
    process: subprocess.Popen | None = None
    log: Path | None = None
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, profile: str = PROFILE, parent: Path | None = None, *, threads: int | None = 1) -> "PipelineRun":
        """Copy the checkout (without committed results, figures and dvc.lock: they must be regenerated),
        set ``profile`` and its ``test_variants`` as ``run_variants`` (and as the unlearning subset), and
        start `dvc repro` in the background. ``threads`` caps its torch threads (``None``: torch's default)."""
        parent = Path(parent or tempfile.mkdtemp(prefix=f"saelib-pipeline-{profile}-"))
        dest = parent / "repo"
        for rel in repo_files():
            if rel.startswith(("results/", "figures/")) or rel == "dvc.lock":
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, target)
        params = yaml.safe_load((dest / "params.yaml").read_text())
        if profile not in params["profiles"] or "test_variants" not in params["profiles"][profile]:
            raise ValueError(f"params.yaml: profile {profile!r} (SAELIB_PIPELINE_PROFILE) needs a test_variants list")
        params["profile"] = profile
        params["run_variants"] = params["profiles"][profile]["test_variants"]
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        (dest / "unlearning_variants.yaml").write_text(yaml.safe_dump({"unlearning_variants": params["run_variants"]}))
        subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
        log = parent / "first_repro.log"
        with open(log, "w") as fh:
            process = subprocess.Popen([cls.dvc(), "repro"], cwd=dest, env=_env(threads), stdout=fh,
                                       stderr=subprocess.STDOUT, text=True)
        return cls(dest, profile, params, process, log)

    @staticmethod
    def dvc() -> str:
        return str(Path(sys.executable).parent / "dvc")

    def wait(self) -> tuple[int, str, float]:
        """Return code, log and wall seconds of the first `dvc repro` (waiting for it if it still runs)."""
        rc = self.process.wait()
        return rc, self.log.read_text(), time.perf_counter() - self.started

    def run(self, *args: str) -> subprocess.CompletedProcess:
        """Run ``dvc *args`` in the copy (foreground, torch's default threads)."""
        return subprocess.run([self.dvc(), *args], cwd=self.dest, env=_env(None), capture_output=True, text=True)

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def cancel(self) -> None:
        """Kill the first `dvc repro` if it still runs and remove the scratch copy (the run is not needed)."""
        self._kill()
        shutil.rmtree(self.dest.parent, ignore_errors=True)

    def stop(self) -> None:
        """End of session: kill a first `dvc repro` that still runs (the session ended early); remove the
        scratch copy after a successful run, keep it (named on stderr) after a failed one."""
        self._kill()
        if self.process is not None and self.process.returncode == 0:
            shutil.rmtree(self.dest.parent, ignore_errors=True)
        else:
            print(f"pipeline test: the {self.profile} run is kept in {self.dest.parent}", file=sys.stderr)
