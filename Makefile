# Every target creates the virtualenv it needs; nothing is installed globally.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo lint test test-unit test-deb bench bench-cost bench-bandwidth bench-storm capacity clean venv

# TypeScript, pinned in clients/js/package-lock.json: checks the JS client's
# declarations (odinws.d.ts) in make test.
TSC := clients/js/node_modules/.bin/tsc

venv: $(STAMP) $(TSC)

# The daemon with its test extras, and the Python client (clients/python, a
# distribution of its own that the daemon's package does not ship).
$(STAMP): pyproject.toml requirements.lock clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[test,lint]' -e clients/python
	touch $(STAMP)

$(TSC): clients/js/package-lock.json
	cd clients/js && npm ci --no-audit --no-fund --loglevel=error
	touch $(TSC)

# The demo's public port (page, /ws, /health, /metrics): make demo PORT=3105.
PORT ?= 3005
# make demo AVRO=1: the simulator writes Avro through a local Schema Registry
# (Apicurio Registry, odinws_tools/apicurio) and odinws decodes it; JSON otherwise.
demo: $(STAMP)
	$(PY) -m odinws_tools.demo --port $(PORT) $(if $(AVRO),--avro)

# The style and type gate (ruff, mypy; configured in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The integration tests run against Apache Kafka (its jars fetched with
# Maven on first use, odinws_tools/kafka/pom.xml); ODINWS_TEST_BROKER=tansu
# runs them against the demo's embedded broker instead. The Schema Registry
# tests run Apicurio Registry (fetched with Maven too; Java 21 or later).
test: $(STAMP) $(TSC) lint
	node --test clients/js/test/*.test.mjs
	$(TSC) -p clients/js
	$(PY) -m odinws_tools.kafka --fetch
	$(PY) -m odinws_tools.apicurio --fetch
	$(VENV)/bin/trial --jobs=2 tests

test-deb: $(STAMP)
	VENV_PY=$(PY) bash tests/deb/test-deb.sh

# Everything but tests/integration (no broker, no processes).
test-unit: $(STAMP)
	$(PY) -m odinws_tools.kafka --fetch
	$(VENV)/bin/trial --jobs=2 tests.clients tests.common tests.parent tests.shard tests.tools tests.test_layout tests.test_head_differential

# 12,000 subscribed connections (CONNECTIONS=40000 for more) for 60 s against
# a local demo stack (broker, odinws --shards 2 or more if the open-files hard
# limit needs them, simulator); fails on any failed connection or lost event.
# Report: artifacts/capacity/report.html (docs/performance.md, "Capacity").
# The load comes from build/odinws-loadclient, built here from
# odinws_tools/loadtest/loadclient.c (a C compiler is all it needs).
CONNECTIONS ?= 12000
LOADCLIENT_SRC = odinws_tools/loadtest/loadclient.c odinws_tools/loadtest/loadclient_checks.h \
	odinws_tools/loadtest/wsframe.h
build/odinws-loadclient: $(LOADCLIENT_SRC)
	mkdir -p build
	$(CC) -O2 -std=gnu11 -Wall -o $@ odinws_tools/loadtest/loadclient.c -lm

capacity: $(STAMP) build/odinws-loadclient
	$(PY) -m odinws_tools.capacity_run --connections $(CONNECTIONS) --report artifacts/capacity \
		--native-binary build/odinws-loadclient

bench: $(STAMP)
	sh bench/setup.sh
	$(PY) -m odinws_tools.kafka --fetch
	$(PY) bench/run.py

# CPU per delivered frame of the working tree against BEFORE (a commit) and
# against its own pure-Python send loop, in one run, and the fan-out loop's
# instructions per frame under callgrind (valgrind; docs/performance.md,
# "Cost per frame"): how a change is measured on the hot path.
# (The setting's value is YAML: "off" quoted, or it reads as the boolean false.)
BEFORE ?= HEAD
bench-cost: $(STAMP)
	sh bench/setup.sh
	$(PY) -m odinws_tools.kafka --fetch
	$(PY) bench/cost.py --variant before=$(BEFORE) --variant now=. \
		--variant 'python-loop=.:outbound.native="off"' --doc

# A reconnection storm (bench/storm.py; docs/performance.md, "Reconnection
# storms"): STORM_CLIENTS clients at once to a fresh node of STORM_SHARDS
# shards (Apache Kafka, its jars fetched on first use; the C load client is built with gcc on first
# use). STORM_ARGS adds options, e.g. STORM_ARGS="--head-timeout 60".
STORM_CLIENTS ?= 5000
STORM_SHARDS ?= 1
STORM_ARGS ?=
bench-storm: $(STAMP)
	$(PY) -m odinws_tools.kafka --fetch
	$(PY) bench/storm.py --clients $(STORM_CLIENTS) --shards $(STORM_SHARDS) $(STORM_ARGS)

# The issue-25 targets (compression, deltas, max_rate, filters) against a
# real node, written into docs/performance.md (bench/bandwidth.py, ~10 min).
bench-bandwidth: $(STAMP)
	sh bench/setup.sh
	$(PY) -m odinws_tools.kafka --fetch
	$(PY) bench/bandwidth.py

clean:
	rm -rf $(VENV) _trial_temp* build *.egg-info
