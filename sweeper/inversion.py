"""The textual-inversion trainer: learn the placeholder vectors of one concept, and nothing else.

Only the placeholder rows learn. Each learned vector is its own small fp32 Parameter, spliced into
the output of the frozen token-embedding layer by a forward hook; the embedding matrices themselves
never see an optimizer, so AdamW's weight decay cannot drift any other row (the bug of diffusers
issues #507/#1009/#1176, which the diffusers example patches by restoring rows after every step).
A vector that does not appear in a step's prompts (a later progressive word, another image's
per-image token) gets no gradient at all, so AdamW skips it: no decay, no momentum.

VAE latents of every training image and its flip are encoded once; each step samples from the
cached latent distribution with the trainer's generator. Everything random in a step (prompt,
image, flip, latent sample, noise, timestep) comes from that one generator, whose state goes into
every checkpoint, so a resumed run ends with the same embeddings as an uninterrupted one.
"""

from __future__ import annotations

import logging
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm.auto import tqdm

from sweeper import data, tokens
from sweeper.checkpoints import (
    CHECKPOINTS,
    ResumeError,
    fingerprint,
    latest_checkpoint,
    read_history,
    save_checkpoint,
    write_history,
)
from sweeper.checks import select_images
from sweeper.config import effective_lr
from sweeper.models import Components, load_components

log = logging.getLogger(__name__)


class Splice:
    """Learned rows of one text encoder, spliced into its token-embedding output."""

    def __init__(self, encoder: torch.nn.Module, rows: tokens.Placeholders, device: torch.device):
        self.rows = rows
        self.embedding = encoder.get_input_embeddings()
        self.init = rows.init.to(device)
        self.params = [torch.nn.Parameter(v.clone().to(device)) for v in rows.init]
        self.lookup = torch.full((self.embedding.num_embeddings,), -1, dtype=torch.long, device=device)
        self.lookup[rows.ids] = torch.arange(len(rows.ids), device=device)
        self.handle = self.embedding.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        idx = self.lookup[inputs[0]]
        mask = idx >= 0
        table = torch.stack(self.params).to(output.dtype)
        return torch.where(mask.unsqueeze(-1), table[idx.clamp(min=0)], output)

    def vectors(self) -> torch.Tensor:
        return torch.stack([p.detach() for p in self.params])

    def bake(self) -> None:
        """Write the learned rows into the embedding matrix and remove the hook (for pivotal tuning, sampling)."""
        with torch.no_grad():
            self.embedding.weight[self.rows.ids] = self.vectors().to(self.embedding.weight.dtype)
        self.handle.remove()


class LatentCache:
    """VAE latent distributions of every training image and its horizontal flip, encoded once."""

    def __init__(
        self, vae: torch.nn.Module, images: list[torch.Tensor], device: torch.device, chunk: int = 8
    ):
        pixels = torch.stack(
            [x for img in images for x in (img, torch.flip(img, dims=[-1]))]
        )  # 2i: plain, 2i+1: flip
        means, stds = [], []
        with torch.no_grad():
            for batch in pixels.split(chunk):
                dist = vae.encode(batch.to(device, vae.dtype)).latent_dist
                means.append(dist.mean.float())
                stds.append(dist.std.float())
        self.mean, self.std = torch.cat(means), torch.cat(stds)
        self.scale = vae.config.scaling_factor
        self.shift = getattr(vae.config, "shift_factor", None) or 0.0

    def sample(self, index: list[int], generator: torch.Generator) -> torch.Tensor:
        mean, std = self.mean[index], self.std[index]
        eps = torch.randn(mean.shape, generator=generator).to(mean.device)
        return (mean + std * eps - self.shift) * self.scale


class Trainer:
    """One concept's inversion on loaded components: `step()` is one optimizer step."""

    def __init__(self, cfg: DictConfig, comps: Components, images: list[Path]):
        from diffusers import DDPMScheduler

        inv = cfg.inversion
        self.cfg, self.comps, self.images = cfg, comps, images
        self.k = int(inv.num_vectors)
        self.concept_tokens = tokens.placeholder_tokens(inv.placeholder, self.k)
        self.image_tokens = (
            tokens.image_tokens(inv.placeholder, len(images)) if inv.per_image_tokens else None
        )
        all_tokens = self.concept_tokens + (self.image_tokens or [])
        rows = tokens.add_placeholder_tokens(
            comps.tokenizers,
            comps.text_encoders,
            all_tokens,
            self.k,
            inv.init_word,
            bool(inv.init_word_average),
        )
        self.splices = [Splice(enc, r, comps.device) for enc, r in zip(comps.text_encoders, rows)]
        self.sampler = data.PromptSampler(
            len(images), cfg.data.property, self.image_tokens, float(inv.per_image_p), float(cfg.data.flip_p)
        )
        self.cache = LatentCache(
            comps.vae, [data.load_image(p, comps.resolution) for p in images], comps.device
        )
        self.noise_scheduler = DDPMScheduler.from_config(comps.scheduler.config)
        # torch.compile pays back its compile time only on long runs, and on CUDA only (checks.py): off by default.
        self.unet = torch.compile(comps.unet) if inv.get("compile") else comps.unet
        self.generator = torch.Generator().manual_seed(int(inv.seed))
        self.lr = effective_lr(inv)
        self.optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.lr, weight_decay=float(inv.weight_decay)
        )
        fp16 = comps.dtype == torch.float16
        self.scaler = torch.amp.GradScaler(comps.device.type, enabled=fp16)
        if comps.is_sdxl:
            r = comps.resolution  # (original h, w, crop top, left, target h, w)
            self.time_ids = torch.tensor([[r, r, 0, 0, r, r]], dtype=torch.float32, device=comps.device)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for s in self.splices for p in s.params]

    # ------------------------------------------------------------------------------------ forward
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, dict | None, torch.Tensor]:
        """Text conditioning as the diffusers pipelines build it; also returns the first encoder's ids."""
        states, pooled, first_ids = [], None, None
        for tokenizer, encoder in zip(self.comps.tokenizers, self.comps.text_encoders):
            ids = tokenizer(
                prompts,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.comps.device)
            first_ids = ids if first_ids is None else first_ids
            if self.comps.is_sdxl:
                out = encoder(ids, output_hidden_states=True)
                states.append(out.hidden_states[-2])
                pooled = out[0]  # the last encoder's projected pooled output
            else:
                states.append(encoder(ids)[0])
        added = None
        if self.comps.is_sdxl:
            added = {"text_embeds": pooled, "time_ids": self.time_ids.expand(len(prompts), -1)}
        return torch.cat(states, dim=-1), added, first_ids

    def prompts(self, examples: list[data.Example], m: int) -> list[str]:
        text = " ".join(self.concept_tokens[:m])
        return [data.format_prompt(ex.template, text, ex.image_token) for ex in examples]

    def draw(self, m: int) -> dict:
        """Every random draw of one micro-batch, from the trainer's generator in a fixed order (resume and the
        vectorised trainer rely on that order): examples, latents, noise, timesteps; plus the noisy input."""
        comps, gen = self.comps, self.generator
        examples = self.sampler.sample(int(self.cfg.inversion.batch_size), gen)
        latents = self.cache.sample([2 * ex.image_index + int(ex.flip) for ex in examples], gen)
        noise = torch.randn(latents.shape, generator=gen).to(comps.device)
        steps = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (len(examples),), generator=gen).to(comps.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        kind = self.noise_scheduler.config.prediction_type
        target = {"epsilon": noise, "sample": latents}.get(kind)
        if target is None:
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        return {"noisy": noisy, "t": t, "target": target, "prompts": self.prompts(examples, m)}

    def unet_loss(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Denoising MSE on one drawn micro-batch; also the input ids, to see which tokens were used."""
        comps, d = self.comps, self.draw(m)
        with torch.autocast(comps.device.type, dtype=comps.dtype, enabled=comps.dtype != torch.float32):
            hidden, added, ids = self.encode_prompts(d["prompts"])
            pred = self.unet(
                d["noisy"].to(comps.unet.dtype), d["t"], hidden.to(comps.unet.dtype), added_cond_kwargs=added
            ).sample
        return F.mse_loss(pred.float(), d["target"].float()), ids

    def reg_loss(self, m: int) -> torch.Tensor:
        """Squared L2 distance of each active concept vector from its init (per-image tokens are free)."""
        return sum(((torch.stack(s.params[:m]) - s.init[:m]) ** 2).sum() for s in self.splices)

    # --------------------------------------------------------------------------------------- step
    def step(self, m: int) -> dict:
        """One optimizer step over grad_accum micro-batches with the first m concept vectors active."""
        inv = self.cfg.inversion
        accum, used, total = int(inv.grad_accum), torch.zeros(0, dtype=torch.long), 0.0
        for _ in range(accum):
            loss, ids = self.unet_loss(m)
            objective = loss + float(inv.reg_weight) * self.reg_loss(m) if inv.reg_weight else loss
            self.scaler.scale(objective / accum).backward()
            used = torch.cat([used, ids.unique().cpu()])
            total += loss.item() / accum
        return self.apply_step(used, total)

    def count_non_finite(self, loss: float, bad: int, step: int) -> int:
        """Consecutive non-finite losses after this one; raises FloatingPointError past the tolerance
        (none in fp32/bf16; fp16's scaler skips a few overflowing steps on its own)."""
        bad = 0 if np.isfinite(loss) else bad + 1
        if bad > (10 if self.scaler.is_enabled() else 0):
            raise FloatingPointError(
                f"non-finite loss ({loss}) at step {step}: lower inversion.lr "
                f"(effective {self.lr:.3g}) or use inversion.precision=bf16/fp32"
            )
        return bad

    def apply_step(self, used: torch.Tensor, total: float) -> dict:
        """After backward: drop the grads of vectors no prompt used, record grad norms, step, zero."""
        present = set(used.tolist())
        for s in self.splices:
            for p, token_id in zip(s.params, s.rows.ids):
                if token_id not in present:
                    p.grad = None  # AdamW skips it: no decay, no momentum for an unused vector
        grad_norms = []
        for i in range(self.k):
            grads = [s.params[i].grad for s in self.splices]
            grad_norms.append(
                0.0 if grads[0] is None else float(sum(g.float().norm() ** 2 for g in grads) ** 0.5)
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": total, "grad_norms": grad_norms}

    def distances(self) -> dict[str, float]:
        """Per concept vector: L2 and cosine distance from its init (SDXL: both encoders' parts joined)."""
        out, l2s, coss = {}, [], []
        for i in range(self.k):
            v = torch.cat([s.params[i].detach().float() for s in self.splices])
            v0 = torch.cat([s.init[i].float() for s in self.splices])
            l2s.append(float((v - v0).norm()))
            coss.append(float(1 - F.cosine_similarity(v, v0, dim=0)))
        for i in range(self.k):
            out[f"dist_l2_{i}"] = l2s[i]
        for i in range(self.k):
            out[f"dist_cos_{i}"] = coss[i]
        out["dist_l2_mean"], out["dist_cos_mean"] = float(np.mean(l2s)), float(np.mean(coss))
        return out

    # ------------------------------------------------------------------------------------- state
    def state_dict(self, step: int) -> dict:
        np_state = np.random.get_state()
        return {
            "step": step,
            "vectors": [s.vectors().cpu() for s in self.splices],
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy_rng": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
            "python_rng": random.getstate(),
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for s, vecs in zip(self.splices, state["vectors"]):
                for p, v in zip(s.params, vecs):
                    p.copy_(v.to(p.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        name, keys, *rest = state["numpy_rng"]
        np.random.set_state((name, keys.numpy(), *rest))
        version, internal, gauss = state["python_rng"]
        random.setstate((version, tuple(internal), gauss))


@dataclass
class InversionResult:
    trainer: Trainer
    placeholder: str
    vectors: list[torch.Tensor]  # one [k, dim] per text encoder
    per_image: dict[str, list[torch.Tensor]] | None
    paths: dict[str, Path]  # embedding files written
    training_images: list[Path]
    effective_lr: float
    resumed_from: int | None


# ------------------------------------------------------------------------------------------ invert
def invert(
    cfg: DictConfig,
    run_dir: Path,
    *,
    on_log: Callable[[int, dict], None] | None = None,
    report: Callable[[int, Trainer], None] | None = None,
    components: Components | None = None,
) -> InversionResult:
    """Train (or resume) the concept's vectors in `run_dir`; write the embedding files; return the result."""
    from sweeper.embeddings_io import save_learned_embeds

    inv, run_dir = cfg.inversion, Path(run_dir)
    steps, log_every, ckpt_every = int(inv.steps), int(inv.log_every), int(inv.checkpoint_every or 0)
    images = select_images(cfg.data)  # the images config.yaml's derived: block lists
    torch.manual_seed(int(inv.seed))
    np.random.seed(int(inv.seed))
    random.seed(int(inv.seed))
    comps = components or load_components(
        cfg.model.pretrained, inv.precision, cfg.get("device", "auto"), config=cfg.model.get("config")
    )
    trainer = Trainer(cfg, comps, images)
    log.info(
        "inversion: %d images, k=%d, effective lr %.3g (base %.3g, scale_lr=%s, batch %d x accum %d)",
        len(images),
        trainer.k,
        trainer.lr,
        inv.lr,
        inv.scale_lr,
        inv.batch_size,
        inv.grad_accum,
    )

    fp, start, window, resumed = fingerprint(cfg), 0, [], None
    for junk in (run_dir / CHECKPOINTS).glob(".step_*") if (run_dir / CHECKPOINTS).is_dir() else []:
        shutil.rmtree(junk, ignore_errors=True)  # a folder a killed run was still building
    ckpt = latest_checkpoint(run_dir, steps)
    if ckpt is not None:
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        if state["fingerprint"] != fp:
            raise ResumeError(
                f"{ckpt}: checkpoint was made with a different model/data/inversion config; "
                f"use a new hydra.run.dir or delete {run_dir / CHECKPOINTS}"
            )
        trainer.load_state_dict(state)
        start, window, resumed = int(state["step"]), list(state["loss_window"]), int(state["step"])
        log.info("resuming from %s", ckpt)
    rows = read_history(run_dir, start)

    bad = 0  # consecutive non-finite losses
    bar = tqdm(
        range(start, steps), initial=start, total=steps, desc="inversion", dynamic_ncols=True, mininterval=1
    )
    for step in bar:
        m = tokens.active_count(step, trainer.k, inv.progressive_every)
        out = trainer.step(m)
        done = step + 1
        bad = trainer.count_non_finite(out["loss"], bad, done)
        window.append(out["loss"])
        if done % log_every == 0 or done == steps:
            row = {"step": done, "loss": float(np.mean(window)), "lr": trainer.lr, **trainer.distances()}
            rows.append(row)
            write_history(run_dir, rows)
            window = []
            bar.set_postfix(loss=f"{row['loss']:.4f}", m=m)
            if on_log is not None:
                on_log(done, dict(row, active_vectors=m))
            if report is not None:  # Optuna pruning: the caller decides what to measure (trial.py)
                report(done, trainer)
        if ckpt_every and (done % ckpt_every == 0 or done == steps):
            save_checkpoint(run_dir, trainer, done, fp, window)
    bar.close()

    for s in trainer.splices:
        s.bake()
    vectors = [s.vectors()[: trainer.k].cpu() for s in trainer.splices]
    per_image = None
    if trainer.image_tokens:
        per_image = {
            t: [s.vectors()[trainer.k + j : trainer.k + j + 1].cpu() for s in trainer.splices]
            for j, t in enumerate(trainer.image_tokens)
        }
    meta = {
        "model": str(cfg.model.pretrained),
        "init_word": str(inv.init_word),
        "steps": str(steps),
        "tokens": " ".join(trainer.concept_tokens),
    }
    paths = save_learned_embeds(run_dir, inv.placeholder, vectors, per_image, meta)
    return InversionResult(
        trainer, str(inv.placeholder), vectors, per_image, paths, images, trainer.lr, resumed
    )
