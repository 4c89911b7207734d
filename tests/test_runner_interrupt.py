"""Ctrl-C in ``python -m saelib.runner``: one line on stderr, no traceback, exit status 130."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    flag = tmp_path / "started"
    nb = tmp_path / "slow.py"
    nb.write_text(textwrap.dedent(f"""\
        # %%
        import time
        open({str(flag)!r}, "w").close()
        time.sleep(120)
        """))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    # a new session = its own process group, as a terminal's foreground job: Ctrl-C signals the whole
    # group (the runner and its kernel), which killpg reproduces
    proc = subprocess.Popen([sys.executable, "-m", "saelib.runner", str(nb), "--out-dir", str(tmp_path / "ex")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the notebook never started"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, (stdout, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and "slow.py" in lines[0], stderr
    assert "Traceback" not in stdout + stderr
