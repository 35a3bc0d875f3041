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

One training loop (`train`) for every launcher: a lone trial is a `TrainerGroup` of one, a vectorised
group (sweeper/training/grouping.py) is N compatible trials through one batched UNet call per step. The loop
does the per-step bookkeeping (non-finite stop, history rows, callbacks, checkpoints, resume, removal
of half-written checkpoint folders) and, on an interruption, checkpoints at the last completed step.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from sweeper.config.derived import select_images
from sweeper.config.schema import effective_lr, lr_label
from sweeper.data.images import Example, PromptSampler, format_prompt, load_image
from sweeper.interrupt import is_interruption, signals_deferred
from sweeper.models import Components, load_components
from sweeper.store.checkpoints import (
    CHECKPOINTS,
    ResumeError,
    fingerprint,
    latest_checkpoint,
    read_history,
    resume_refusal,
    save_checkpoint,
    write_history,
)
from sweeper.store.embeddings import save_learned_embeds
from sweeper.training import early_stop, lr_schedule, tokens
from sweeper.training.grouping import check_compatible

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

    def detach(self) -> None:
        """Remove the hook, leaving the matrix as it was (a trial that ended without a result)."""
        self.handle.remove()


class LatentCache:
    """VAE latent distributions of every training image and its horizontal flip, encoded once."""

    def __init__(
        self, vae: torch.nn.Module, images: list[torch.Tensor], device: torch.device, chunk: int = 8
    ):
        log.info("caching VAE latents of %d training images and their flips", len(images))
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
        from diffusers import DDPMScheduler  # heavy; loaded with the model, not at import

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
        self.sampler = PromptSampler(
            len(images), cfg.data.property, self.image_tokens, float(inv.per_image_p), float(cfg.data.flip_p)
        )
        self.cache = LatentCache(comps.vae, [load_image(p, comps.resolution) for p in images], comps.device)
        self.noise_scheduler = DDPMScheduler.from_config(comps.scheduler.config)
        # torch.compile pays back its compile time only on long runs, and on CUDA only (checks.py): off by default.
        self.unet = torch.compile(comps.unet) if inv.get("compile") else comps.unet
        self.generator = torch.Generator().manual_seed(int(inv.seed))
        self.lr = effective_lr(inv)  # the base rate; inversion.lr_schedule scales it at each step
        self.lr_now = self.lr  # the rate of the latest optimizer step (history.csv's lr column)
        self.optimizer_steps = 0  # optimizer steps taken (restored on resume): the schedule's position
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

    def prompts(self, examples: list[Example], m: int) -> list[str]:
        text = " ".join(self.concept_tokens[:m])
        return [format_prompt(ex.template, text, ex.image_token) for ex in examples]

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

    def loss(self, draw: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Denoising MSE on the micro-batch `draw`; also the input ids, to see which tokens were used."""
        return TrainerGroup.of([self]).losses([draw])[0]

    def unet_loss(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Denoising MSE on one drawn micro-batch; also the input ids, to see which tokens were used."""
        return self.loss(self.draw(m))

    def reg_loss(self, m: int) -> torch.Tensor:
        """Squared L2 distance of each active concept vector from its init (per-image tokens are free)."""
        return sum(((torch.stack(s.params[:m]) - s.init[:m]) ** 2).sum() for s in self.splices)

    # --------------------------------------------------------------------------------------- step
    def step(self, m: int) -> dict:
        """One optimizer step over grad_accum micro-batches with the first m concept vectors active."""
        return TrainerGroup.of([self]).step([0], [m])[0]

    def count_non_finite(self, loss: float, bad: int, step: int) -> int:
        """Consecutive non-finite losses after this one; raises FloatingPointError past the tolerance
        (none in fp32/bf16; fp16's scaler skips a few overflowing steps on its own)."""
        bad = 0 if np.isfinite(loss) else bad + 1
        if bad > (10 if self.scaler.is_enabled() else 0):
            raise FloatingPointError(
                f"non-finite loss ({loss}) at step {step}: lower inversion.lr "
                f"({lr_label(self.lr, float(self.cfg.inversion.lr))}) or use inversion.precision=bf16/fp32"
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
        self.lr_now = self.lr_at(self.optimizer_steps)
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = self.lr_now
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1
        return {"loss": total, "grad_norms": grad_norms}

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based): the effective lr times the schedule's factor."""
        inv = self.cfg.inversion
        schedule = str(inv.get("lr_schedule", "constant"))
        warmup = int(inv.get("lr_warmup_steps") or 0)
        return self.lr * lr_schedule.factor(schedule, warmup, int(inv.steps), step)

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
        self.optimizer_steps = int(state["step"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        name, keys, *rest = state["numpy_rng"]
        np.random.set_state((name, keys.numpy(), *rest))
        version, internal, gauss = state["python_rng"]
        random.setstate((version, tuple(internal), gauss))


class TrainerGroup:
    """N >= 1 trainers on shared components; a lone trial is a group of one.

    `step(active, ms)` is one optimizer step of each active trainer: every trainer draws its own micro-batch
    from its own generator, the batches go through ONE text-encoder and UNet call, the prediction is split
    back into one loss (+ regulariser) per trainer, and each trainer's optimizer steps on its own vectors.
    Batch elements never interact in these models and the trainers' parameters are disjoint, so a trainer's
    result equals that of running it alone up to floating-point summation order (tests/test_vectorised.py).
    """

    def __init__(self, cfgs: list[DictConfig], comps: Components, images: list[list[Path]]):
        check_compatible(cfgs)
        names = [str(c.inversion.placeholder) for c in cfgs]
        clash = len(set(names)) < len(names)
        # Trials that share a placeholder get "<name>#i" inside the process; their files carry the name.
        self.token_names = [f"{n}#{i}" if clash else n for i, n in enumerate(names)]
        self.placeholders = names
        self.trainers = [
            Trainer(_renamed(c, t) if clash else c, comps, imgs)
            for c, t, imgs in zip(cfgs, self.token_names, images)
        ]
        # A trainer sized its token lookup when it was built; later trainers grew the vocabulary.
        for t in self.trainers:
            for s in t.splices:
                grow = s.embedding.num_embeddings - s.lookup.numel()
                if grow > 0:
                    s.lookup = torch.cat([s.lookup, s.lookup.new_full((grow,), -1)])
        self.comps = comps

    @classmethod
    def of(cls, trainers: list[Trainer]) -> TrainerGroup:
        """A group over trainers that already exist (they share `trainers[0].comps`)."""
        group = cls.__new__(cls)
        group.trainers, group.comps = list(trainers), trainers[0].comps
        group.placeholders = group.token_names = [str(t.cfg.inversion.placeholder) for t in trainers]
        return group

    def losses(self, draws: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Denoising MSE of each drawn micro-batch (one batched forward); also each batch's input ids."""
        comps, unet = self.comps, self.comps.unet
        with torch.autocast(comps.device.type, dtype=comps.dtype, enabled=comps.dtype != torch.float32):
            hidden, added, ids = self.trainers[0].encode_prompts([p for d in draws for p in d["prompts"]])
            pred = (
                self.trainers[0]
                .unet(
                    torch.cat([d["noisy"] for d in draws]).to(unet.dtype),
                    torch.cat([d["t"] for d in draws]),
                    hidden.to(unet.dtype),
                    added_cond_kwargs=added,
                )
                .sample
            )
        out, start = [], 0
        for d in draws:
            part = slice(start, start + len(d["t"]))
            start = part.stop
            out.append((F.mse_loss(pred[part].float(), d["target"].float()), ids[part]))
        return out

    def backward(self, active: list[int], ms: list[int]) -> dict[int, tuple[torch.Tensor, float]]:
        """Gradients of grad_accum micro-batches per active trainer (m = its active vector count): the one
        objective, loss + reg_weight * reg_loss, scaled by 1/grad_accum. Returns each trainer's used token
        ids and mean loss. Changes nothing but the gradients and the trainers' generators."""
        accums = {i: int(self.trainers[i].cfg.inversion.grad_accum) for i in active}
        used: dict[int, list[torch.Tensor]] = {i: [] for i in active}
        totals = dict.fromkeys(active, 0.0)
        for a in range(max(accums.values())):
            now = [(i, m) for i, m in zip(active, ms) if a < accums[i]]
            results = self.losses([self.trainers[i].draw(m) for i, m in now])
            objective = torch.zeros((), device=self.comps.device)
            for (i, m), (loss, ids) in zip(now, results):
                t, reg = self.trainers[i], float(self.trainers[i].cfg.inversion.reg_weight)
                obj = loss + reg * t.reg_loss(m) if reg else loss
                objective = objective + t.scaler.scale(obj / accums[i])
                used[i].append(ids.unique().cpu())
                totals[i] += loss.item() / accums[i]
            objective.backward()
        return {i: (torch.cat(used[i]), totals[i]) for i in active}

    def step(self, active: list[int], ms: list[int]) -> dict[int, dict]:
        """One optimizer step of each trainer in `active`; returns its {"loss", "grad_norms"}."""
        grads = self.backward(active, ms)
        return {i: self.trainers[i].apply_step(*grads[i]) for i in active}


def _renamed(cfg: DictConfig, placeholder: str) -> DictConfig:
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.inversion.placeholder = placeholder
    return cfg


@dataclass
class InversionResult:
    trainer: Trainer
    placeholder: str  # the configured name, as in the files
    token: str  # the name of its tokens inside this process (differs in a group whose names clash)
    vectors: list[torch.Tensor]  # one [k, dim] per text encoder
    per_image: dict[str, list[torch.Tensor]] | None
    paths: dict[str, Path]  # embedding files written
    training_images: list[Path]
    effective_lr: float
    resumed_from: int | None
    stopped_at: int | None = None  # the step inversion.early_stop ended training at (None: ran to the end)


@dataclass
class _Run:
    """One trial's place in the training loop."""

    cfg: DictConfig
    run_dir: Path
    trainer: Trainer
    fingerprint: str
    steps: int
    start: int = 0  # the step it resumed from
    done: int = 0  # steps completed and recorded (history row, loss window): a consistent checkpoint point
    window: list[float] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    bad: int = 0  # consecutive non-finite losses
    saved: int = -1  # step of its newest checkpoint
    error: Exception | None = None
    stopper: early_stop.EarlyStop | None = None  # inversion.early_stop (training/early_stop.py)


# ------------------------------------------------------------------------------------------- train
def train(
    cfgs: list[DictConfig],
    run_dirs: list[Path],
    *,
    components: Components | None = None,
    on_logs: list[Callable[[int, dict], None] | None] | None = None,
    reports: list[Callable[[int, Trainer], None] | None] | None = None,
    seconds: list[float] | None = None,
) -> list[InversionResult | Exception]:
    """Train (or resume) N >= 1 compatible trials in their run folders; write each one's embedding files.

    The one training loop. Per trial: resume from its last checkpoint, a history row every log_every steps
    (then `on_logs[i]` and `reports[i]`, the W&B curves and the pruning hook), a checkpoint every
    checkpoint_every steps and at its last step, the non-finite-loss stop. Entry i of the result is trial
    i's InversionResult, or the exception that ended it alone (non-finite loss, pruned, a failing callback,
    checkpoints of another config); such a trial writes no embedding file.

    An interruption (a signal inside `interrupt.interruptible()`, or Ctrl-C) checkpoints every unfinished
    trial at its last completed step, whatever checkpoint_every says, then propagates; a rerun resumes there
    and ends as an uninterrupted run would. `seconds[i]` gets trial i's share of the time: the setup split
    evenly, each step split among the trials it trained.
    """
    n = len(cfgs)
    if len(run_dirs) != n:
        raise ValueError(f"{n} configs but {len(run_dirs)} run folders")
    seconds = seconds if seconds is not None else [0.0] * n
    on_logs, reports = on_logs or [None] * n, reports or [None] * n
    t0 = time.monotonic()
    check_compatible(cfgs)
    images = [select_images(c.data) for c in cfgs]
    first = cfgs[0].inversion
    torch.manual_seed(int(first.seed))
    np.random.seed(int(first.seed))
    random.seed(int(first.seed))
    comps = components or load_components(
        cfgs[0].model.pretrained,
        first.precision,
        cfgs[0].get("device", "auto"),
        config=cfgs[0].model.get("config"),
    )
    group = TrainerGroup(cfgs, comps, images)
    runs = [
        _Run(cfg, Path(d), t, fingerprint(cfg), int(cfg.inversion.steps))
        for cfg, d, t in zip(cfgs, run_dirs, group.trainers)
    ]
    for run in runs:
        crit = early_stop.criterion(run.cfg)
        run.stopper = early_stop.EarlyStop(crit, run.trainer) if crit else None
    for run in runs:
        _resume(run)
        if run.error is None:
            log.info(
                "inversion %s: %d images, k=%d, %s (scale_lr=%s, batch %d x accum %d)",
                run.run_dir,
                len(run.trainer.images),
                run.trainer.k,
                lr_label(run.trainer.lr, float(run.cfg.inversion.lr)),
                run.cfg.inversion.scale_lr,
                run.cfg.inversion.batch_size,
                run.cfg.inversion.grad_accum,
            )
    _share(seconds, range(n), time.monotonic() - t0)

    live = [r for r in runs if r.error is None]
    first_step = min((r.start for r in live), default=0)
    last_step = max((r.steps for r in live), default=0)
    bar = tqdm(
        range(first_step, last_step),
        initial=first_step,
        total=last_step,
        desc="inversion" if n == 1 else f"inversion x{n}",
        dynamic_ncols=True,
        mininterval=1,
    )
    rollback = None  # generator states at the start of the step being computed
    try:
        for step in bar:
            t_step = time.monotonic()
            active = [i for i, r in enumerate(runs) if r.error is None and r.start <= step < r.steps]
            if not active:
                continue
            ms = [
                tokens.active_count(step, runs[i].trainer.k, runs[i].cfg.inversion.progressive_every)
                for i in active
            ]
            rollback = {i: runs[i].trainer.generator.get_state() for i in active}
            grads = group.backward(active, ms)  # an interruption here rolls the step back
            with signals_deferred():  # the step and its record land together, or not at all
                rollback = None
                logged = [i for i in active if _commit(runs[i], step + 1, *grads[i])]
            for i, m in zip(active, ms):
                if i in logged:
                    _callbacks(runs[i], m, on_logs[i], reports[i])
                    if n == 1 and runs[i].rows:
                        bar.set_postfix(loss=f"{runs[i].rows[-1]['loss']:.4f}", m=m)
                run = runs[i]
                every = int(run.cfg.inversion.checkpoint_every or 0)
                if run.error is None and every and (run.done % every == 0 or run.done == run.steps):
                    _checkpoint(run)
            _share(seconds, active, time.monotonic() - t_step)
    except BaseException as err:
        if is_interruption(err):
            with signals_deferred():  # a second signal must not cut the checkpoint short
                for i, state in (rollback or {}).items():
                    runs[i].trainer.generator.set_state(state)
                    runs[i].trainer.optimizer.zero_grad(set_to_none=True)
                for run in runs:
                    if run.error is None and run.done > max(run.start, run.saved):
                        _checkpoint(run)
                        log.warning("%s: interrupted; checkpoint at step %d", run.run_dir, run.done)
        raise
    finally:
        bar.close()

    t_save = time.monotonic()
    results: list[InversionResult | Exception] = []
    for run, name, token in zip(runs, group.placeholders, group.token_names):
        if run.error is not None:
            for splice in run.trainer.splices:
                splice.detach()  # the shared encoder goes on to sample the other trials
        results.append(run.error if run.error is not None else _save(run, name, token, n))
    _share(seconds, range(n), time.monotonic() - t_save)
    return results


def invert(
    cfg: DictConfig,
    run_dir: Path,
    *,
    on_log: Callable[[int, dict], None] | None = None,
    report: Callable[[int, Trainer], None] | None = None,
    components: Components | None = None,
) -> InversionResult:
    """`train` for one trial: its InversionResult, or its error raised."""
    (result,) = train([cfg], [Path(run_dir)], components=components, on_logs=[on_log], reports=[report])
    if isinstance(result, Exception):
        raise result
    return result


def _share(seconds: list[float], members, elapsed: float) -> None:
    members = list(members)
    for i in members:
        seconds[i] += elapsed / len(members)


def _resume(run: _Run) -> None:
    folder = run.run_dir / CHECKPOINTS
    for junk in folder.glob(".step_*") if folder.is_dir() else []:
        shutil.rmtree(junk, ignore_errors=True)  # a folder a killed run was still building
    ckpt = latest_checkpoint(run.run_dir, run.steps)
    if ckpt is not None:
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        if state["fingerprint"] != run.fingerprint:
            run.error = ResumeError(resume_refusal(ckpt, state["fingerprint"], run.fingerprint, run.cfg))
            return
        run.trainer.load_state_dict(state)
        run.start = run.done = run.saved = int(state["step"])
        run.window = list(state["loss_window"])
        if run.stopper is not None:
            run.stopper.load_state_dict(state.get("early_stop"), run.start)
            run.steps = run.stopper.stopped_at or run.steps  # a run that had stopped stays stopped
        log.info("resuming from %s", ckpt)
    run.rows = read_history(run.run_dir, run.start)


def _commit(run: _Run, done: int, used: torch.Tensor, loss: float) -> bool:
    """Apply one computed step to a trial and record it; True when it wrote a history row."""
    out = run.trainer.apply_step(used, loss)
    try:
        run.bad = run.trainer.count_non_finite(out["loss"], run.bad, done)
    except FloatingPointError as err:
        run.error = err
        log.warning("%s: stopped: %s", run.run_dir, err)
        return False
    run.window.append(out["loss"])
    run.done = done
    if run.stopper is not None and run.stopper.after_step(done):
        run.steps = done  # early stop: this step is the trial's last (history row, checkpoint, files)
        log.info("%s: early stop at step %d (objective %.5g)", run.run_dir, done, run.stopper.values[-1][1])
    if done % int(run.cfg.inversion.log_every) and done != run.steps:
        return False
    t = run.trainer
    row = {"step": done, "loss": float(np.mean(run.window)), "lr": t.lr_now, **t.distances()}
    run.rows.append(row | (run.stopper.row() if run.stopper is not None else {}))
    write_history(run.run_dir, run.rows)
    run.window = []
    return True


def _callbacks(run: _Run, m: int, on_log: Callable | None, report: Callable | None) -> None:
    """The trial's W&B curve and pruning hook after a history row; an exception ends this trial only."""
    try:
        if on_log is not None:
            on_log(run.done, dict(run.rows[-1], active_vectors=m))
        if report is not None:  # Optuna pruning: the caller decides what to measure (trial.py)
            report(run.done, run.trainer)
    except Exception as err:  # noqa: BLE001 - pruned (optuna.TrialPruned) or failed: this trial only
        if type(err).__name__ == "TrialPruned" and run.done > max(run.start, run.saved):
            _checkpoint(run)  # where a promotion or a confirmation run of this configuration resumes
        run.error = err
        # a pruned trial's one line is the sweeper's ("trial N pruned: ..."), for every launcher
        level = logging.DEBUG if type(err).__name__ == "TrialPruned" else logging.INFO
        log.log(level, "%s: stopped at step %d: %s: %s", run.run_dir, run.done, type(err).__name__, err)


def _checkpoint(run: _Run) -> None:
    extra = {"early_stop": run.stopper.state_dict()} if run.stopper is not None else None
    save_checkpoint(run.run_dir, run.trainer, run.done, run.fingerprint, run.window, extra)
    run.saved = run.done


def _save(run: _Run, name: str, token: str, group_size: int) -> InversionResult:
    """Bake the learned rows into the embedding matrix and write the trial's embedding files."""
    t = run.trainer
    for s in t.splices:
        s.bake()
    vectors = [s.vectors()[: t.k].cpu() for s in t.splices]
    per_image = None
    if t.image_tokens:
        per_image = {
            tok: [s.vectors()[t.k + j : t.k + j + 1].cpu() for s in t.splices]
            for j, tok in enumerate(tokens.image_tokens(name, len(t.images)))
        }
    meta = {
        "model": str(run.cfg.model.pretrained),
        "init_word": str(run.cfg.inversion.init_word),
        "steps": str(run.steps),
        "tokens": " ".join(tokens.placeholder_tokens(name, t.k)),
        "group_size": str(group_size),
    }
    stopped = run.stopper.stopped_at if run.stopper is not None else None
    if stopped is not None:
        meta["stopped_at_step"] = str(stopped)
    paths = save_learned_embeds(run.run_dir, name, vectors, per_image, meta)
    resumed = run.start or None
    return InversionResult(t, name, token, vectors, per_image, paths, t.images, t.lr, resumed, stopped)
