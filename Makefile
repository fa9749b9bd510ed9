# FlowFuse: `make run` starts the server on http://127.0.0.1:8080, `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DATA   ?= ./data
PYTEST_ARGS ?=

.PHONY: run test bench install install-test browsers services clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

run: install
	$(VENV)/bin/flowfuse serve --data-dir $(DATA)

# Debian's Chromium for the console's browser tests (Playwright drives it; nothing is downloaded by Playwright).
browsers:
	@command -v chromium >/dev/null || { echo "installing chromium (Debian package)"; apt-get install -y -qq chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }; }

# Database, MQTT and mail servers the connector tests start on loopback (Debian packages; tests run
# their own throwaway instances, nothing is started system-wide).
services:
	@missing=""; for p in postgresql mariadb-server mosquitto; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing$$missing (Debian packages)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq $$missing >/dev/null || { apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; }; fi

test: install-test browsers services
	$(PY) -m pytest -n auto $(PYTEST_ARGS)

bench: install-test
	@command -v wrk >/dev/null && command -v valgrind >/dev/null || { echo "installing wrk and valgrind (Debian packages)"; apt-get install -y -qq wrk valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk valgrind; }; }
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

# The single-file binary dist/flowfuse (PyInstaller, Linux x86-64), with dist/flowfuse.sha256 and the CycloneDX
# SBOM dist/flowfuse.cdx.json beside it; the build tools go into the venv, never into the binary.
.PHONY: binary test-binary
BUILD_TOOLS := "pyinstaller>=6.10,<7" "cyclonedx-bom>=4,<8"

binary: install
	@$(PY) -c "import PyInstaller, cyclonedx_py" 2>/dev/null || $(PY) -m pip install --quiet $(BUILD_TOOLS)
	bash packaging/build.sh $(abspath $(PY))

# Builds the binary, then runs it end to end (tests_binary/, which `make test` does not collect).
test-binary: install-test
	@$(PY) -c "import PyInstaller, cyclonedx_py" 2>/dev/null || $(PY) -m pip install --quiet $(BUILD_TOOLS)
	FLOWFUSE_TEST_BINARY=1 $(PY) -m pytest -s -p no:cacheprovider tests_binary $(PYTEST_ARGS)

# PNGs of the console's main pages in docs/screenshots/ (a real server with sample data, Chromium via Playwright).
.PHONY: screenshots
screenshots: install-test browsers
	$(PY) tests/screenshots.py
