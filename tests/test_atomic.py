"""Atomic writes: whole file or old file, never a temporary left behind, and the permissions
an ordinary ``open`` gives (``mkstemp``'s 0600 would hide results from colleagues on a shared
cluster file system)."""

from __future__ import annotations

import os
import stat

import pytest

from tom.atomic import atomic_write


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_file_mode_follows_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.txt", lambda fh: fh.write("x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == mode


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "b.bin"
    atomic_write(target, lambda fh: fh.write(b"old"), binary=True)

    def fail(fh):
        fh.write(b"partial")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_write(target, fail, binary=True)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.bin"]
