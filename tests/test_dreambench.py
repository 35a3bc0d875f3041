"""DreamBench's metrics (sweeper/evaluation/dreambench.py): DINO CLS embeddings from a small random ViTModel
(and a CLIP image tower in the DINO slot) saved with save_pretrained, and DINO / CLIP-I / CLIP-T as DreamBooth
defines them, checked against the definitions computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sweeper.config.schema import EvaluationConfigError
from sweeper.evaluation.dreambench import CLIP_TOWER_KIND, DINO_KIND, DinoEncoder, dino_scores
from sweeper.evaluation.metrics import get, score

torch.set_num_threads(1)


def _images(n: int, seed: int = 0, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_dino_slot_is_the_vit_cls_token(tiny_vit):
    from transformers import ViTImageProcessor, ViTModel

    enc = DinoEncoder(str(tiny_vit))
    images = _images(3)
    feats = enc.images(images)
    model = ViTModel.from_pretrained(tiny_vit, add_pooling_layer=False).eval()
    pix = ViTImageProcessor.from_pretrained(tiny_vit)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        cls = model(pixel_values=pix).last_hidden_state[:, 0]
    expected = torch.nn.functional.normalize(cls, dim=-1).double().numpy()
    assert enc.kind == DINO_KIND and feats.shape == (3, 32)
    np.testing.assert_allclose(feats, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(feats, axis=1), 1)
    assert not np.allclose(feats[0], feats[1])  # different images, different embeddings


def test_a_clip_folder_in_the_dino_slot_uses_its_image_tower_and_says_so(tiny_judge):
    from transformers import CLIPVisionModel

    enc = DinoEncoder(str(tiny_judge))
    images = _images(2, seed=1)
    assert enc.kind == CLIP_TOWER_KIND and enc.identity() == {
        "name": str(tiny_judge),
        "kind": CLIP_TOWER_KIND,
    }
    model = CLIPVisionModel.from_pretrained(tiny_judge).eval()
    pix = enc.processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model(pixel_values=pix).pooler_output, dim=-1)
    np.testing.assert_allclose(enc.images(images), expected.double().numpy(), atol=1e-5)


def test_an_unloadable_dino_model_is_one_line_naming_the_key(tmp_path):
    with pytest.raises(EvaluationConfigError, match=r"evaluation\.dreambench\.dino=.*ViTModel"):
        DinoEncoder(str(tmp_path / "nowhere"))


def _unit(rng, shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_dino_clip_i_clip_t_as_dreambooth_defines_them():
    rng = np.random.default_rng(0)
    prompts, per_prompt, real = 5, 4, 6  # DreamBench: 25 prompts x 4 images; here 5 x 4 against 6 photos
    dino_gen = [_unit(rng, (per_prompt, 16)) for _ in range(prompts)]
    clip_gen = [_unit(rng, (per_prompt, 8)) for _ in range(prompts)]
    dino_real, clip_real, texts = _unit(rng, (real, 16)), _unit(rng, (real, 8)), _unit(rng, (prompts, 8))
    got = dino_scores(dino_gen, dino_real, n_boot=400)
    clip = score(
        clip_gen[0], clip_real, clip_gen, texts, n_boot=400
    )  # the registry: clip_i, clip_t with the rest
    pairs = [float(g @ r) for gs in dino_gen for g in gs for r in dino_real]  # every (generated, real) pair
    assert got["dino"] == pytest.approx(np.mean(pairs))
    assert clip["clip_i"] == pytest.approx(
        np.mean([float(g @ r) for gs in clip_gen for g in gs for r in clip_real])
    )
    assert clip["clip_t"] == pytest.approx(
        np.mean([float(g @ t) for gs, t in zip(clip_gen, texts) for g in gs])
    )
    assert clip["clip_t"] == clip["text_similarity_per_image"]  # one computation, two names
    off = [float(a @ b) for i, a in enumerate(dino_real) for j, b in enumerate(dino_real) if i != j]
    assert got["real_images_dino"] == pytest.approx(np.mean(off))
    for name, out in (("dino", got), ("clip_i", clip), ("clip_t", clip)):
        low, high = out[f"{name}_ci"]
        assert -1 <= low < out[name] < high <= 1  # a mean: the interval is centred on it, inside the range
        assert out[f"{name}_ci_too_few_samples"] is False  # 4 per prompt: where coverage was measured
        assert get(name).range == (-1.0, 1.0) and get(name).direction == "maximize"


def test_identical_generated_and_real_images_score_one_and_stay_in_range():
    rng = np.random.default_rng(1)
    real = _unit(rng, (1, 16))
    gen = [np.repeat(real, 4, axis=0)] * 3
    got = dino_scores(gen, real, n_boot=50)
    assert got["dino"] == pytest.approx(1) and got["dino_ci"][1] <= 1  # clipped to the cosine range
    assert got["real_images_dino"] is None  # one real image: no pair of distinct ones
    few = dino_scores([g[:2] for g in gen], real, n_boot=50)
    assert few["dino_ci_too_few_samples"] is True  # 2 images per prompt: below the measured coverage count


def test_a_trial_with_evaluation_dreambench_records_the_three_metrics(
    tiny_sd, tiny_judge, tiny_vit, concept_images, tmp_path
):
    import json

    from conftest import SMOKE_INVERSION, compose_config

    from sweeper.trial import run_trial

    cfg = compose_config(
        f"model.pretrained={tiny_sd}",
        f"data.images={concept_images}",
        *SMOKE_INVERSION,
        "evaluation=dreambench",
        f"evaluation.judge={tiny_judge}",
        f"evaluation.dreambench.dino={tiny_vit}",
        "evaluation.steps=2",
        "evaluation.bootstrap=20",
        "evaluation.references=false",
        "evaluation.progress=false",
        "data.class_word=toy",
    )
    assert cfg.evaluation.num_samples == 4 and len(cfg.evaluation.prompts) == 25
    run_trial(cfg, tmp_path / "run")
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    bench = m["dreambench"]
    assert bench["images_per_prompt"] == [4] * 25  # DreamBench: 25 prompts x 4 images
    assert (
        bench["dino_encoder"] == {"name": str(tiny_vit), "kind": DINO_KIND} and bench["class_word"] == "toy"
    )
    for name in ("dino", "clip_i", "clip_t"):  # registered metrics: top-level keys with clipped intervals
        low, high = m[f"{name}_ci"]
        assert -1 <= low <= m[name] <= high <= 1 and m[f"{name}_ci_too_few_samples"] is False
    assert -1 <= bench["real_images"]["dino"] <= 1
    # CLIP-T is the per-image text similarity over the same prompts: one computation, two names
    assert m["clip_t"] == pytest.approx(m["text_similarity_per_image"], abs=1e-9)
    # the prompts are DreamBench's, with the class word: "a <concept> toy in the jungle"
    assert "a {} toy in the jungle" in m["per_prompt"] and m["per_prompt"]["a {} toy in the jungle"][
        "text"
    ] == ("a toy in the jungle")


def test_live_subjects_take_the_live_prompts(tiny_sd, tiny_judge, concept_images):
    from conftest import compose_config

    from sweeper.config.schema import evaluation_settings
    from sweeper.evaluation.protocol import class_word, with_class

    cfg = compose_config(
        f"model.pretrained={tiny_sd}",
        f"data.images={concept_images}",
        "evaluation=dreambench",
        "inversion.init_word=dog",
    )
    ev = evaluation_settings(cfg.evaluation)
    ev["dreambench"]["class_word"] = class_word(cfg)
    ev = with_class(ev)
    assert "a {} dog wearing a santa hat" in ev["prompts"] and len(ev["prompts"]) == 25
    ev_obj = evaluation_settings(cfg.evaluation)
    ev_obj["dreambench"]["class_word"] = "stuffed animal"
    assert with_class(ev_obj)["prompts"][0] == "a {} stuffed animal in the jungle"


def test_the_report_lays_dreambench_out_like_table_1_beside_the_published_rows(tmp_path):
    import json

    from test_analysis import write_run

    from analysis.analyse import analyse
    from analysis.dreambench import PUBLISHED

    values = {}
    for i, (concept, over, seed) in enumerate(
        (c, o, s) for c in ("cat_toy", "teapot") for o in ({}, {"inversion.lr": 1e-4}) for s in range(2)
    ):
        run = tmp_path / "s" / str(i)
        write_run(run, concept, over | {"inversion.seed": seed}, 0.7, 0.3, 0.5, "completed", seed=i)
        dino = 0.5 + 0.1 * i / 8 + (0.05 if concept == "teapot" else 0)
        m = json.loads((run / "metrics.json").read_text())
        m.update(dino=dino, dino_ci=[dino - 0.01, dino + 0.01], clip_i=0.7, clip_t=0.25)
        m["dreambench"] = {
            "real_images": {"dino": 0.8 if concept == "teapot" else 0.7, "clip_i": 0.9},
            "dino_encoder": {"name": "facebook/dino-vits16", "kind": "ViTModel CLS token"},
            "clip": "openai/clip-vit-base-patch32",
        }
        (run / "metrics.json").write_text(json.dumps(m))
        values.setdefault(("lr" in str(over)) and "low" or "ours", {}).setdefault(concept, []).append(dino)
    res = analyse([tmp_path / "s"], tmp_path / "out", wandb=False)
    table = res["dreambench"].set_index("method")
    ours = np.mean([np.mean(v) for v in values["ours"].values()])  # mean over concepts of the seeds' mean
    assert table.loc["ours", "dino"] == pytest.approx(ours) and table.loc["ours", "concepts"] == 2
    assert table.loc["ours", "dino_ci_low"] < ours < table.loc["ours", "dino_ci_high"]
    assert table.loc["Real Images (these concepts)", "dino"] == pytest.approx(0.75)
    ti = table.loc["Textual Inversion, Stable Diffusion (published, DreamBooth Table 1)"]
    assert (ti["dino"], ti["clip_i"], ti["clip_t"], ti["source"]) == (0.569, 0.780, 0.255, "published")
    assert table.loc["Real Images (published, DreamBooth Table 1)", "dino"] == 0.774 and len(PUBLISHED) == 2
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.index('id="dreambench"') < html.index("<h2>Plots</h2>")
    assert "<td>Textual Inversion, Stable Diffusion (published, DreamBooth Table 1)</td>" in html
    assert "0.569" in html and "0.780" in html and "0.255" in html and "not reproduced" in html
    assert (tmp_path / "out" / "dreambench.csv").is_file()


def _manifest(tmp_path, names=("dog_a", "toy_b")):
    from conftest import write_concept_images

    entries = []
    for i, name in enumerate(names):
        write_concept_images(tmp_path / "concepts" / name, n=3, seed=i)
        entries.append({"images": name, "class_word": "dog" if name.startswith("dog") else "toy"})
    path = tmp_path / "concepts" / "manifest.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"concepts": entries}))
    return path


def test_a_manifest_of_concepts_is_one_trial_with_means_over_concepts(
    tiny_sd, tiny_judge, tiny_vit, tmp_path
):
    import json

    from conftest import SMOKE_INVERSION, compose_config
    from scipy.stats import t as student_t

    from analysis.analyse import analyse
    from sweeper.trial import run_trial

    cfg = compose_config(
        f"model.pretrained={tiny_sd}",
        f"data.manifest={_manifest(tmp_path)}",
        *SMOKE_INVERSION,
        "evaluation=dreambench",
        f"evaluation.judge={tiny_judge}",
        f"evaluation.dreambench.dino={tiny_vit}",
        "evaluation.steps=2",
        "evaluation.bootstrap=20",
        "evaluation.references=false",
        "evaluation.progress=false",
    )
    image, text = run_trial(cfg, tmp_path / "trial")
    summary = json.loads((tmp_path / "trial" / "concepts.json").read_text())
    per = {}
    for name in ("dog_a", "toy_b"):
        m = json.loads(
            (tmp_path / "trial" / name / "metrics.json").read_text()
        )  # each concept its own run folder
        per[name] = (m["image_similarity"], m["text_similarity"])
        assert m["vectorised_group"] == 2  # both concepts trained as one group
    assert (
        "a {} dog wearing a santa hat"
        in json.loads((tmp_path / "trial" / "dog_a" / "metrics.json").read_text())["per_prompt"]
    )  # a live subject's prompts, its class word filled in
    assert image == pytest.approx(np.mean([v[0] for v in per.values()])) == summary["image_similarity"]
    assert text == pytest.approx(np.mean([v[1] for v in per.values()]))
    xs = [v[0] for v in per.values()]
    half = student_t.ppf(0.975, 1) * np.std(xs, ddof=1) / np.sqrt(2)
    assert summary["image_similarity_ci"] == pytest.approx([image - half, image + half])
    assert summary["n_concepts"] == 2 and summary["failed"] == {}
    res = analyse([tmp_path / "trial"], tmp_path / "out", wandb=False)
    assert sorted(res["runs"]["concept"]) == ["dog_a", "toy_b"]
    (row,) = [r for _, r in res["dreambench"].iterrows() if r["source"] == "this sweep"]  # one configuration
    assert row["concepts"] == 2 and row["runs"] == 2  # aggregated by configuration across concepts


def test_a_bad_manifest_is_one_line_before_any_model_work(tmp_path):
    from sweeper.checks import ConfigError
    from sweeper.config.manifest import read_manifest

    path = tmp_path / "m.yaml"
    path.write_text("concepts:\n  - images: missing\n")
    with pytest.raises(ConfigError, match=r"data.manifest=.*concepts\[0\].images=missing: no such folder"):
        read_manifest(path)
    path.write_text("concepts: []\n")
    with pytest.raises(ConfigError, match="non-empty 'concepts:' list"):
        read_manifest(path)


@pytest.mark.e2e
def test_the_vectorised_launcher_trains_every_jobs_concepts_as_one_group(
    tiny_sd, tiny_judge, tiny_vit, tmp_path
):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable,
        "-m",
        "sweeper",
        "-m",
        f"model.pretrained={tiny_sd}",
        f"data.manifest={_manifest(tmp_path)}",
        "inversion.init_word=dog",
        "inversion.steps=3",
        "inversion.batch_size=1",
        "inversion.grad_accum=1",
        "inversion.checkpoint_every=0",
        "inversion.lr=5e-3,1e-3",
        "evaluation=dreambench",
        f"evaluation.judge={tiny_judge}",
        f"evaluation.dreambench.dino={tiny_vit}",
        "evaluation.steps=2",
        "evaluation.bootstrap=10",
        "evaluation.references=false",
        "evaluation.progress=false",
        "tracking=none",
        "device=cpu",
        "hydra/launcher=vectorised",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    out = subprocess.run(
        cmd, cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for job in ("0", "1"):  # two manifest trials (one per LR), each over two concepts
        summary = json.loads((tmp_path / "sweep" / job / "concepts.json").read_text())
        assert summary["n_concepts"] == 2 and summary["failed"] == {}
        for concept in ("dog_a", "toy_b"):
            m = json.loads((tmp_path / "sweep" / job / concept / "metrics.json").read_text())
            assert m["vectorised_group"] == 4  # both jobs' concepts trained as one group
            assert m["dino"] == pytest.approx(summary["concepts"][concept]["dino"])
