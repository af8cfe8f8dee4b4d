# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
DATA_DIR ?= $(or $(BATON_DATA_DIR),./var)
TEST_WORKERS ?= 2
# Schemathesis sends one case of 95 under xdist's --dist loadfile (its tests then pass; the test now fails such a
# run), and under --dist load its cases split over workers that each see a part: it runs on its own, in one process.
SCHEMATHESIS := tests/e2e/test_schemathesis.py

.PHONY: run serve demo test test-fast bench bench-scale postgres browser wrk docs clean cluster nats-cluster corpus

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	rm -f $(VENV)/.installed-*; touch $(STAMP)

## run: seed the demo county on first run (empty SQLite data dir), then serve everything
run: $(STAMP)
	@if [ -z "$$BATON_STORE" ] && [ ! -f "$(DATA_DIR)/events.sqlite" ]; then $(BIN)/baton demo; fi
	$(BIN)/baton serve

serve: $(STAMP)
	$(BIN)/baton serve

demo: $(STAMP)
	$(BIN)/baton demo

## test: lint (ruff), type-check the domain (mypy --strict), then the whole suite on real SQLite, PostgreSQL, nats-server:
## two workers, a file per worker at a time; schemathesis on its own; then, alone, the tests that stop PostgreSQL
test: $(STAMP) postgres browser wrk
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict domain/
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not exclusive" --ignore=$(SCHEMATHESIS)
	$(BIN)/pytest -q $(SCHEMATHESIS)
	$(BIN)/pytest -q -m exclusive

## test-fast: the unit tier only (domain and pure logic with in-memory parts; no services needed): seconds
test-fast: $(STAMP)
	$(BIN)/pytest -q tests/unit

## bench: every path's speed as a ratio of the bare substrate measured in the same run (SQLite and PostgreSQL)
bench: $(STAMP) postgres wrk
	$(BIN)/python -m bench

## bench-scale: county x 10, ~1M events in a fresh SQLite dir under /tmp; rebuild, score, export, verify at 250k/500k/1M
bench-scale: $(STAMP)
	$(BIN)/python -m bench.scale

## cluster: three baton serve on the local PostgreSQL and a 3-node NATS cluster, with the demo county, until Ctrl-C
cluster: $(STAMP) postgres
	$(BIN)/python -m infra.installation $(DATA_DIR)/installation

## nats-cluster: only the three nats-server nodes (JetStream, Baton's accounts) until Ctrl-C; prints BATON_NATS_URL
nats-cluster: $(STAMP)
	$(BIN)/python -m infra.installation --nats-only $(DATA_DIR)/cluster

## browser: Debian's Chromium (and a CJK font for legible screenshots) for tests/e2e/test_dashboard.py, installed
## when missing and running as root; otherwise those tests skip, or fail with CI set
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || apt-get install -y -q chromium fonts-wqy-microhei \
		|| { apt-get update -q && apt-get install -y -q chromium fonts-wqy-microhei; } || true

## wrk: Debian's wrk, the HTTP load generator of `make bench` (and its test), installed when missing and running as root
wrk:
	@command -v wrk >/dev/null || [ "$$(id -u)" != 0 ] || apt-get install -y -q wrk \
		|| { apt-get update -q && apt-get install -y -q wrk; } || true

postgres:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start || true

docs: $(STAMP)
	$(BIN)/baton openapi > docs/openapi.json
	$(BIN)/baton asyncapi > docs/asyncapi.json
	$(BIN)/baton events > docs/events.json

## corpus: record this release's history (the demo county) under tests/corpus/<release>, for later releases to load
corpus: $(STAMP)
	$(BIN)/python -m tests.corpus.record

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
