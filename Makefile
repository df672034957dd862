# exchange-fabric build skeleton (GNU make).
#
#   make venv       create .venv and install the project editable, with test+perf extras
#   make test       run pytest (PYTEST_ARGS='-k foo -x' to pass options)
#   make run        start the exchange (local topology) with simulated brokers; Ctrl-C stops it.
#                   --fresh: it wipes .exfab/local first (an empty market every time);
#                   .venv/bin/exfab up --demo keeps the journals
#   make bench      order-book benchmark
#   make soak-security  10 minutes of orders with hostile input mixed in: nodes alive, memory, every order
#                   answered (SOAK_ARGS='--minutes 30 --rate 500'); report in .exfab/perf/soak-security/
#   make lint       ruff + mypy, at the versions pinned in setup.cfg's lint extra
#   make clean      build artefacts and caches (keeps .venv); distclean removes .venv too

PY ?= python3
VENV = .venv
VPY = $(VENV)/bin/python
PIP = $(VPY) -m pip
PYTEST_ARGS ?=
SOAK_ARGS ?=
PACKAGES = fabric tools nodes topology perf
STAMP = $(VENV)/.installed
LINT_STAMP = $(VENV)/.lint-installed

.DEFAULT_GOAL := venv
.PHONY: venv run test bench soak-security lint clean distclean

$(STAMP): setup.cfg pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e '.[test,perf]'
	test -x $(VENV)/bin/exfab
	touch $@

venv: $(STAMP)

run: venv
	$(VENV)/bin/exfab up --demo --fresh

# pytest exits 5 when it collected no tests: that is a failure here, and says so.
test: venv
	$(VPY) -m pytest $(PYTEST_ARGS) || { rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: FAILED: pytest collected no tests (exit 5)" >&2; fi; \
	  exit $$rc; }

bench: venv
	$(VPY) perf/bench_book.py

soak-security: venv
	$(VPY) perf/soak_security.py $(SOAK_ARGS)

# The lint extra pins ruff and mypy (setup.cfg); changing a pin reinstalls them.
$(LINT_STAMP): $(STAMP) setup.cfg pyproject.toml
	$(PIP) install -e '.[lint]'
	touch $@

lint: $(LINT_STAMP)
	$(VENV)/bin/ruff --version
	$(VENV)/bin/mypy --version
	$(VENV)/bin/ruff check $(PACKAGES)
	$(VENV)/bin/mypy $(PACKAGES)

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . \( -path ./$(VENV) -o -path ./.git \) -prune -o \
	  \( -type d -name __pycache__ -prune -exec rm -rf {} + \) -o \
	  \( -type f \( -name '*.py[co]' -o -name '*.nbi' -o -name '*.nbc' \) -exec rm -f {} + \)

distclean: clean
	rm -rf $(VENV)
