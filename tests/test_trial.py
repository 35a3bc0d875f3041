"""One trial end to end through `python -m sweeper` (Hydra multirun included) and run_trial's failure path."""

from __future__ import annotations

import errno
import gc
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
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file

from sweeper.data.images import list_images
from sweeper.evaluation.protocol import evaluate_embedding
from sweeper.store import atomic
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


def test_ctrl_c_ends_interrupted_with_a_checkpoint_and_a_pruned_trial_says_pruned(
    tiny_sd, tiny_judge, concept_images, tmp_path
):
    import optuna

    cfg = compose_config(
        *trial_overrides(tiny_sd, concept_images, "inversion.checkpoint_every=0", "inversion.log_every=2"),
        *fast_evaluation(tiny_judge, tmp_path / "refs"),
    )

    def ctrl_c_at_4(step, values):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_trial(cfg, tmp_path / "ctrl_c", on_log=ctrl_c_at_4)
    status = json.loads((tmp_path / "ctrl_c" / "status.json").read_text())
    assert status["status"] == "interrupted" and status["error"].startswith("KeyboardInterrupt")
    assert status["pid"] == os.getpid() and status["host"]
    assert [p.name for p in (tmp_path / "ctrl_c" / "checkpoints").iterdir()] == ["step_4"]

    def prune(step, values):
        raise optuna.TrialPruned(f"pruned at step {step}")

    quick = ["evaluation.quick.every=3", "evaluation.quick.num_samples=2", "evaluation.quick.steps=2"]
    cfg = compose_config(
        *trial_overrides(tiny_sd, concept_images, *quick), *fast_evaluation(tiny_judge, tmp_path)
    )
    with pytest.raises(optuna.TrialPruned):
        run_trial(cfg, tmp_path / "pruned", report=prune)
    status = json.loads((tmp_path / "pruned" / "status.json").read_text())
    assert status["status"] == "pruned" and "pruned at step 3" in status["error"]
    assert not (tmp_path / "pruned" / "metrics.json").exists()


class FullDisk:
    """A disk that fills once the trial has started: every new file (atomic writes make one per write)
    then fails with ENOSPC, as it would on a real full disk; rewriting existing blocks still works."""

    def __init__(self, monkeypatch, *, lose_status: bool = False):
        self.full, self.lose_status = False, lose_status
        original = atomic._write_via

        def write_via(path, write):
            if self.full:
                if self.lose_status and path.name == "status.json":
                    path.unlink()  # nothing left to rewrite in place: recording the outcome fails too
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            if path.name == "config.yaml":  # start_run writes status.json, then config.yaml: the disk is full
                self.full = True
            return original(path, write)

        monkeypatch.setattr(atomic, "_write_via", write_via)


def test_a_full_disk_still_records_failed_with_the_disk_error(
    tiny_sd, tiny_judge, concept_images, tmp_path, monkeypatch
):
    FullDisk(monkeypatch)
    cfg = compose_config(*trial_overrides(tiny_sd, concept_images), *fast_evaluation(tiny_judge, tmp_path))
    with pytest.raises(OSError, match="No space left"):
        run_trial(cfg, tmp_path / "run")
    status = json.loads((tmp_path / "run" / "status.json").read_text())  # rewritten in place, still JSON
    assert status["status"] == "failed" and "No space left on device" in status["error"]
    assert status["finished_at"] is not None and status["pid"] == os.getpid()


@pytest.mark.parametrize("lose_status", [False, True])
def test_on_a_full_disk_the_trials_own_error_surfaces(
    tiny_sd, tiny_judge, concept_images, tmp_path, monkeypatch, lose_status
):
    """A non-finite loss on a full disk: status.json says failed with THAT error (rewritten in place); and
    when even that cannot be written, the trial still raises its own error, not the disk's."""
    FullDisk(monkeypatch, lose_status=lose_status)
    # reg_weight=1e308 passes the checks (inf is refused) but overflows float32: a non-finite loss
    cfg = compose_config(
        *trial_overrides(tiny_sd, concept_images, "inversion.reg_weight=1e308"),
        *fast_evaluation(tiny_judge, tmp_path),
    )
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        run_trial(cfg, tmp_path / "run")
    if not lose_status:
        status = json.loads((tmp_path / "run" / "status.json").read_text())
        assert status["status"] == "failed" and status["error"].startswith(
            "FloatingPointError: non-finite loss"
        )


def unet_watch(events: list):
    """A global forward hook (torch's own API, no mock) recording, per UNet call: the module's id, whether it
    trained (grad on) or sampled, and at the first sampling call how many UNets are alive."""
    first_sampling = []

    def hook(module, args, output):
        if not isinstance(module, UNet2DConditionModel):
            return
        training = torch.is_grad_enabled()
        alive = None
        if not training and not first_sampling:
            first_sampling.append(id(module))
            gc.collect()
            alive = sum(isinstance(o, UNet2DConditionModel) for o in gc.get_objects())
        events.append((id(module), training, alive))

    return torch.nn.modules.module.register_module_forward_hook(hook)


def test_evaluation_samples_with_the_trainers_unet_and_scores_as_a_fresh_pipeline(
    tiny_sd, tiny_judge, concept_images, tmp_path
):
    cfg = compose_config(
        *trial_overrides(tiny_sd, concept_images), *fast_evaluation(tiny_judge, tmp_path / "refs")
    )
    events = []
    handle = unet_watch(events)
    try:
        run_trial(cfg, tmp_path / "run")
    finally:
        handle.remove()
    trained = {m for m, training, _ in events if training}
    sampled = {m for m, training, _ in events if not training}
    assert len(trained) == 1 and sampled == trained  # one UNet, trained then sampled
    assert [alive for *_, alive in events if alive is not None] == [1]
    peaks = json.loads((tmp_path / "run" / "status.json").read_text())["peak_memory_gib"]
    assert set(peaks) == {"training", "evaluation", "measured_by"}
    if (
        peaks["measured_by"] is not None
    ):  # Linux: each phase's peak resident set, the model's weights included
        assert peaks["training"] > 0 and peaks["evaluation"] > 0
    # the same run folder evaluated the old way (a freshly loaded pipeline, the embedding file loaded in)
    fresh = evaluate_embedding(cfg, tmp_path / "run", list_images(concept_images), tmp_path / "fresh")
    reused = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # same weights, embedding and noise; only float summation order may differ between the two pipelines
    for key in ("image_similarity", "text_similarity"):
        assert reused[key] == pytest.approx(fresh[key], abs=1e-5), key


def test_evaluation_in_another_precision_frees_the_trainer_first(
    tiny_sd, tiny_judge, concept_images, tmp_path
):
    """bf16 training, fp32 evaluation: the bf16 UNet cannot give the fp32 one, so it is freed before the
    evaluation pipeline loads; at the first sampling call only the evaluation's UNet is alive."""
    cfg = compose_config(
        *trial_overrides(tiny_sd, concept_images, "inversion.precision=bf16"),
        *fast_evaluation(tiny_judge, tmp_path / "refs"),
        "evaluation.precision=fp32",
    )
    events = []
    handle = unet_watch(events)
    try:
        run_trial(cfg, tmp_path / "run")
    finally:
        handle.remove()
    trained = {m for m, training, _ in events if training}
    sampled = {m for m, training, _ in events if not training}
    assert len(trained) == 1 and len(sampled) == 1 and trained != sampled
    assert [alive for *_, alive in events if alive is not None] == [1]
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "completed"
