# Every target creates the virtualenv it needs; nothing is installed globally.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-unit test-deb bench capacity clean venv

venv: $(STAMP)

$(STAMP): setup.cfg requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m odinws_tools.demo

test: $(STAMP)
	node --test clients/js/test/*.test.mjs
	$(VENV)/bin/trial --jobs=2 tests

test-deb: $(STAMP)
	VENV_PY=$(PY) bash tests/deb/test-deb.sh

test-unit: $(STAMP)
	$(VENV)/bin/trial tests.unit

# 12,000 subscribed connections (CONNECTIONS=40000 for more) for 60 s against
# a local demo stack (broker, odinws --shards 2 or more if the open-files hard
# limit needs them, simulator); fails on any failed connection or lost event.
# Report: artifacts/capacity/report.html (docs/performance.md, "Capacity").
CONNECTIONS ?= 12000
capacity: $(STAMP)
	$(PY) -m odinws_tools.capacity_run --connections $(CONNECTIONS) --report artifacts/capacity

bench: $(STAMP)
	sh bench/setup.sh
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) _trial_temp* build *.egg-info
