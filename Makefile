# One entry point for set-up, the demo, the tests and the benchmarks.
# The virtual environment is .venv; torch is installed first (CPU wheel by default) so that no
# dependency can pull a multi-GB CUDA build. On a GPU box: make install TORCH_SPEC='torch==2.13.0'
# with your CUDA index, e.g. PIP_INDEX_URL=https://download.pytorch.org/whl/cu128.
# Every install is constrained to requirements.lock (exact versions): a new upstream release cannot change
# what a fresh clone installs until someone runs `make lock`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
LOCK := requirements.lock
LOCK_VENV := .cache/lock-venv
TINY := .cache/tiny-sd
SWEEP ?= multirun

.PHONY: install lock demo test test-e2e test-slow test-system lint bench plot world tiny clean system-deps
.PHONY: postgres

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c $(LOCK) "$(TORCH_SPEC)"
	$(BIN)/pip install -q -c $(LOCK) -e ".[dev]"
	$(BIN)/pip check
	touch $@

install: $(STAMP)

# Refresh the lock: resolve pyproject.toml's ranges afresh (newest releases) in a throw-away virtualenv and write
# its exact versions to requirements.lock (the project itself excluded; torch without its +cpu/+cuXXX label).
# Then run .ci/run and commit the lock with the result. `make lock TORCH_SPEC=torch` also moves torch.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(LOCK_VENV)/bin/pip install -q ".[dev,postgres]"
	$(LOCK_VENV)/bin/pip check
	{ sed -n '/^#/p' $(LOCK); $(LOCK_VENV)/bin/pip freeze --exclude-editable --exclude ti-sweeper | \
	  sed -E 's/^(torch==[^+]*)\+.*/\1/'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf $(LOCK_VENV)
	@echo "requirements.lock refreshed: run .ci/run, then commit it"

# Small random-weight SD-format components, saved with save_pretrained and loaded back
# through the same from_pretrained path a real model takes.
$(TINY)/model_index.json: | $(STAMP)
	$(BIN)/python tests/tiny_components.py $(TINY)

tiny: $(TINY)/model_index.json

# The demo: the paper's Fig. 10a configurations (ours, high/low LR, 2-/3-word, progressive, regularisation,
# per-image tokens) x 3 seeds on two of the embedded world's concepts = 48 trials, 4 samples per edit prompt
# (model=toy: shipped weights, no training, no network). Each concept is one sweep under the vectorised launcher
# (its 24 trials in groups of 8, one batched UNet call per step, one thread); the two sweeps run side by side, one
# per core. Then the analysis of both: configurations.csv, findings.csv and report.html, whose first section
# (printed at the end) states the verdicts. DEMO_SEEDS=0,1 for a quicker demo (4 pairs per comparison).
DEMO_CONCEPTS ?= toy_arrow toy_ring
DEMO_SEEDS ?= 0,1,2
DEMO_STEPS ?= 150
DEMO_SAMPLES ?= 4
DEMO_OUT ?= outputs/demo
FIG10 := ours,high_lr,low_lr,two_word,three_word,progressive,regularisation,per_image
demo: $(STAMP)
	rm -rf $(DEMO_OUT)
	mkdir -p $(DEMO_OUT)
	pids=""; for c in $(DEMO_CONCEPTS); do \
	  OMP_NUM_THREADS=1 $(BIN)/python -m sweeper -m model=toy data=$$c evaluation=toy \
	    '+experiment/fig10@_global_=$(FIG10)' inversion.seed=$(DEMO_SEEDS) inversion.steps=$(DEMO_STEPS) \
	    inversion.batch_size=4 inversion.grad_accum=1 inversion.log_every=10 inversion.checkpoint_every=0 \
	    evaluation.num_samples=$(DEMO_SAMPLES) evaluation.progress=false tracking=none \
	    hydra/launcher=vectorised hydra.sweep.dir=$(DEMO_OUT)/$$c > $(DEMO_OUT)/$$c.log 2>&1 & pids="$$pids $$!"; \
	done; rc=0; for p in $$pids; do wait $$p || rc=1; done; \
	if [ $$rc -ne 0 ]; then tail -n 30 $(DEMO_OUT)/*.log; exit 1; fi
	$(BIN)/python -m analysis $(DEMO_OUT) --out $(DEMO_OUT)/analysis
	@echo "demo: run folders in $(DEMO_OUT)/<concept>/<n>/; findings.csv, report.html, plots in $(DEMO_OUT)/analysis/"

# System packages the tests need: Chromium opens report.html (tests/test_report_browser.py).
# Installed only when /usr/bin/chromium is missing (Debian/Ubuntu apt; sudo when not root).
SUDO ?= $(if $(filter 0,$(shell id -u)),,sudo)
system-deps:
	@test -x /usr/bin/chromium || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }

# PostgreSQL server binaries for tests/test_postgres.py (Debian's package). The server refuses to run as
# root, so the test runs it as the `postgres` user (created here when missing).
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y postgresql; }
	@id -u postgres >/dev/null 2>&1 || $(SUDO) useradd --system --no-create-home postgres

system-deps: postgres

# A one-node SLURM cluster for tests/test_slurm.py (Debian's slurm-wlm + munge; the test starts its own
# private daemons, nothing is configured system-wide).
.PHONY: slurm
slurm:
	@command -v slurmctld >/dev/null 2>&1 || test -x /usr/sbin/slurmctld || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y slurm-wlm munge; }

system-deps: slurm

# Unit and integration tests: no network, no GPU, no system service (under 8 minutes on 2 cores: two pytest
# workers, one torch thread each; a test file runs whole on one worker, so its module fixtures are built once).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -m "not slow and not system and not e2e" -q -n 2 --dist loadfile

# End-to-end tests: whole sweeps, kill-and-resume, `python -m bench` and `make world` at toy sizes through the
# command line (each up to a minute on 2 cores; split out so that `make test` stays under 8 minutes).
test-e2e: $(STAMP)
	$(BIN)/python -m pytest -m "e2e and not slow and not system" -q -n 2 --dist loadfile

# Tests that need system services (Chromium, PostgreSQL, SLURM), installed/started first. Without a binary a
# test skips with the reason; under CI (CI=true, as .ci/run sets) a missing binary fails it.
test-system: $(STAMP) system-deps
	$(BIN)/python -m pytest -m system -q

# Slow scientific checks (minutes); CI runs them after `make test`. pytest exits 5 when none are collected.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow and not system" -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no slow tests collected"; else exit $$rc; fi

# Speed: the trainer against the project's re-implementation of the diffusers-example loop, on this machine's
# device (CUDA: SD 1.5 shapes; CPU: small shapes); then the headline, sweep throughput on the world: early
# stopping + adaptive evaluation against fixed budgets, Fig. 10a configurations x 3 concepts x 2 seeds
# (SWEEP_COST_ARGS='--size reduced' or '--size ours' for fewer configurations; hours on a 2-core CPU at full size);
# then the analysis at 125/250/500 synthetic run folders (report.html size, CPU time per run).
# Prints tables; writes BENCHMARKS.md + benchmarks/latest.json (+ benchmarks/sweep_cost.json).
BENCH_ARGS ?=
SWEEP_COST_ARGS ?= --size full
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)
	$(BIN)/python -m bench.phase_memory
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.sweep_cost $(SWEEP_COST_ARGS)
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.analysis_scale

# Screenshots of report.html for a 6-trial search and for 500 runs (synthetic run folders, bench/run_folders.py) in
# headless Chromium: benchmarks/screenshots/report_6_runs.png and report_500_runs.png. Look at both after a change
# to the plots or the report.
.PHONY: screenshots
screenshots: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.screenshots

# Many workers on one study: batches vs asynchronous workers (simulated GPUs), and K = 1, 2, 4, 8 sweeper
# processes on one PostgreSQL study (measured). Writes its own section of BENCHMARKS.md and benchmarks/scale.json.
.PHONY: bench-scale
bench-scale: $(STAMP) postgres
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.scale $(SCALE_ARGS)

# make plot SWEEP="sweep_dir [more sweep dirs...]" [OUT=dir]: runs.csv, plots, report.html
plot: $(STAMP)
	$(BIN)/python -m analysis $(SWEEP) $(if $(OUT),--out $(OUT))

# The embedded world (sweeper/world/, its notes in sweeper/world/README.md): renders its data and trains, on the CPU, seeded
# and staged (.cache/world/, resumable), the SD-format pipeline and the CLIP judge shipped in sweeper/world/weights/,
# then prints the quality figures: 54 min on 2 cores, measured from scratch (sweeper/world/README.md).
# The weights are in git: `make demo` never needs this.
world: $(STAMP)
	$(BIN)/python -m sweeper.world.train

clean:
	rm -rf .cache outputs multirun
