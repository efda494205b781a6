"""The install (`.ci/install.sh`, the README's commands): the right torch build for the machine, and a re-run that
is a silent no-op."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"


def machine_has_gpu() -> bool:
    """What install.sh decides with: a working `nvidia-smi -L` that lists a GPU."""
    if shutil.which("nvidia-smi") is None:
        return False
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    return listed.returncode == 0 and any(line.startswith("GPU") for line in listed.stdout.splitlines())


@pytest.mark.skipif(machine_has_gpu(), reason="a GPU machine gets the CUDA build")
def test_cpu_machine_gets_a_cpu_only_torch():
    import torch

    assert torch.version.cuda is None, f"torch {torch.__version__} carries CUDA {torch.version.cuda} on a CPU machine"
    assert not any(name.startswith("nvidia") for name in _installed_distributions()), "CUDA wheels are installed"


def _installed_distributions() -> list[str]:
    from importlib.metadata import distributions

    return sorted({(d.metadata["Name"] or "").lower() for d in distributions()})


def _installed_by_the_script() -> bool:
    marker = VENV / ".installed"
    return (Path(sys.prefix).resolve() == VENV.resolve() and marker.is_file()
            and marker.stat().st_mtime >= (ROOT / "pyproject.toml").stat().st_mtime)


@pytest.mark.skipif(not _installed_by_the_script(), reason="this interpreter's .venv was not set up by .ci/install.sh "
                                                          "(or pyproject.toml changed since)")
def test_a_second_install_is_a_fast_silent_no_op():
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONWARNINGS")}
    started = time.monotonic()
    run = subprocess.run(["bash", str(ROOT / ".ci" / "install.sh")], capture_output=True, text=True, env=env,
                         timeout=120, cwd=ROOT)
    seconds = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    assert run.stdout == "" and run.stderr == "", (run.stdout, run.stderr)
    assert seconds < 10, f"a no-op install took {seconds:.1f} s"
