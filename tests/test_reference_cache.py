"""The evaluation's reference cache: keyed by everything a cached value depends on, and never trusted blindly."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf
from test_evaluation import eval_cfg

from sweeper.data.images import list_images
from sweeper.evaluation.protocol import evaluate_run
from sweeper.store.embeddings import save_learned_embeds


def _evaluate(model: Path, judge: Path, cache: Path, images: list[Path], run: Path) -> dict:
    if not run.exists():
        save_learned_embeds(
            run, "<cat-toy>", [torch.randn(2, 32, generator=torch.Generator().manual_seed(0))]
        )
    cfg = OmegaConf.create(
        {"model": {"pretrained": str(model)}, "device": "cpu", "evaluation": eval_cfg(judge, cache)}
    )
    return evaluate_run(cfg, run, images)


def test_replacing_the_unet_weights_in_the_same_folder_recomputes_the_prompt_only_reference(
    tiny_sd, tiny_judge, concept_images, tmp_path
):
    from tiny_components import build_tiny_sd

    model = shutil.copytree(tiny_sd, tmp_path / "model")
    images, cache = list_images(concept_images), tmp_path / "refs"
    first = _evaluate(model, tiny_judge, cache, images, tmp_path / "run")
    other = build_tiny_sd(tmp_path / "other", seed=1)
    weights = Path("unet") / "diffusion_pytorch_model.safetensors"
    shutil.copyfile(other / weights, model / weights)  # model_index.json untouched

    second = _evaluate(model, tiny_judge, cache, images, tmp_path / "run")
    assert (
        len(list(cache.glob("prompt_only/*.npz"))) == 2
    )  # a new entry: the old UNet's samples are not reused
    assert second["references"]["prompt_only"] != first["references"]["prompt_only"]
    third = _evaluate(
        model, tiny_judge, cache, images, tmp_path / "run"
    )  # unchanged weights: the cache serves
    assert third["references"] == second["references"] and len(list(cache.glob("prompt_only/*.npz"))) == 2


def test_replacing_the_judges_weights_recomputes_both_references(
    tiny_sd, tiny_judge, concept_images, tmp_path
):
    from tiny_components import build_tiny_clip

    judge = shutil.copytree(tiny_judge, tmp_path / "judge")
    images, cache = list_images(concept_images), tmp_path / "refs"
    first = _evaluate(tiny_sd, judge, cache, images, tmp_path / "run")
    other = build_tiny_clip(tmp_path / "other", seed=1)
    shutil.copyfile(other / "model.safetensors", judge / "model.safetensors")
    second = _evaluate(tiny_sd, judge, cache, images, tmp_path / "run")
    assert len(list(cache.glob("prompt_only/*.npz"))) == 2 and len(list(cache.glob("image_only/*.json"))) == 2
    assert second["references"]["image_only"] != first["references"]["image_only"]


DAMAGES = [
    ("prompt_only/*.npz", lambda b: b[: len(b) // 2]),  # truncated
    ("image_only/*.json", lambda b: b"\x00garbage{"),
    ("image_only/*.json", lambda b: b""),
    ("image_only/*.json", lambda b: b'{"judge": "x"}'),  # valid JSON, not an entry
]


def test_a_damaged_cache_entry_is_warned_about_recomputed_and_rewritten(
    tiny_sd, tiny_judge, concept_images, tmp_path, caplog
):
    images, cache = list_images(concept_images), tmp_path / "refs"
    first = _evaluate(tiny_sd, tiny_judge, cache, images, tmp_path / "run")
    for pattern, spoil in DAMAGES:
        (entry,) = cache.glob(pattern)
        good = entry.read_bytes()
        entry.write_bytes(spoil(good))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="sweeper.evaluation.protocol"):
            again = _evaluate(tiny_sd, tiny_judge, cache, images, tmp_path / "run")
        assert again["references"] == first["references"]  # recomputed, not failed
        warned = [r.getMessage() for r in caplog.records if entry.name in r.getMessage()]
        assert len(warned) == 1 and "\n" not in warned[0] and "recomput" in warned[0], warned
        if entry.suffix == ".json":
            assert json.loads(entry.read_text()) == json.loads(good)  # rewritten
        else:
            assert entry.stat().st_size == len(good)


_HUB_IDENTITY = """
import json, sys
from sweeper.evaluation.cache import source_identity
print(json.dumps(source_identity("org/model")))
"""


def test_a_hub_models_identity_is_its_cached_revision(tmp_path):
    import os
    import subprocess
    import sys

    repo = tmp_path / "hub" / "models--org--model"

    def identity() -> dict:
        env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
        out = subprocess.run(
            [sys.executable, "-c", _HUB_IDENTITY], env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    for revision in ("a" * 40, "b" * 40):  # the hub's main branch moved
        (repo / "snapshots" / revision).mkdir(parents=True)
        (repo / "snapshots" / revision / "model_index.json").write_text("{}")
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
        assert identity() == {"hub": "org/model", "revision": revision}
