"""The atomic writer: all or nothing at the target, no temp files left, torch-free."""
import os
import subprocess
import sys

import pytest

from megatron_vdit.utils.atomic_io import (atomic_open, atomic_path, write_bytes_atomic,
                                           write_json_atomic, write_text_atomic)


def test_writes_text_bytes_and_json(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "héllo\n")
    write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01")
    write_json_atomic(tmp_path / "c.json", {"b": 1, "a": [1.5]}, sort_keys=True)
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.json").read_text() == '{\n "a": [\n  1.5\n ],\n "b": 1\n}\n'
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.bin", "c.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "run.json"
    target.write_text("old")
    with pytest.raises(ZeroDivisionError):
        with atomic_open(target) as handle:
            handle.write("half of the new content")
            1 / 0
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["run.json"]
    with pytest.raises(ValueError, match="Out of range float values"):
        write_json_atomic(target, {"loss": float("nan")}, allow_nan=False)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["run.json"]


def test_atomic_path_keeps_the_suffix_and_publishes_only_on_success(tmp_path):
    """Writers that choose a format by extension (savefig, np.savez) get a temp name with
    the target's suffix; nothing appears at the target until the block ends."""
    import numpy as np
    target = tmp_path / "clip.latents.npz"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".npz" and tmp.name.startswith(".")
        np.savez(tmp, x=np.arange(3))
        assert not target.exists()
    assert np.load(target)["x"].tolist() == [0, 1, 2]
    assert os.listdir(tmp_path) == ["clip.latents.npz"]
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"torn")
            raise RuntimeError("killed mid-write")
    assert np.load(target)["x"].tolist() == [0, 1, 2]
    assert os.listdir(tmp_path) == ["clip.latents.npz"]


def test_atomic_path_whose_block_wrote_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "plot.png"):
            pass
    assert os.listdir(tmp_path) == []


def test_replaces_and_keeps_normal_permissions(tmp_path):
    target = tmp_path / "latest"
    write_text_atomic(target, "iter_1\n")
    write_text_atomic(target, "iter_2\n")
    assert target.read_text() == "iter_2\n"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_imports_no_torch():
    code = "import sys, megatron_vdit.utils.atomic_io; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
