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

.PHONY: install lock demo test test-slow test-system lint bench plot world tiny clean system-deps
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
	$(BIN)/python -m sweeper.tiny $(TINY)

tiny: $(TINY)/model_index.json

# The demo: the paper's Fig. 10a configurations (ours, high/low LR, 2-/3-word, progressive, regularisation,
# per-image tokens) x 2 seeds = 16 trials on the embedded world (model=toy: shipped weights, no training,
# no network), two at a time on the CPU, then the tradeoff plot and report from the run folders.
DEMO_CONCEPT ?= toy_arrow
DEMO_STEPS ?= 200
DEMO_OUT ?= outputs/demo
FIG10 := ours,high_lr,low_lr,two_word,three_word,progressive,regularisation,per_image
demo: $(STAMP)
	rm -rf $(DEMO_OUT)
	OMP_NUM_THREADS=1 $(BIN)/python -m sweeper -m model=toy data=$(DEMO_CONCEPT) evaluation=toy \
	  '+experiment/fig10@_global_=$(FIG10)' inversion.seed=0,1 inversion.steps=$(DEMO_STEPS) \
	  inversion.batch_size=4 inversion.grad_accum=1 inversion.log_every=20 inversion.checkpoint_every=100 \
	  evaluation.num_samples=8 evaluation.progress=false hydra/launcher=joblib_cpu hydra.sweep.dir=$(DEMO_OUT)
	$(BIN)/python -m analysis $(DEMO_OUT) --out $(DEMO_OUT)/analysis
	@echo "demo: run folders in $(DEMO_OUT)/<n>/, tradeoff plot and report in $(DEMO_OUT)/analysis/ (report.html)"

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

# Unit and integration tests: no network, no GPU, no system service (under 8 minutes on 2 cores).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow and not system" -q

# Tests that need system services (Chromium, PostgreSQL, SLURM), installed/started first. Without a binary a
# test skips with the reason; under CI (CI=true, as .ci/run sets) a missing binary fails it.
test-system: $(STAMP) system-deps
	$(BIN)/python -m pytest -m system -q

# Slow scientific checks (minutes); CI runs them after `make test`. pytest exits 5 when none are collected.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow and not system" -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no slow tests collected"; else exit $$rc; fi

# Speed: the project against the diffusers-example reference loop, on this machine's device
# (CUDA: SD 1.5 shapes; CPU: small shapes). Prints a table; writes BENCHMARKS.md + benchmarks/latest.json.
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# make plot SWEEP="sweep_dir [more sweep dirs...]" [OUT=dir]: runs.csv, plots, report.html
plot: $(STAMP)
	$(BIN)/python -m analysis $(SWEEP) $(if $(OUT),--out $(OUT))

# The embedded world (sweeper/world/, README "The embedded world"): renders its data and trains, on the CPU, seeded
# and staged (.cache/world/, resumable), the SD-format pipeline and the CLIP judge shipped in sweeper/world/weights/,
# then prints the quality figures: 54 min on 2 cores, measured from scratch (README "The embedded world").
# The weights are in git: `make demo` never needs this.
world: $(STAMP)
	$(BIN)/python -m sweeper.world.train

clean:
	rm -rf .cache outputs multirun
