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

bake: .venv/.synced ## Bake the default project into build/ninefold_shop (replacing an older bake)
	rm -rf $(DEMO_DIR)
	$(UV) run cookiecutter --no-input --output-dir $(BUILD_DIR) .

demo: bake ## Bake the default project and run it: migrations, sample data, the service
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
