"""The benchmark's parts: the reference loop is the diffusers example's, the harness measures, `python -m bench` reports."""

from __future__ import annotations

import json

import pytest
import torch

from bench import harness
from bench.reference import ReferenceLoop
from bench.shapes import CLIP_VOCAB, PROFILES, build_components, concept_pixels, padded_tokenizer
from bench.techniques import TECHNIQUES, Variant


@pytest.fixture(scope="module")
def comps():
    return build_components("tiny")


def test_reference_learns_only_placeholder_rows(comps):
    ref = ReferenceLoop(comps, concept_pixels(3, comps.resolution), num_vectors=2, batch_size=2, lr=1e-2)
    before = ref.text_encoder.get_input_embeddings().weight.detach().clone()
    losses = [ref.step() for _ in range(3)]
    after = ref.text_encoder.get_input_embeddings().weight.detach()
    changed = (before != after).any(dim=1).nonzero().flatten().tolist()
    assert (
        changed == ref.placeholder_ids and len(changed) == 2
    )  # weight decay hit every row; all but these restored
    assert all(torch.isfinite(torch.tensor(losses)))
    assert ref.learned.shape == (2, 32)
    # the shared components are untouched: the reference works on its own tokenizer and text encoder
    assert "<ref>" not in comps.tokenizers[0].get_vocab()
    with pytest.raises(ValueError, match="single token"):
        ReferenceLoop(comps, concept_pixels(1, comps.resolution), init_word="toyteapot")


def test_reference_reads_files_like_the_example(comps, tmp_path):
    from bench.run import write_images
    from sweeper.data.images import load_image

    paths = write_images(tmp_path / "img", 2, comps.resolution)
    ref = ReferenceLoop(comps, paths, batch_size=2)
    for i, p in enumerate(paths):
        torch.testing.assert_close(ref._load(i, False), load_image(p, comps.resolution), atol=1e-6, rtol=0)
        torch.testing.assert_close(
            ref._load(i, True), load_image(p, comps.resolution).flip(-1), atol=1e-6, rtol=0
        )
    assert torch.isfinite(torch.tensor(ref.step()))


def test_technique_variants_train(comps):
    pixels = concept_pixels(3, comps.resolution)
    for techniques in [(t,) for t in TECHNIQUES if t != "compile"] + [("cache_latents", "sparse_rows")]:
        v = Variant(comps, pixels, techniques, batch_size=2, lr=1e-2)
        start = v.learned.clone()
        v.step()
        v.step()
        assert not torch.equal(v.learned, start), techniques
    with pytest.raises(ValueError, match="unknown technique"):
        Variant(comps, pixels, ("warp_drive",))


def test_sparse_rows_match_whole_matrix_without_weight_decay_difference(comps):
    # Same seed, same draws: restoring rows after a whole-matrix AdamW step and optimising only the rows
    # give the same placeholder vector (weight decay is per-element, so the restored rows don't matter).
    pixels = concept_pixels(3, comps.resolution)
    a = Variant(comps, pixels, (), batch_size=2, seed=3)
    b = Variant(comps, pixels, ("sparse_rows",), batch_size=2, seed=3)
    for _ in range(3):
        a.step()
        b.step()
    torch.testing.assert_close(a.learned, b.learned, atol=1e-5, rtol=0)


def test_harness_interleaves_and_measures():
    calls = []
    times = harness.interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        torch.device("cpu"),
        repeats=3,
        warmup=1,
    )
    assert calls == ["a", "b"] * 4 and len(times["a"]) == len(times["b"]) == 3
    with pytest.raises(ValueError, match="repeats"):
        harness.interleaved({"a": lambda: None}, torch.device("cpu"), repeats=0)
    x, y = torch.randn(8, 16), torch.randn(16, 4)
    assert harness.count_flops(lambda: x @ y) == 2 * 8 * 16 * 4
    mem = harness.peak_memory(
        lambda: torch.ones(64 * 2**20).sum(), torch.device("cpu")
    )  # 256 MiB, freed again
    assert mem["delta_gib"] > 0.2 and mem["peak_gib"] >= mem["delta_gib"]
    assert harness.device_name(torch.device("cpu")).startswith("CPU")


def test_sd15_profile_has_sd15_shapes():
    from bench.shapes import build_text_encoder, build_unet, build_vae

    tok = padded_tokenizer(CLIP_VOCAB)
    assert len(tok) == CLIP_VOCAB and tok.eos_token_id == CLIP_VOCAB - 1
    p = PROFILES["sd15"]
    with torch.device("meta"):  # shapes only, no memory: parameter counts of the released SD 1.5 modules
        counts = [
            sum(t.numel() for t in m.parameters())
            for m in (build_unet(p), build_vae(p), build_text_encoder(p, CLIP_VOCAB))
        ]
    assert counts == [859_520_964, 83_653_863, 123_060_480]
    assert p.latent_size == 64


def test_sdxl_shapes_are_sdxl_base():
    from bench.shapes import build_sdxl_components

    with torch.device("meta"):
        c = build_sdxl_components("sdxl", device="meta", precision="bf16")
    counts = [sum(t.numel() for t in m.parameters()) for m in (c.unet, *c.text_encoders)]
    assert counts == [2_567_463_684, 123_060_480, 694_659_840] and c.is_sdxl and c.resolution == 1024


@pytest.mark.e2e
def test_python_m_bench_writes_report(tmp_path, capsys):
    from bench.run import main

    md, js = tmp_path / "BENCHMARKS.md", tmp_path / "latest.json"
    summary = main(
        [
            "--profile",
            "tiny",
            "--sections",
            "sdxl_memory,trainer,techniques,sampling,vectorised",
            "--steps",
            "1",
            "--repeats",
            "2",
            "--trials",
            "2",
            "--samples",
            "2",
            "--bootstrap",
            "5",
            "--out",
            str(md),
            "--json",
            str(js),
        ]
    )
    saved = json.loads(js.read_text())
    for key in (
        "device",
        "trainer_speedup",
        "trial_vectorised_speedup",
        "peak_memory_gib",
        "sampling_time_ratio",
    ):
        assert saved[key] is not None and saved[key] == summary[key], key
    assert (
        saved["trainer_speedup"] > 0
        and saved["trial_vectorised_speedup"] > 0
        and saved["peak_memory_gib"] > 0
    )
    tr = saved["results"]["trainer"]
    assert tr["speedup"] == pytest.approx(tr["reference"]["step_s"] / tr["trainer"]["step_s"])
    assert tr["reference"]["flops_per_step"] > tr["trainer"]["flops_per_step"] > 0  # the VAE encode is gone
    sa = saved["results"]["sampling"]
    assert sa["paper_protocol"]["sampler"] == "ddim" and sa["fast_protocol"]["sampler"] == "dpmsolver++"
    cases = sa["techniques"]["cases"]
    assert set(cases) == {
        "ours",
        "small batches (4)",
        "guidance two passes",
        "text per batch (batch 4)",
        "diffusers pipe() (batch 4)",
    }
    assert cases["ours"]["baseline"] is None and all(c["images_per_s"] > 0 for c in cases.values())
    two = cases["guidance two passes"]
    assert two["technique_speedup"] == pytest.approx(cases["ours"]["images_per_s"] / two["images_per_s"])
    # switching a technique off changes the speed, never the samples (diffusers' own loop included)
    assert all(c["max_pixel_difference"] <= 2 for c in cases.values()), cases
    text = md.read_text()
    assert (
        saved["device"] in text
        and "| trainer / re-implemented example loop |" in text
        and "## Targets" in text
    )
    assert "REAL diffusers example script" in text and "1.14x per step" in text  # the real script's figure
    trainer_target = next(t for t in saved["targets"] if t["target"].startswith("trainer >="))
    assert "RETIRED" in trainer_target["target"] and trainer_target["met"] is None  # the CPU 2x target
    assert saved["targets"][0]["target"].startswith("HEADLINE: sweep throughput")
    assert "### Why the trainer" in text
    assert "trainer / re-implemented example loop" in capsys.readouterr().out
    sx = saved["results"]["sdxl_memory"]
    assert sx["shapes"] == "sdxl-mini" and sx["step_peak_gib"] > 0 and sx["fits_24gb"] is None


def test_phase_memory_reports_each_phase_of_a_real_trial(tmp_path):
    from bench.phase_memory import BEGIN, END, main
    from sweeper import memory

    if memory.measured_by("cpu") is None:
        pytest.skip("no per-phase peak RSS on this system (Linux /proc only)")
    md, js = tmp_path / "BENCHMARKS.md", tmp_path / "latest.json"
    md.write_text(f"# Benchmarks\n\nkept\n\n{BEGIN}\nTHE OLD SECTION\n{END}\n\nalso kept\n")
    js.write_text(json.dumps({"other": 1}))
    result = main(
        ["--profile", "tiny", "--judge", "tiny", "--threads", "1", "--out", str(md), "--json", str(js)]
    )
    peaks = result["peaks"]
    assert peaks["measured_by"] == "process RSS"
    assert peaks["training"] > 0 and peaks["evaluation"] > 0 and result["two_copies_gib"] > 0
    saved = json.loads(js.read_text())
    assert saved["other"] == 1 and saved["phase_memory_evaluation_gib"] == peaks["evaluation"]
    text = md.read_text()
    assert "kept" in text and "also kept" in text and "THE OLD SECTION" not in text and text.count(BEGIN) == 1
    assert "| training (loading, latent cache, steps) |" in text
