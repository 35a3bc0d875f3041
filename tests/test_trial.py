"""One trial end to end through `python -m sweeper` (Hydra multirun included) and run_trial's failure path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import compose_config, smoke_evaluation
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from sweeper.trial import run_trial

ROOT = Path(__file__).resolve().parents[1]


def fast_evaluation(judge, cache):
    return smoke_evaluation(judge, "evaluation.bootstrap=20", f"evaluation.cache_dir={cache}")


def trial_overrides(model, images, *extra):
    return [
        f"model.pretrained={model}",
        f"data.images={images}",
        "inversion.init_word=cat",
        "inversion.steps=6",
        "inversion.batch_size=2",
        "inversion.grad_accum=1",
        "inversion.log_every=3",
        "inversion.checkpoint_every=3",
        "inversion.num_vectors=2",
        "inversion.pivotal.steps=2",
        "tracking=none",
        "device=cpu",
        *extra,
    ]


@pytest.fixture(scope="module")
def multirun(tiny_sd, tiny_judge, tmp_path_factory):
    """`python -m sweeper -m inversion.pivotal.enabled=false,true`: two trials, same seed."""
    from conftest import write_concept_images

    tmp = tmp_path_factory.mktemp("multirun")
    images = write_concept_images(tmp / "concept")
    cmd = [
        sys.executable,
        "-m",
        "sweeper",
        "-m",
        *trial_overrides(tiny_sd, images),
        *fast_evaluation(tiny_judge, tmp / "refs"),
        "inversion.pivotal.enabled=false,true",
        f"hydra.sweep.dir={tmp / 'sweep'}",
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "sweep"


def test_multirun_writes_one_complete_run_folder_per_trial(multirun):
    for job in ("0", "1"):
        run = multirun / job
        status = json.loads((run / "status.json").read_text())
        assert (
            status["status"] == "completed" and status["error"] is None and status["trial_number"] == int(job)
        )
        assert status["wall_time_s"] > 0 and status["finished_at"] >= status["started_at"]
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert "${" not in (run / "config.yaml").read_text() and config["run_dir"] == str(run)
        assert config["inversion"]["pivotal"]["enabled"] is (job == "1")
        for name in (
            "history.csv",
            "learned_embeds.safetensors",
            "learned_embeds_a1111.safetensors",
            "metrics.json",
            "checkpoints/step_3/state.pt",
            "checkpoints/step_6/state.pt",
        ):
            assert (run / name).is_file(), name
        metrics = json.loads((run / "metrics.json").read_text())
        assert 0 < abs(metrics["image_similarity"]) <= 1 and 0 < abs(metrics["text_similarity"]) <= 1
    assert not (multirun / "0" / "pivotal").exists() and (multirun / "1" / "pivotal").is_dir()
    # pivotal tuning comes after inversion and leaves the embedding alone: same seed, same vectors
    first, second = (load_file(multirun / j / "learned_embeds.safetensors")["<concept>"] for j in ("0", "1"))
    assert first.shape == (2, 32) and torch.equal(first, second)


def test_learned_embedding_loads_into_diffusers_and_generates(multirun, tiny_sd):
    saved = load_file(multirun / "0" / "learned_embeds.safetensors")["<concept>"]
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_sd, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(multirun / "0" / "learned_embeds.safetensors")
    ids = pipe.tokenizer.convert_tokens_to_ids(["<concept>", "<concept>_1"])
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], saved)
    with_token, _ = pipe.encode_prompt("a photo of <concept>", "cpu", 1, False)
    without, _ = pipe.encode_prompt("a photo of", "cpu", 1, False)
    assert not torch.allclose(with_token, without)
    image = pipe(
        "a photo of <concept>",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]
    assert image.shape == (32, 32, 3) and image.std() > 0


def test_failure_inside_trial_is_recorded_then_raised(tiny_sd, tiny_judge, concept_images, tmp_path):
    broken = shutil.copytree(tiny_sd, tmp_path / "broken-model")
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    cfg = compose_config(
        *trial_overrides(broken, concept_images), *fast_evaluation(tiny_judge, tmp_path / "refs")
    )
    run = tmp_path / "run"
    with pytest.raises(Exception, match="broken-model"):
        run_trial(cfg, run)
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "broken-model" in status["error"]
    assert "Traceback" in status["traceback"] and status["finished_at"] is not None
    assert (run / "config.yaml").is_file() and not (run / "learned_embeds.safetensors").exists()
