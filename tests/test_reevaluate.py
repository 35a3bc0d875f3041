"""`python -m sweeper.evaluation`: re-evaluate run folders and embedding files of every format, refuse unsafe files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from conftest import compose_config
from omegaconf import OmegaConf

from sweeper.evaluation.__main__ import main
from sweeper.store.embeddings import save_learned_embeds

ROOT = Path(__file__).resolve().parent.parent


def tiny_eval(judge: Path, cache: Path) -> list[str]:
    return [
        "evaluation/prompts=paper_examples",
        f"evaluation.judge={judge}",
        "evaluation.num_samples=2",
        "evaluation.steps=2",
        "evaluation.bootstrap=50",
        f"evaluation.cache_dir={cache}",
        "evaluation.progress=false",
        "device=cpu",
    ]


def make_run(folder: Path, model: Path, images: Path, vectors: list[torch.Tensor]) -> Path:
    """A finished run folder as a trial leaves it: embeddings, its resolved config and its own metrics."""
    save_learned_embeds(folder, "<run-tok>", vectors)
    cfg = compose_config(
        f"model.pretrained={model}",
        f"data.images={images}",
        "inversion.init_word=cat",
        "evaluation=paper",
        "data.n_images=3",
    )
    cfg.run_dir = str(folder)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (folder / "metrics.json").write_text('{"image_similarity": 0.5, "text_similarity": 0.2}')
    return folder


def test_reevaluate_run_folder_into_new_folder(tiny_sd, tiny_judge, concept_images, tmp_path, capsys):
    run = make_run(tmp_path / "run", tiny_sd, concept_images, [torch.randn(1, 32)])
    own = (run / "metrics.json").read_text()
    out = tmp_path / "reeval"
    assert (
        main([str(run), "--out", str(out), "evaluation=fast", *tiny_eval(tiny_judge, tmp_path / "refs")]) == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert (run / "metrics.json").read_text() == own  # the run's own metrics untouched
    # the run's config (3 of 4 images, its model) with the overrides on top (fast preset, tiny sizes)
    assert metrics["placeholder"] == "<run-tok>" and len(metrics["training_images"]) == 3
    assert metrics["protocol"]["sampler"] == "dpmsolver++" and metrics["protocol"]["steps"] == 2
    assert metrics["protocol"]["prompt_set"] == "paper_examples" and len(metrics["per_prompt"]) == 3
    assert metrics["source"] == str(run) and (out / "config.yaml").is_file() and (out / "samples").is_dir()
    assert "image_similarity=" in capsys.readouterr().out
    # an existing output folder is not overwritten; --in-place rewrites the run's own metrics
    assert main([str(run), "--out", str(out), *tiny_eval(tiny_judge, tmp_path / "refs")]) == 2
    assert "already holds a metrics.json" in capsys.readouterr().err
    assert main([str(run), "--in-place", *tiny_eval(tiny_judge, tmp_path / "refs")]) == 0
    assert json.loads((run / "metrics.json").read_text())["protocol"]["sampler"] == "ddim"


def test_reevaluate_sdxl_run_folder(tiny_sdxl, tiny_judge, concept_images, tmp_path):
    run = make_run(tmp_path / "run", tiny_sdxl, concept_images, [torch.randn(2, 32), torch.randn(2, 48)])
    out = tmp_path / "reeval"
    assert main([str(run), "--out", str(out), *tiny_eval(tiny_judge, tmp_path / "refs")]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_vectors"] == 2 and -1 <= metrics["image_similarity"] <= 1


def test_reevaluate_diffusers_and_a1111_files(tiny_sd, tiny_judge, concept_images, tmp_path):
    from safetensors.torch import save_file

    vec = torch.randn(2, 32)
    diffusers_file = tmp_path / "learned_embeds.safetensors"
    save_file({"<my-tok>": vec}, str(diffusers_file))
    bin_file = tmp_path / "learned_embeds.bin"
    torch.save({"<bin-tok>": vec}, bin_file)
    a1111_pt = tmp_path / "mytok.pt"
    torch.save({"string_to_param": {"*": vec}, "name": "mytok", "step": 3000}, a1111_pt)
    a1111_st = tmp_path / "comfy.safetensors"
    save_file({"emb_params": vec}, str(a1111_st))
    common = [
        f"model.pretrained={tiny_sd}",
        f"data.images={concept_images}",
        *tiny_eval(tiny_judge, tmp_path / "refs"),
    ]
    results = {}
    for name, path, token in (
        ("diffusers", diffusers_file, "<my-tok>"),
        ("bin", bin_file, "<bin-tok>"),
        ("a1111", a1111_pt, "mytok"),
        ("comfy", a1111_st, "<concept>"),
    ):
        out = tmp_path / f"out-{name}"
        assert main([str(path), "--out", str(out), *common]) == 0, name
        results[name] = json.loads((out / "metrics.json").read_text())
        assert results[name]["placeholder"] == token and results[name]["num_vectors"] == 2
        assert len(results[name]["training_images"]) == 4
    # the same vectors and the same noise give the same numbers, whatever the file format or token name
    for name in ("bin", "a1111", "comfy"):
        assert abs(results[name]["image_similarity"] - results["diffusers"]["image_similarity"]) < 1e-6
        assert abs(results[name]["text_similarity"] - results["diffusers"]["text_similarity"]) < 1e-6
    assert results["a1111"]["references"] == results["diffusers"]["references"]  # cached once
    assert main([str(a1111_pt), "--out", str(tmp_path / "tok"), "--token", "<other>", *common]) == 0
    assert json.loads((tmp_path / "tok" / "metrics.json").read_text())["placeholder"] == "<other>"


def test_reevaluate_file_needs_data_images(tiny_sd, tiny_judge, tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"<t>": torch.randn(1, 32)}, str(tmp_path / "e.safetensors"))
    embedding, model, judge = (
        tmp_path / "e.safetensors",
        f"model.pretrained={tiny_sd}",
        f"evaluation.judge={tiny_judge}",
    )
    assert main([str(embedding), model, judge, "--out", str(tmp_path / "o")]) == 2
    assert "data.images" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cli_refuses_pickle_carrying_code(tiny_sd, concept_images, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": _Evil(marker)}, "name": "evil"}, evil)
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeper.evaluation",
            str(evil),
            f"model.pretrained={tiny_sd}",
            f"data.images={concept_images}",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "refused" in proc.stderr and "evil.pt" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists() and not out.exists()


def test_bad_override_is_one_clear_line(tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"<t>": torch.randn(1, 32)}, str(tmp_path / "e.safetensors"))
    assert main([str(tmp_path / "e.safetensors"), "evaluation=nope", "--out", str(tmp_path / "o")]) == 2
    assert "evaluation" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main([str(tmp_path / "e.safetensors"), "evaluation.steps=[", "--out", str(tmp_path / "o")]) == 2


def test_cli_refuses_a_nan_embedding_before_any_model_work(tmp_path, capsys, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.chdir(ROOT)  # model=toy and data=toy_arrow name repository paths
    nan = tmp_path / "nan.safetensors"
    save_file({"<nan>": torch.full((1, 64), float("nan"))}, str(nan))  # the toy world's width, all NaN
    out = tmp_path / "out"
    assert main([str(nan), "model=toy", "data=toy_arrow", "evaluation=toy", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{nan}: 64 of 64 values are NaN or infinite" in err and not out.exists()


def weightless_copy(model: Path, dest: Path) -> Path:
    """The model folder's configs and tokenizer without any weights: loading it fails, reading its configs works."""
    shutil.copytree(model, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return dest


def test_cli_refuses_a_wrong_width_from_the_configs_naming_the_file(
    tiny_sd, concept_images, tmp_path, capsys
):
    from safetensors.torch import save_file

    wide = tmp_path / "sd15-concept.safetensors"
    save_file({"<wide>": torch.randn(1, 768)}, str(wide))  # an SD 1.x embedding for the 32-wide tiny model
    model = weightless_copy(tiny_sd, tmp_path / "no-weights")  # any model loading would fail differently
    out = tmp_path / "out"
    args = [str(wide), f"model.pretrained={model}", f"data.images={concept_images}", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{wide}: holds 1 vector set(s) of width [768], but model.pretrained={model}" in err
    assert "take [32]" in err and "loading failed" not in err and not out.exists()


def test_reevaluate_the_official_codes_embeddings_file(tiny_sd, tiny_judge, concept_images, tmp_path):
    from safetensors.torch import save_file

    vec = torch.randn(2, 32)
    official = tmp_path / "embeddings_gs-4999.pt"  # as rinongal/textual_inversion's EmbeddingManager.save()
    params = torch.nn.ParameterDict({"*": torch.nn.Parameter(vec.clone())})
    torch.save(
        {"string_to_token": {"*": torch.tensor([[49406, 265, 49407]])[0, 1]}, "string_to_param": params},
        official,
    )
    save_file({"<same>": vec}, str(tmp_path / "same.safetensors"))
    common = [
        f"model.pretrained={tiny_sd}",
        f"data.images={concept_images}",
        *tiny_eval(tiny_judge, tmp_path / "r"),
    ]
    assert main([str(official), "--out", str(tmp_path / "official"), *common]) == 0
    assert main([str(tmp_path / "same.safetensors"), "--out", str(tmp_path / "same"), *common]) == 0
    got, ref = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("official", "same"))
    assert got["num_vectors"] == 2 and got["placeholder"] == "<concept>"
    # the same vectors, noise and judge: the same numbers (one code path after reading; float32 sums)
    assert abs(got["image_similarity"] - ref["image_similarity"]) < 1e-6
    assert abs(got["text_similarity"] - ref["text_similarity"]) < 1e-6
