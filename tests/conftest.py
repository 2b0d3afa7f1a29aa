import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# One intra-op thread: the suite's networks are small, and two threads on two busy cores are
# many times slower than one.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def _repo_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("the pipeline tests copy the repository with git ls-files")
    return sorted({f for f in out.splitlines() if (REPO / f).is_file()})


def _copy_repo(dst: Path) -> Path:
    for name in _repo_files():
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    git = ["git", "-c", "user.name=pipeline-test", "-c", "user.email=test@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dst, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "snapshot"], cwd=dst, check=True)
    return dst


@pytest.fixture(scope="session")
def copy_repo() -> Callable[[Path], Path]:
    """Copy the repository (tracked and untracked-not-ignored files) into a folder, made a git
    repository of its own so the figures can name a commit; returns the folder."""
    return _copy_repo
