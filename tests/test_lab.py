"""`make lab`: a Jupyter server on the repository opens notebooks/*.py as notebooks (jupytext), and
JupyterLab's default viewer for .py files is the notebook (.jupyter/labconfig)."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str, timeout: float = 10.0):
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


@pytest.fixture
def lab_server(tmp_path):
    port, token = _free_port(), uuid.uuid4().hex
    # what `make lab` sets, with the user's own runtime/settings folders swapped for empty ones
    env = {**os.environ, "JUPYTER_CONFIG_PATH": str(ROOT / ".jupyter"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws"),
           "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={ROOT}", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           "--ServerApp.open_browser=False", "--ServerApp.allow_root=True", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{(tmp_path / 'server.log').read_text()}")
            try:
                _get(f"{base}/api/status", token, timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not answer within 30 s:\n{(tmp_path / 'server.log').read_text()}")
                time.sleep(0.3)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def test_train_notebook_opens_as_a_notebook(lab_server):
    base, token = lab_server
    model = _get(f"{base}/api/contents/notebooks/02_train.py?type=notebook&content=1", token)
    assert model["type"] == "notebook" and model["name"] == "02_train.py"
    cells = model["content"]["cells"]
    assert cells[0]["cell_type"] == "markdown" and cells[0]["source"].startswith("# 02")
    code = [c["source"] for c in cells if c["cell_type"] == "code"]
    assert any("from saelib" in src or "import saelib" in src for src in code)
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in cells)  # papermill's parameters cell
    assert model["content"]["metadata"]["kernelspec"]["name"] == "python3"
    settings = _get(f"{base}/lab/api/settings/@jupyterlab/docmanager-extension:plugin", token)
    # the repo's override becomes the default of the setting: double-clicking a .py file opens a notebook
    assert settings["schema"]["properties"]["defaultViewers"]["default"]["python"] == "Jupytext Notebook"


def test_make_lab_uses_the_config_this_test_serves():
    recipe = (ROOT / "Makefile").read_text().split("\nlab:", 1)[1].split("\n\n", 1)[0]
    assert "JUPYTER_CONFIG_PATH=$(CURDIR)/.jupyter" in recipe and "jupyter lab" in recipe
    assert (ROOT / ".jupyter" / "labconfig" / "default_setting_overrides.json").exists()
    assert 'formats = "py:percent"' in (ROOT / "jupytext.toml").read_text()
