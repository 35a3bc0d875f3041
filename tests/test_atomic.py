import json

import pytest
import torch

from sweeper.store import atomic


def test_write_json_and_no_temp_left(tmp_path):
    target = atomic.write_json(tmp_path / "a" / "m.json", {"x": torch.tensor(1.5), "p": tmp_path})
    assert json.loads(target.read_text())["x"] == 1.5
    assert [p.name for p in target.parent.iterdir()] == ["m.json"]


def test_failed_write_leaves_old_file(tmp_path):
    target = atomic.write_text(tmp_path / "t.txt", "old")

    class Boom:
        def item(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic.write_json(target, {"x": Boom()})
    assert target.read_text() == "old"
    assert len(list(tmp_path.iterdir())) == 1


def test_directory_appears_whole_or_not(tmp_path):
    with pytest.raises(ValueError):
        with atomic.directory(tmp_path / "ckpt") as d:
            (d / "a").write_text("1")
            raise ValueError
    assert not (tmp_path / "ckpt").exists() and not list(tmp_path.iterdir())
    with atomic.directory(tmp_path / "ckpt") as d:
        atomic.save_safetensors({"w": torch.ones(2)}, d / "w.safetensors")
    assert (tmp_path / "ckpt" / "w.safetensors").is_file()


def test_files_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        target = atomic.write_text(tmp_path / "r.txt", "x")
        with atomic.directory(tmp_path / "d"):
            pass
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
