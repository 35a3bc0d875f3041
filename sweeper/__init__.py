"""Textual-inversion trials: invert -> evaluate -> record (see ARCHITECTURE.md)."""

from omegaconf import OmegaConf

# ${ti.frac:${inversion.steps},0.4}: a schedule given as a fraction of the run (at least 1 step), so a
# configuration written for the paper's 5000 steps keeps its shape in a short run.
OmegaConf.register_new_resolver(
    "ti.frac", lambda steps, frac: max(1, int(int(steps) * float(frac))), replace=True
)
