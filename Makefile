# datalayer — entry points. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DL     := $(BIN)/datalayer

.DEFAULT_GOAL := help
.PHONY: help install migrate rollback status check-sql seed partitions bench bench-quick pool-sweep backup restore archive test test-citus test-quick mutation generate lint demo clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/datalayer: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,demo]"
	@touch $@

install: $(BIN)/datalayer ## create .venv and install datalayer with its dev tools

migrate: install ## create the database if missing and apply migrations (DATABASE_URL)
	$(DL) migrate

rollback: install ## roll back the newest migration
	$(DL) rollback

status: install ## show which migrations are applied
	$(DL) status

check-sql: install ## prepare every named query against the migrated database
	$(DL) check-sql

seed: migrate ## load the default data set (1,000 accounts, 1M usage events; --reset)
	$(DL) seed --reset

partitions: install ## list event table partitions with their ranges, rows and sizes
	$(DL) partitions list

bench: migrate ## time hot queries against raw-psycopg baselines (seeds an empty database; QUICK=1 for the short run)
	$(DL) bench $(if $(QUICK),--quick,--scale) --json bench-results.json --chart bench-results.png

bench-quick: ## make bench QUICK=1: the same scenarios, fewer calls, no --scale (under 2 minutes)
	$(MAKE) bench QUICK=1

pool-sweep: migrate ## mixed load from 16 threads against pool sizes 2, 4, 8, 16 (writes test data)
	$(DL) bench --pool-sweep

backup: install ## pg_dump -Fc plus a manifest into backups/
	$(DL) backup --out backups

restore: install ## restore the newest backup into a new database (RESTORE_INTO, default datalayer_restored) and verify
	$(DL) restore "$$(ls -t backups/*.dump | head -1)" --into $${RESTORE_INTO:-datalayer_restored}

archive: install ## archive event partitions older than 13 months into archive/, then drop them
	$(DL) archive --out archive

# Issue 16: the suites that also run against a Citus coordinator and two workers, unchanged
# (tests/citus_servers.py starts the cluster from ../shared/citus, or $DATALAYER_SHARED_DIR).
CITUS_SUITES := $(addprefix tests/integration/test_,citus.py citus_router.py citus_moves.py \
	repositories.py files.py \
	api_keys.py plans.py subscriptions.py quotas.py usage_batch.py usage_cancellation.py \
	usage_exactly_once.py usage_reports.py analytics.py rollups.py billing.py billing_cycle.py \
	billing_invariant.py cache.py cache_hostile.py unit_of_work.py ingest_invariants.py \
	schema_constraints.py)
CITUS_RUN ?= $(CITUS_SUITES)

# Three workers on two cores (and three for the Citus session: 104 s against 128 s at -n 2):
# the suite's one-minute outage test mostly sleeps, and the
# servers' share of the CPU waits on the tests' round trips. Measured here: 171 s at -n 3,
# 191 s at -n 2, 172 s at -n 4.
test: install ## the whole test suite (real PostgreSQL and Redis; embedded ones when none answers), then CITUS_SUITES on Citus
	@status=0; \
	DATALAYER_QUERY_COVERAGE=1 $(BIN)/pytest -n 3 || status=$$?; \
	$(MAKE) --no-print-directory test-citus || status=$$?; \
	exit $$status

test-citus: install ## CITUS_SUITES (every repository, invariants, billing, cache) against Citus: coordinator + 2 workers
	DATALAYER_TEST_CITUS=1 $(BIN)/pytest -n 3 $(CITUS_RUN)

mutation: install ## mutation testing of the pure modules against their unit tests (fails below 95% killed)
	$(BIN)/python tools/mutate.py --jobs 2

test-quick: install ## the inner loop: the suite without its slow tests (wheel, bench, outages, drills, 100k ingests)
	$(BIN)/pytest -n 2 -q -m "not slow and not first"

generate: install ## regenerate the sync I/O modules from their async sources (tools/async_to_sync.py)
	$(BIN)/python tools/async_to_sync.py

lint: install ## generated modules in step, ruff check, ruff format --check, mypy --strict, squawk
	$(BIN)/python tools/async_to_sync.py --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict datalayer
	$(BIN)/squawk --assume-in-transaction migrations/*.sql

demo: install ## migrate and run a short tour of the library
	$(DL) demo

clean: ## remove the venv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .demo-pgdata
