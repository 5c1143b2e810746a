# The README's commands. Every target sets up .venv first (idempotent).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN ?= runs/train
TRAIN_ARGS ?=
SMOKE_RUN ?= runs/smoke

WORKERS ?= 2
DIST_RUN ?= runs/distributed

# Prometheus metrics of train / train-distributed (0: off). `make monitor` scrapes this port.
METRICS_PORT ?= 0
METRICS_HOST ?= 127.0.0.1
MONITOR_TARGET ?= 127.0.0.1:9100
MONITOR_LISTEN ?= 127.0.0.1:9090

# The default search: 8 trials (trial 0 = the seed's values) of 1200 steps, ASHA.
TUNE_OUT ?= runs/tune
TRIALS ?= 8
BUDGET_STEPS ?= 1200
TUNE_ARGS ?=

.PHONY: install train train-distributed tune smoke test lint bench monitor prometheus clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The seed's configuration (30 epochs, batch 64, device auto). Re-running continues an
# interrupted run in $(RUN) instead of refusing it.
train: install
	$(BIN)/dcgan train --out $(RUN) --config configs/seed.yaml \
		$(if $(wildcard $(RUN)/checkpoints/state_step_*.pt),--resume) \
		--metrics-port $(METRICS_PORT) --metrics-host $(METRICS_HOST) $(TRAIN_ARGS)

# The same configuration under Ray Train + DDP on $(WORKERS) workers (a local Ray instance
# unless RAY_ADDRESS is set). Re-running resumes the run of the same name.
train-distributed: install
	$(BIN)/dcgan train-distributed --out $(DIST_RUN) --workers $(WORKERS) \
		--config configs/seed.yaml --metrics-port $(METRICS_PORT) --metrics-host $(METRICS_HOST) \
		$(TRAIN_ARGS)

# Ray Tune over g_lr, d_lr, dropout and label_smoothing against the balance objective
# (docs/tuning.md). Re-running continues an interrupted search in $(TUNE_OUT).
tune: install
	$(BIN)/dcgan tune --out $(TUNE_OUT) --trials $(TRIALS) --budget-steps $(BUDGET_STEPS) \
		--baseline $(if $(wildcard $(TUNE_OUT)/search_settings.json),--resume) \
		--metrics-port $(METRICS_PORT) --metrics-host $(METRICS_HOST) $(TUNE_ARGS)

# At most 300 steps on a 6,400-image subset: every artifact in about a minute on 2 CPU cores.
smoke: install
	$(BIN)/dcgan train --out $(SMOKE_RUN) --config configs/smoke.yaml --overwrite $(TRAIN_ARGS)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check dcgan cluster tune tests

bench: install
	$(BIN)/dcgan bench

# Prometheus + promtool from Debian's package, where missing (needs root or sudo).
prometheus:
	@cluster/prometheus/install.sh

# A local Prometheus with our config and alert rules, scraping $(MONITOR_TARGET), e.g. a run
# started with `make train METRICS_PORT=9100`. http://$(MONITOR_LISTEN); Ctrl-C stops it.
monitor: install prometheus
	$(BIN)/python -m cluster.monitor --target $(MONITOR_TARGET) --listen $(MONITOR_LISTEN)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
