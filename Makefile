# One entry point for set-up, the demo, the tests and the benchmarks.
# The virtual environment is .venv; torch is installed first (CPU wheel by default) so that no
# dependency can pull a multi-GB CUDA build. On a GPU box: make install TORCH_SPEC='torch==2.13.0'
# with your CUDA index, e.g. PIP_INDEX_URL=https://download.pytorch.org/whl/cu128.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
TINY := .cache/tiny-sd
SWEEP ?= multirun

.PHONY: install demo test test-slow lint bench plot world tiny clean system-deps
.PHONY: postgres

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(STAMP)

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

# A one-node SLURM cluster for tests/test_slurm.py (Debian's slurm-wlm + munge; the test starts its own
# private daemons, nothing is configured system-wide).
.PHONY: slurm
slurm:
	@command -v slurmctld >/dev/null 2>&1 || test -x /usr/sbin/slurmctld || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y slurm-wlm munge; }

system-deps: slurm

test: $(STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" -q

# Slow scientific checks (minutes); CI runs them after `make test`. pytest exits 5 when none are collected.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no slow tests collected"; else exit $$rc; fi

# Speed: the trainer against the project's re-implementation of the diffusers-example loop, on this machine's
# device (CUDA: SD 1.5 shapes; CPU: small shapes); then the headline, sweep throughput on the world: early
# stopping + adaptive evaluation against fixed budgets, Fig. 10a configurations x 3 concepts x 2 seeds
# (SWEEP_COST_ARGS='--size reduced' or '--size ours' for fewer configurations; hours on a 2-core CPU at full size).
# Prints tables; writes BENCHMARKS.md + benchmarks/latest.json (+ benchmarks/sweep_cost.json).
BENCH_ARGS ?=
SWEEP_COST_ARGS ?= --size full
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.sweep_cost $(SWEEP_COST_ARGS)

# Many workers on one study: batches vs asynchronous workers (simulated GPUs), and K = 1, 2, 4, 8 sweeper
# processes on one PostgreSQL study (measured). Writes its own section of BENCHMARKS.md and benchmarks/scale.json.
.PHONY: bench-scale
bench-scale: $(STAMP) postgres
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.scale $(SCALE_ARGS)

# make plot SWEEP="sweep_dir [more sweep dirs...]" [OUT=dir]: runs.csv, plots, report.html
plot: $(STAMP)
	$(BIN)/python -m analysis $(SWEEP) $(if $(OUT),--out $(OUT))

# The embedded world (world/, README "The embedded world"): renders its data and trains, on the CPU, seeded
# and staged (.cache/world/, resumable), the SD-format pipeline and the CLIP judge shipped in world/weights/,
# then prints the quality figures: 54 min on 2 cores, measured from scratch (README "The embedded world").
# The weights are in git: `make demo` never needs this.
world: $(STAMP)
	$(BIN)/python -m world.train

clean:
	rm -rf .cache outputs multirun
