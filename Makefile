# The two commands of the README, and what they stand on.
#   make demo  - install, start the local Kafka + Elasticsearch, run the pipeline end to end, report
#   make test  - install, start or reuse the local stack, run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test install chromium tools stack-up stack-down bench lint clean

demo: $(STAMP)
	$(BIN)/streamdl demo

test: $(STAMP) chromium lint tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# helm (the chart tests) and Beam's Prism job server (the portable-runner test), built once from the Go module
# proxy into ~/.cache/streamdl/tools (STREAMDL_TOOLS_DIR); later runs find them there.
tools: $(STAMP)
	@command -v go >/dev/null || { echo "Go is needed to build helm and Prism (apt-get install golang)"; exit 1; }
	$(BIN)/python -m streamdl.infra.gotools helm prism

# ruff: lint and format check of the whole tree (configured in pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The web page's browser test drives Debian's Chromium (Playwright without its own browser download).
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| { echo "Chromium is needed for the browser tests: run 'apt-get install chromium' as root"; exit 1; }

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@command -v java >/dev/null || { echo "Java 17+ is needed (apt-get install openjdk-17-jre-headless)"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is needed (apt-get install maven)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,spark]'
	rm -f $(VENV)/.installed-*
	touch $@

stack-up: $(STAMP)
	$(BIN)/streamdl stack up

stack-down: $(STAMP)
	$(BIN)/streamdl stack down

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python -m bench
	$(BIN)/python -m bench.knn

clean:
	-$(BIN)/streamdl stack down
	rm -rf $(VENV) .streamdl .pytest_cache .hypothesis
