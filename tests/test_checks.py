"""Bad input: a clear error naming the key or file, before any model is loaded and before any run file is written.

Every case is checked in-process (`check_config`); one case per family of error (data, tokens, values; the
model family in test_single_file.py) also through a real `python -m sweeper`: exit code != 0, one short
message on the console naming the key, no traceback, no run files, no model loading.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_config, write_concept_images

from sweeper.checks import ConfigError, check_config

ROOT = Path(__file__).resolve().parents[1]


def corrupt_folder(root: Path) -> Path:
    folder = write_concept_images(root / "corrupt", n=3)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (folder / "notes.jpg").write_text("this is not an image")
    return folder


# (id, overrides (with {model}, {images}, {tmp} filled in), setup(tmp) -> images folder or None, expected message)
CASES = [
    ("missing-folder", ["data.images={tmp}/nowhere"], None, r"data.images=.*nowhere: no such folder"),
    (
        "empty-folder",
        [],
        lambda t: (t / "empty").mkdir() or t / "empty",
        r"data.images=.*empty: no images.*it is empty",
    ),
    ("corrupt-files", [], corrupt_folder, r"2 file\(s\) are corrupt or not images: .*broken.png.*notes.jpg"),
    ("too-few-images", ["data.n_images=10"], None, r"data.n_images=10: only 4 image\(s\)"),
    (
        "placeholder-in-vocab",
        ["inversion.placeholder=dog"],
        None,
        r"token 'dog' is already in the tokenizer's vocabulary",
    ),
    (
        "unknown-init-word",
        ["inversion.init_word='\u00e9\u00e9'"],
        None,
        r"inversion.init_word='\u00e9\u00e9' is unknown",
    ),
    (
        "multi-token-init-word",
        ["inversion.init_word=zzqx"],
        None,
        r"tokenizes to 4 tokens \['z', 'z', 'q', 'x</w>'\]",
    ),
    ("no-init-word", ["inversion.init_word=null"], None, r"inversion.init_word is not set"),
    ("k-below-1", ["inversion.num_vectors=0"], None, r"inversion.num_vectors=0: need k >= 1"),
    ("lr-not-positive", ["inversion.lr=0"], None, r"inversion.lr=0: the learning rate must be > 0"),
    ("steps-below-1", ["inversion.steps=0"], None, r"inversion.steps=0: need at least 1 step"),
    (
        "batch-below-1",
        ["inversion.batch_size=0"],
        None,
        r"inversion.batch_size=0: need a batch of at least 1",
    ),
    ("compile-not-bool", ["inversion.compile=yes"], None, r"inversion.compile='yes': must be true or false"),
    (
        "compile-on-cpu",
        ["inversion.compile=true"],
        None,
        r"inversion.compile=true on cpu: torch.compile's CPU backward",
    ),
    (
        "model-missing",
        ["model.pretrained={tmp}/no-model"],
        None,
        r"model.pretrained=.*no-model: no such folder",
    ),
    ("hub-unreachable", ["model.pretrained=nobody-here/no-such-model"], None, r"no network"),
]


def case_overrides(case, tiny_sd, tmp_path) -> list[str]:
    _, extra, setup, _ = case
    images = setup(tmp_path) if setup else write_concept_images(tmp_path / "concept")
    base = {"model.pretrained": str(tiny_sd), "data.images": str(images), "inversion.init_word": "cat"}
    for item in extra:
        key, value = item.split("=", 1)
        base[key] = value.format(tmp=tmp_path)
    return [f"{k}={v}" for k, v in base.items()] + [
        "inversion.steps=2" if "inversion.steps" not in base else "",
        "tracking=none",
        "device=cpu",
    ]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_check_config_refuses(case, tiny_sd, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_config(*[o for o in case_overrides(case, tiny_sd, tmp_path) if o])
    with pytest.raises(ConfigError, match=case[3]):
        check_config(cfg)


def test_good_config_passes(tiny_sd, tiny_sdxl, concept_images):
    for model in (tiny_sd, tiny_sdxl):
        check_config(
            compose_config(
                f"model.pretrained={model}",
                f"data.images={concept_images}",
                "inversion.init_word=cat",
                "inversion.num_vectors=3",
                "inversion.per_image_tokens=true",
            )
        )


CLI_CASES = [c for c in CASES if c[0] in ("missing-folder", "placeholder-in-vocab")]  # + values: below


def assert_one_short_message(stderr: str, pattern: str) -> None:
    """The console shows the error alone: one line naming the key, no traceback."""
    assert re.search(pattern, stderr) and "Traceback" not in stderr, stderr[-2000:]
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: "), stderr[-2000:]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_before_any_work(case, tiny_sd, tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "sweeper",
        *[o for o in case_overrides(case, tiny_sd, tmp_path) if o],
        f"hydra.run.dir={run}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert_one_short_message(proc.stderr, case[3])
    assert "Loading pipeline components" not in proc.stderr + proc.stdout  # no model was loaded
    assert not run.exists(), sorted(p.name for p in run.iterdir())  # not even Hydra's .hydra/ and log


def test_cli_bad_input_keeps_an_existing_run_folder(tiny_sd, concept_images, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "status.json").write_text('{"status": "completed"}')
    cmd = [
        sys.executable,
        "-m",
        "sweeper",
        f"model.pretrained={tiny_sd}",
        f"data.images={concept_images}",
        "inversion.init_word=cat",
        "inversion.lr=-1",
        "tracking=none",
        f"hydra.run.dir={run}",
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert_one_short_message(proc.stderr, r"inversion.lr=-1: the learning rate must be > 0")
    assert (run / "status.json").read_text() == '{"status": "completed"}'
