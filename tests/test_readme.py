"""The commands a new user copies from README.md work as written, so the README and the code cannot drift.

Every line of every ```bash block is split the way a POSIX shell splits it (shlex: quotes removed), then:
- `python -m sweeper` / `ti-sweeper`: Hydra's override parser reads every override (this is where a
  `'<my-cat>'` that the shell unquoted fails), and the config is composed with them (hydra.* keys included;
  a sweep `a,b,c` / `range(..)` / `choice(..)` is composed at its first value). Paths the README leaves to
  the reader (`/path/to/my-cat`, `...`) are filled with a real concept folder.
- the one trial that runs on the embedded world (`model=toy`) runs for real, with small budgets added, from an
  empty working directory;
- `python -m sweeper.evaluation` / `ti-evaluate` and `python -m analysis` / `ti-analyse`: their argument parsers
  accept the line (they then stop at the missing input, with their one-line error);
- `make ...`: `make -n` knows the target and its variables.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMOKE_EVALUATION, SMOKE_INVERSION, compose_config
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from sweeper import CONF_DIR, WORLD_DIR

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VARIABLES = {"STORE": "postgresql://ti:secret@dbhost/optuna"}
CONCEPT = WORLD_DIR / "concepts" / "arrow"
PYTHON_M = {
    "sweeper": "sweeper",
    "sweeper.evaluation": "evaluate",
    "analysis": "analysis",
    "ti-sweeper": "sweeper",
    "ti-evaluate": "evaluate",
    "ti-analyse": "analysis",
}


def readme_commands() -> list[tuple[str, list[str]]]:
    """(kind, argv after the program) of every command line in the README's bash blocks."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        heredoc_end = None  # inside `cat > F <<'END'`: the file's lines until END (a batch script)
        for line in block.replace("\\\n", " ").splitlines():
            if heredoc_end is not None:
                heredoc_end = None if line.strip() == heredoc_end else heredoc_end
                if heredoc_end is None or not line.startswith("srun "):
                    continue  # the script's #SBATCH lines; its `srun <command>` is checked as <command>
                line = line.removeprefix("srun ")
            elif heredoc := re.search(r"<<'(\w+)'$", line):
                heredoc_end = heredoc.group(1)
                continue
            words = shlex.split(line, comments=True)
            if not words:
                continue
            if re.fullmatch(r"[A-Z_]+=\S+", words[0]) and len(words) == 1:
                continue  # a shell variable the next lines use (VARIABLES)
            words = [re.sub(r"\$([A-Z_]+)", lambda m: VARIABLES[m.group(1)], w) for w in words]
            words = [w for w in words if w not in ("...", "&&")]
            if words[0] == "make":
                commands.append(("make", words[1:]))
            elif words[0].endswith("python") and words[1] == "-m":
                commands.append((PYTHON_M[words[2]], words[3:]))
            elif words[0] in PYTHON_M:
                commands.append((PYTHON_M[words[0]], words[1:]))
            elif words[0] in ("pip", "cd"):
                continue  # installing the wheel: tests/test_wheel.py does it in a fresh virtualenv
            elif words[0] in ("sinfo", "sbatch"):
                continue  # the reader's own SLURM cluster (tests/test_slurm.py runs a private one)
            else:
                raise AssertionError(f"README command this test does not know how to check: {line!r}")
    return commands


COMMANDS = readme_commands()


def fill_in(override: str) -> str:
    """The README's placeholders for the reader's own files, replaced by real ones."""
    key, _, value = override.partition("=")
    if key == "data.images" and (value in ("", "...") or value.startswith(("/path/", "data/"))):
        return f"data.images={CONCEPT}"
    return override


def first_value(override: str) -> str:
    """A sweep override (`a=1,2`, `range(1,6)`, `choice(..)`) at its first value; others unchanged."""
    parsed = OverridesParser.create().parse_overrides([override])[0]
    if not parsed.is_sweep_override():
        return override
    return f"{parsed.get_key_element()}={next(iter(parsed.sweep_string_iterator()))}"


def test_readme_has_the_commands_a_new_user_needs():
    kinds = {(k, a[0] if a else "") for k, a in COMMANDS}
    for target in ("demo", "test", "test-system", "test-slow", "lock"):
        assert ("make", target) in kinds, f"README does not show `make {target}`"
    assert any(k == "sweeper" and "model=toy" in a for k, a in COMMANDS)


@pytest.mark.parametrize(
    "argv", [a for k, a in COMMANDS if k == "sweeper"], ids=lambda a: " ".join(a)[:60] or "(none)"
)
def test_sweeper_command_parses_and_composes(argv):
    overrides = [fill_in(o) for o in argv if o not in ("-m", "--multirun")]
    OverridesParser.create().parse_overrides(overrides)  # the shell-split words, as Hydra reads them
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=[first_value(o) for o in overrides], return_hydra_config=True)
    for o in overrides:  # every plain key=value the README sets lands in the config
        key, _, value = o.partition("=")
        parsed = OverridesParser.create().parse_overrides([o])[0]
        group = "/" in key or (CONF_DIR / key).is_dir()  # model=toy, experiment=...: a config group
        if not group and not parsed.is_sweep_override() and not key.startswith(("+", "~")):
            expected = str(parsed.value())
            if "${" in expected:  # an interpolation (e.g. ${ti.world:...}): compare what it resolves to
                from omegaconf import OmegaConf

                expected = str(OmegaConf.create({"value": expected}).value)
            assert expected == str(cfg_select(cfg, key)), o


def cfg_select(cfg, key: str):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, throw_on_missing=False)


def test_placeholder_with_angle_brackets_reaches_the_config_as_written():
    """`"inversion.placeholder='<my-cat>'"` (README): the shell keeps the inner quotes, Hydra reads <my-cat>."""
    (argv,) = [a for k, a in COMMANDS if k == "sweeper" and any("placeholder" in w for w in a)]
    cfg = compose_config(*[fill_in(o) for o in argv if not o.startswith("hydra.")])
    assert cfg.inversion.placeholder == "<my-cat>"


@pytest.mark.parametrize("argv", [a for k, a in COMMANDS if k == "make"], ids=lambda a: " ".join(a))
def test_make_command_is_a_target_the_makefile_has(argv):
    r = subprocess.run(["make", "-n", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("argv", [a for k, a in COMMANDS if k == "evaluate"], ids=lambda a: " ".join(a)[:60])
def test_evaluate_command_line_is_accepted(argv, tmp_path, monkeypatch, capsys):
    from sweeper.config.compose import compose as compose_evaluation
    from sweeper.evaluation.__main__ import main

    monkeypatch.chdir(tmp_path)  # the README's source does not exist here: main stops at it, after argparse
    assert main(argv) == 2
    assert "no such run folder or embedding file" in capsys.readouterr().err
    compose_evaluation([fill_in(o) for o in argv[1:] if "=" in o and not o.startswith("-")])


@pytest.mark.parametrize("argv", [a for k, a in COMMANDS if k == "analysis"], ids=lambda a: " ".join(a)[:60])
def test_analysis_command_line_is_accepted(argv, tmp_path, monkeypatch, capsys):
    from analysis.__main__ import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2  # argparse accepted it (a bad line exits through SystemExit); no runs here
    assert capsys.readouterr().err.startswith("error:")


def test_the_toy_trial_runs_as_written_from_an_empty_folder(tmp_path):
    """The README's embedded-world trial, with small budgets appended (later overrides win), from an empty cwd."""
    # the set-up section's `ti-sweeper ...` and "The embedded world"'s `python -m sweeper ...`: the same line
    (argv,) = {tuple(a) for k, a in COMMANDS if k == "sweeper" and "model=toy" in a and "-m" not in a}
    keep = ("inversion.init_word", "evaluation/prompts")  # the world's own init word and edit prompts
    budget = [o for o in (*SMOKE_INVERSION, *SMOKE_EVALUATION) if not o.startswith(keep)]
    cwd = tmp_path / "empty"
    cwd.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-m", "sweeper", *argv, *budget, "inversion.steps=2", "hydra.run.dir=run"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (cwd / "run" / "metrics.json").is_file() and "[trial] completed" in r.stdout

    # the README's re-evaluation of a run folder (`... outputs/my-cat evaluation=fast`) on this world run: the
    # preset changes the protocol and keeps the run's judge (the world's; `fast` names the hub's CLIP)
    (reeval,) = [
        a for k, a in COMMANDS if k == "evaluate" and "evaluation=fast" in a and not a[0].endswith(".pt")
    ]
    small = [o for o in SMOKE_EVALUATION if o.startswith(("evaluation.num_samples", "evaluation.steps"))]
    run_judge = compose_config("model=toy", "evaluation=toy").evaluation.judge
    e = subprocess.run(
        [sys.executable, "-m", "sweeper.evaluation", "run", *reeval[1:], *small, "--out", "reeval"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert e.returncode == 0, e.stderr[-3000:]
    metrics = json.loads((cwd / "reeval" / "metrics.json").read_text())
    assert metrics["judge"] == run_judge and metrics["protocol"]["sampler"] == "dpmsolver++"
    assert "the run's own judge, prompts, prompt_set stay" in e.stderr

    # a judge that cannot load here: one line, before any model work
    hub = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeper.evaluation",
            "run",
            "evaluation.judge=nobody/no-such-clip",
            "--out",
            "x",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert hub.returncode == 2 and "Traceback" not in hub.stderr, hub.stderr[-3000:]
    assert "error: evaluation.judge=nobody/no-such-clip: not in the local Hugging Face cache" in hub.stderr
    assert "loading model" not in hub.stderr and not (cwd / "x").exists()
