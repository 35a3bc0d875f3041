"""A manifest of concepts (`data.manifest`): one configuration evaluated over several concepts as ONE trial.

    # concepts.yaml: folders relative to this file (or absolute), each with its class word
    concepts:
      - images: dog6
        class_word: dog            # DreamBench's "{class}" (sweeper.data.dreambench.SUBJECT_CLASSES)
      - images: bear_plushie
        class_word: stuffed animal
        init_word: bear            # optional: the concept's init word (a single token); default the trial's
        name: plushie              # optional: its run folder's name; default the folder's name

sweeper.trial.run_trials (every launcher's) runs each concept in its own run folder `<run_dir>/<name>/`
(compatible concepts, of this and of the launcher's other trials, train as one vectorised group) and returns the
means over concepts; `<run_dir>/concepts.json` holds each concept's
objectives, the means and their 95% t-intervals over concepts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from sweeper.config.schema import ConfigError


@dataclass(frozen=True)
class Concept:
    name: str
    images: Path
    class_word: str | None = None
    init_word: str | None = None


def read_manifest(path: str | Path) -> list[Concept]:
    """The manifest's concepts, checked (folders exist, names unique, known keys) before any model work."""
    path = Path(path).expanduser()
    where = f"data.manifest={path}"
    if not path.is_file():
        raise ConfigError(
            f"{where}: no such file; give a YAML file with a 'concepts:' list (sweeper/data/manifest.py)"
        )
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({err.__class__.__name__}); fix the file") from None
    entries = doc.get("concepts") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(
            f"{where}: needs a non-empty 'concepts:' list of {{images: folder, class_word: word}}"
        )
    concepts = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"images": entry}
        if not isinstance(entry, dict) or "images" not in entry:
            raise ConfigError(f"{where}: concepts[{i}] needs 'images: <folder>'")
        unknown = set(entry) - {"images", "class_word", "init_word", "name"}
        if unknown:
            raise ConfigError(
                f"{where}: concepts[{i}] has unknown keys {sorted(unknown)}; known: images, class_word, init_word, name"
            )
        folder = Path(str(entry["images"])).expanduser()
        folder = folder if folder.is_absolute() else (path.parent / folder)
        if not folder.is_dir():
            raise ConfigError(f"{where}: concepts[{i}].images={entry['images']}: no such folder ({folder})")
        name = str(entry.get("name") or folder.name)
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise ConfigError(
                f"{where}: concepts[{i}]: name {name!r} must be letters, digits, '.', '_' or '-'"
            )
        concepts.append(
            Concept(
                name,
                folder.resolve(),
                None if entry.get("class_word") is None else str(entry["class_word"]),
                None if entry.get("init_word") is None else str(entry["init_word"]),
            )
        )
    names = [c.name for c in concepts]
    if len(set(names)) < len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"{where}: concept names {dup} repeat: give each a distinct 'name:'")
    return concepts
