"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) and on CPU."""
import os

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


# The pipeline smoke run (tests/test_pipeline.py, tests/pipeline_run.py) starts in the background once the
# session's tests are known and runs while the unit tests do; its tests are moved to the end of the session.
@pytest.hookimpl(trylast=True)  # after -m/-k deselection: only a session that runs a pipeline test starts it
def pytest_collection_modifyitems(session, config, items):
    pipeline = [item for item in items if item.path.name == "test_pipeline.py"]
    if not pipeline or config.option.collectonly:
        return
    items[:] = [item for item in items if item.path.name != "test_pipeline.py"] + pipeline
    from pipeline_run import PIPELINE_RUN, PipelineRun

    config.stash[PIPELINE_RUN] = PipelineRun.start()


def pytest_unconfigure(config):
    from pipeline_run import PIPELINE_RUN

    run = config.stash.get(PIPELINE_RUN, None)
    if run is not None:
        run.stop()
