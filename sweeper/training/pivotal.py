"""Pivotal tuning: after inversion, fine-tune the UNet with the learned embedding frozen.

The paper shows it only qualitatively (appendix), where it cost editability. Two modes:
  full: every UNet weight trains (fp32 master weights, autocast compute); saved with
        `save_pretrained` to pivotal/unet/ (load with UNet2DConditionModel.from_pretrained).
  lora: peft LoRA adapters on the attention projections; saved to pivotal/ in diffusers' LoRA
        format (load with pipe.load_lora_weights(run_dir / "pivotal")).
It reuses the inversion trainer's data path (cached latents, prompts, generator, loss) with all k
vectors in every prompt. pivotal/history.csv holds its loss curve. The folder appears whole or not at all.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from sweeper.models import pipeline_class
from sweeper.store import atomic
from sweeper.training.inversion import Trainer

PIVOTAL = "pivotal"
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


def pivotal_tune(
    cfg: DictConfig, trainer: Trainer, run_dir: Path, *, on_log: Callable[[int, dict], None] | None = None
) -> Path:
    """Fine-tune `trainer`'s UNet (its splices already baked); write run_dir/pivotal/; return that folder."""
    piv, inv, comps = cfg.inversion.pivotal, cfg.inversion, trainer.comps
    for p in trainer.parameters():
        p.requires_grad_(False)
    unet = comps.unet
    if piv.mode == "lora":
        from peft import LoraConfig  # heavy, and only LoRA needs it

        rank = int(piv.lora_rank)
        unet.add_adapter(
            LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
        )
        params = [p for p in unet.parameters() if p.requires_grad]
        for p in params:
            p.data = p.data.float()  # fp32 adapter weights beside a bf16/fp16 UNet
    elif piv.mode == "full":
        unet.to(torch.float32).requires_grad_(True)
        params = list(unet.parameters())
    else:
        raise ValueError(f"inversion.pivotal.mode={piv.mode!r}: choose full or lora")
    unet.train()
    optimizer = torch.optim.AdamW(params, lr=float(piv.lr), weight_decay=float(inv.weight_decay))
    scaler = torch.amp.GradScaler(comps.device.type, enabled=comps.dtype == torch.float16)
    steps, log_every, offset = int(piv.steps), int(inv.log_every), int(inv.steps)

    rows, window = [], []
    for step in tqdm(range(steps), desc="pivotal", dynamic_ncols=True, mininterval=1):
        loss, _ = trainer.unet_loss(trainer.k)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        window.append(loss.item())
        done = step + 1
        if done % log_every == 0 or done == steps:
            rows.append({"step": done, "loss": sum(window) / len(window), "lr": float(piv.lr)})
            window = []
            if on_log is not None:  # after the inversion's steps, so a tracker's step stays monotonic
                on_log(offset + done, {"pivotal_loss": rows[-1]["loss"]})
    unet.eval()
    unet.requires_grad_(False)

    target = Path(run_dir) / PIVOTAL
    with atomic.directory(target) as tmp:
        if piv.mode == "lora":
            from diffusers.utils import convert_state_dict_to_diffusers  # heavy, LoRA only (as above)
            from peft.utils import get_peft_model_state_dict

            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
            pipeline_class(comps.source).save_lora_weights(tmp, unet_lora_layers=layers)
        else:
            unet.save_pretrained(tmp / "unet")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["step", "loss", "lr"])
        writer.writeheader()
        writer.writerows(rows)
        (tmp / "history.csv").write_text(buf.getvalue())
    return target
