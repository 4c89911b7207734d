"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) and on CPU."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny problems: OpenMP start-up costs more than it gains on 2 busy
    cores (the pipeline test runs beside the unit tests)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model():
    """4-layer random Gemma-3 with the real tokenizer (fast)."""
    from saelib.models import load_model

    return load_model("tiny-gemma3", dtype=torch.float32, device="cpu")


@pytest.fixture(scope="session")
def gemma():
    """The real offline Gemma-3-270M (bf16 where bf16 matmuls are fast, else fp32: saelib.devices)."""
    from saelib.models import load_model

    return load_model("gemma-3-270m", device="cpu")


# The pipeline smoke run (tests/test_pipeline.py, tests/pipeline_run.py) runs in the background while the unit
# tests do; its tests are moved to the end of the session. A plain `pytest` / `make test` starts it before
# collection (collecting ~540 tests takes 20-30 s of the run's critical path); any other selection starts it
# once the session's tests are known, and only if a pipeline test is among them.
def _selects_the_whole_suite(config) -> bool:
    """True when the command line surely collects and runs tests/test_pipeline.py: every path argument is the
    tests folder or a folder above it, and nothing deselects tests (-k, -m, --deselect, --lf, --sw)."""
    opt = config.option
    if (opt.collectonly or opt.keyword or opt.markexpr or getattr(opt, "deselect", None) or getattr(opt, "lf", False)
            or getattr(opt, "stepwise", False) or getattr(opt, "stepwise_skip", False)):
        return False
    here = Path(__file__).resolve().parent
    for arg in config.args:
        if "::" in arg:
            return False
        path = (config.invocation_params.dir / arg).resolve()
        if not (path == here or path in here.parents):
            return False
    return bool(config.args)


def pytest_configure(config):
    if _selects_the_whole_suite(config):
        from pipeline_run import PIPELINE_RUN, PipelineRun

        config.stash[PIPELINE_RUN] = PipelineRun.start()


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: only a session that runs a pipeline test starts it
def pytest_collection_modifyitems(session, config, items):
    from pipeline_run import PIPELINE_RUN, PipelineRun

    pipeline = [item for item in items if item.path.name == "test_pipeline.py"]
    if not pipeline or config.option.collectonly:
        early = config.stash.get(PIPELINE_RUN, None)
        if early is not None:  # started before collection, but no pipeline test is left to use it
            early.cancel()
            del config.stash[PIPELINE_RUN]
        return
    items[:] = [item for item in items if item.path.name != "test_pipeline.py"] + pipeline
    if PIPELINE_RUN not in config.stash:
        config.stash[PIPELINE_RUN] = PipelineRun.start()


def pytest_unconfigure(config):
    from pipeline_run import PIPELINE_RUN

    run = config.stash.get(PIPELINE_RUN, None)
    if run is not None:
        run.stop()
