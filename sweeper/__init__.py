"""Textual-inversion trials: invert -> evaluate -> record (see ARCHITECTURE.md)."""

from pathlib import Path

from omegaconf import OmegaConf

# The configs (the repository's top-level conf/, shipped in the wheel as sweeper/conf through a symlink) and
# the embedded world (weights, concept images), found beside this file whatever the working directory.
CONF_DIR = Path(__file__).resolve().parent / "conf"
WORLD_DIR = Path(__file__).resolve().parent / "world"

# ${ti.frac:${inversion.steps},0.4}: a schedule given as a fraction of the run (at least 1 step), so a
# configuration written for the paper's 5000 steps keeps its shape in a short run.
OmegaConf.register_new_resolver(
    "ti.frac", lambda steps, frac: max(1, int(int(steps) * float(frac))), replace=True
)

# ${ti.world:weights/pipeline}: a path inside the embedded world that ships with the package (conf/model/toy.yaml,
# conf/data/toy_*.yaml, conf/evaluation/toy.yaml), so `model=toy` runs from any folder.
OmegaConf.register_new_resolver("ti.world", lambda rel: str(WORLD_DIR / str(rel)), replace=True)
