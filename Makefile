PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test unit demo install lint clean ops-tools

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or make PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# promtool, amtool, prometheus and prometheus-alertmanager for the ops tests (tests/test_ops_*.py),
# stunnel (TLS in front of the local broker, tests/test_security.py), and headless Chromium with its
# driver (a report in a real browser, tests/test_report_browser.py), from Debian's packages;
# each package is installed only where its binary is missing. Without apt-get it says what is missing.
# Pairs of binary:package.
OPS_TOOLS := prometheus:prometheus promtool:prometheus prometheus-alertmanager:prometheus-alertmanager \
	amtool:prometheus-alertmanager stunnel4:stunnel4 chromium:chromium chromedriver:chromium-driver
ops-tools:
	@missing=""; pkgs=""; for t in $(OPS_TOOLS); do bin=$${t%%:*}; pkg=$${t#*:}; \
		command -v $$bin >/dev/null && continue; missing="$$missing $$bin"; \
		case " $$pkgs " in *" $$pkg "*) ;; *) pkgs="$$pkgs $$pkg";; esac; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
		echo "ops-tools: missing$$missing and no apt-get here: install Debian's$$pkgs"; \
		exit 0; fi; \
	echo "ops-tools: installing$$pkgs (missing:$$missing)"; \
	SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	$$SUDO apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$pkgs \
		|| echo "ops-tools: could not install$$pkgs (missing:$$missing)"

# most of the suite waits on brokers, services and wall-clock windows: three workers (pytest-xdist),
# each test file whole on one of them (its fixtures set up once), the longest files first
# (tests/conftest.py); TEST_WORKERS=0 runs in one process
TEST_WORKERS ?= 3
test: $(STAMP) ops-tools
	DO_NOT_TRACK=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# the inner loop: everything but the tests that start a broker or a service, and the slow files
# (tests/conftest.py); `make test` runs them all
unit: $(STAMP)
	DO_NOT_TRACK=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not integration and not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

demo: $(STAMP)
	DO_NOT_TRACK=1 $(PY) -m driftline.service.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
