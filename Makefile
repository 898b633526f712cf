# The two set-up commands of the README. Both create/refresh .venv first (idempotent).
SHELL := /bin/bash
ENV := source scripts/env.sh

.PHONY: demo test venv bench build-bundle colcon

venv:
	@bash scripts/setup_env.sh

## make demo: the main job on the shipped default bundle (models/default)
demo: venv
	@$(ENV) && wsa demo $(ARGS)

## make test: the whole test suite (what .ci/run calls)
test: venv
	@$(ENV) && python -m pytest -q -p no:cacheprovider test $(ARGS)

bench: venv
	@$(ENV) && wsa bench $(ARGS)

build-bundle: venv
	@$(ENV) && wsa build-bundle $(ARGS)

colcon: venv
	@$(ENV) && colcon build --base-paths . --build-base /tmp/wsa_colcon/build --install-base /tmp/wsa_colcon/install
