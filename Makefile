# ninefold template: `make help` lists every target.
.DEFAULT_GOAL := help
SHELL := /bin/bash

UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
BUILD_DIR ?= build
DEMO_DIR := $(BUILD_DIR)/ninefold_shop
PYTEST_ARGS ?= -n auto
# The template's own Python (the baked project is linted through bakes).
TOOLING := hooks tests tools

.PHONY: help demo bake test lint format clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-8s\033[0m %s\n", $$1, $$2}'

$(CURDIR)/.tools/bin/uv:
	python3 -m venv .tools && .tools/bin/pip install --quiet uv

.venv/.synced: pyproject.toml | $(UV)
	$(UV) sync --quiet
	@touch $@

bake: .venv/.synced ## Bake the default project into build/ninefold_shop (replacing an older bake and its local data)
	@if [ -f $(DEMO_DIR)/.devstack/stack.json ]; then \
		echo "bake: stopping the stack $(DEMO_DIR)/.devstack/stack.json names before replacing the bake"; \
		$(MAKE) -C $(DEMO_DIR) stop || { echo "bake: could not stop it; nothing was deleted"; exit 1; }; \
	fi
	rm -rf $(DEMO_DIR)
	$(UV) run cookiecutter --no-input --output-dir $(BUILD_DIR) .

# The demo runs the existing bake, keeping the data its local stack created (.devstack); a
# fresh bake only on request: `make bake demo`, or `make demo REBAKE=1`.
demo: .venv/.synced ## Run the demo bake (baked once; `make demo REBAKE=1` re-bakes): migrations, sample data, the service
	@if [ -n "$(REBAKE)" ] || [ ! -f $(DEMO_DIR)/Makefile ]; then \
		$(MAKE) bake; \
	else \
		echo "demo: running the existing bake in $(DEMO_DIR) (\`make demo REBAKE=1\` re-bakes it)"; \
	fi
	$(MAKE) -C $(DEMO_DIR) dev

test: .venv/.synced ## Test the template: hooks, every option combination, baked suites on real servers
	$(UV) run pytest $(PYTEST_ARGS)

lint: .venv/.synced ## Lint the template's own Python (hooks, tests, tools)
	$(UV) run ruff check $(TOOLING)
	$(UV) run ruff format --check $(TOOLING)

format: .venv/.synced ## Format hooks/tests/tools, and the baked project's Python through a bake
	$(UV) run ruff format $(TOOLING)
	$(UV) run python tools/format_template.py

clean: ## Remove the tooling environment and demo bakes
	rm -rf .venv .tools build
