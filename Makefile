PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo install lint bench clean ops-tools

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or make PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# promtool, amtool, prometheus and prometheus-alertmanager for the ops tests (tests/test_ops_*.py),
# from Debian's packages; installed only where missing. Without apt-get it says what is missing.
OPS_TOOLS := prometheus promtool prometheus-alertmanager amtool
ops-tools:
	@missing=""; for t in $(OPS_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
		echo "ops-tools: missing$$missing and no apt-get here: install Debian's prometheus and prometheus-alertmanager"; \
		exit 0; fi; \
	echo "ops-tools: installing prometheus prometheus-alertmanager (missing:$$missing)"; \
	SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	$$SUDO apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager \
		|| echo "ops-tools: could not install prometheus prometheus-alertmanager (missing:$$missing)"

test: $(STAMP) ops-tools
	DO_NOT_TRACK=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	DO_NOT_TRACK=1 $(PY) -m driftline.service.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
