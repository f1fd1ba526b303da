# Quick start: `make demo` runs the whole pipeline locally; `make test` runs the test suite.
# Both create .venv on first use and install the project with its test extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench lint typecheck worker beat flower sandbox clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,demo]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/recorder demo

# two processes, whole test files each (their own Redis dbs: tests/conftest.py): the
# integration tests mostly wait on real processes, so two halve the wall time
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not integration and not slow"

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python tests/benchmarks/run.py
	$(BIN)/python tests/benchmarks/publish.py
	$(MAKE) herd

.PHONY: herd
# the herd: 10,000 jobs due at one instant T, a 250 ms API, 200/s; one and two workers on
# defaults, start windows, plain Celery ETA next to it; about 12 minutes
# (HERD_ARGS="--jobs 1000 --plain-cap-s 20": a quick run, about 2 minutes)
herd: $(STAMP)
	$(BIN)/python tests/benchmarks/herd.py $(HERD_ARGS)

.PHONY: bench-beat
# beat at scale: 10,000 schedules due on one minute, two minutes running; about 3 minutes
bench-beat: $(STAMP)
	$(BIN)/python tests/benchmarks/beat_scale.py --schedules 10000 --minutes 2

.PHONY: soak
# 5 full soak runs (1,000 jobs, workers SIGKILLed, Redis restarted), then Redis outages of 20 s
# and 45 s under 200 jobs; each prints one line per run; about 8 minutes
soak: $(STAMP)
	$(BIN)/python tests/benchmarks/soak.py --runs 5 --pool both
	RECORDER_SOAK_FULL=1 $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/integration/test_redis_outage.py

.PHONY: bench-webhooks
# the webhook receiver: 500 verified webhooks/s for 10 s (p50/p99/max latency), then Redis
# memory per job with its recording state (10,000 jobs); private redis-servers, about 1 minute
bench-webhooks: $(STAMP)
	$(BIN)/python tests/benchmarks/webhooks.py

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/mypy worker tasks

worker: $(STAMP)
	$(BIN)/celery -A worker worker --loglevel=INFO

beat: $(STAMP)
	$(BIN)/celery -A worker beat --loglevel=INFO

flower: $(STAMP)
	$(BIN)/celery -A worker flower

sandbox: $(STAMP)
	$(BIN)/recorder sandbox

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
