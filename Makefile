# One-word targets. `make test` is THE test command: unit, integration and
# end-to-end tiers against real RabbitMQ and PostgreSQL.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: install lint format typecheck test bench demo services-up services-down all clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint,sqlalchemy,django]'

format:
	$(BIN)/ruff format reliable tests benchmarks
	$(BIN)/ruff check --fix reliable tests benchmarks

lint:
	$(BIN)/ruff check reliable tests benchmarks
	$(BIN)/ruff format --check reliable tests benchmarks
	$(BIN)/mypy reliable tests/typing

typecheck:
	$(BIN)/mypy reliable tests/typing

test:
	$(BIN)/python -m pytest $(ARGS)

bench:
	$(BIN)/python -m benchmarks $(ARGS)

demo:
	bash ops/demo/run.sh

services-up:
	docker compose up -d --wait

services-down:
	docker compose down

all: lint test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
