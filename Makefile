# Two environments (docs/architecture.md): .venv (Dagster orchestrator) and .venv-worker (torch models).
# `make demo` and `make test` each set up everything they need on a fresh machine.
PYTHON      ?= python3.11
TORCH_SPEC  ?= torch==2.14.1 torchvision==0.29.1
VENV        := .venv
WORKER_VENV := .venv-worker
DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export DAGSTER_HOME

.PHONY: setup system-packages demo test ui screenshots knobs-doc clean

setup: $(VENV)/.installed $(WORKER_VENV)/.installed

# apt packages: redis-server (distributed tests), chromium (the browser tests and `make screenshots`;
# Playwright drives this Chromium, it never downloads one), nginx-light (benchmarks/bench_fetch.py
# --http serves a COG archive with it). Installs only what is missing; the stamp
# depends on this Makefile so that a package added here is installed in existing checkouts too.
system-packages: .system-packages.stamp
.system-packages.stamp: Makefile
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		echo "apt-get install$$missing"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

$(VENV)/.installed: pyproject.toml | system-packages
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[orchestrator,test]"
	@touch $@

$(WORKER_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(WORKER_VENV)
	$(WORKER_VENV)/bin/pip install -q --upgrade pip
	$(WORKER_VENV)/bin/pip install -q $(TORCH_SPEC)
	$(WORKER_VENV)/bin/pip install -q -e ".[worker,test]" $(TORCH_SPEC)
	@# CUDA torch + the matching torchvision (they run on CPU too); a mismatched pair breaks
	@# `import terratorch` ("operator torchvision::nms does not exist"): fail here, not in the tests.
	$(WORKER_VENV)/bin/python -c "import terratorch, torch, torchvision; print('worker env: torch', torch.__version__, 'torchvision', torchvision.__version__, 'terratorch ok')"
	@touch $@

# One command: build both environments, generate the synthetic demo catalog, materialize the demo
# region for one window end to end, print where the cube is and how to open the UI.
demo: setup
	mkdir -p $(DAGSTER_HOME) && cp -n dagster.yaml $(DAGSTER_HOME)/dagster.yaml 2>/dev/null || true
	$(VENV)/bin/python -m rs_embed_pipeline.cli.demo $(DEMO_ARGS)

test: setup
	bash scripts/run_tests.sh

ui: setup
	mkdir -p $(DAGSTER_HOME) && cp -n dagster.yaml $(DAGSTER_HOME)/dagster.yaml 2>/dev/null || true
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# The README's UI screenshots (docs/screenshots/*.png): the demo region with the reduced fixture
# models in a throw-away instance, `dagster dev`, Chromium (same helpers as the browser test).
screenshots: setup
	$(VENV)/bin/python scripts/screenshots.py --out docs/screenshots

# docs/knobs.md is generated from the resources' and run configs' knob fields (orchestration/knobs_doc.py): run this
# after changing a knob field; rs_embed_pipeline_tests/orchestration/test_knobs_doc.py fails while the file is out of date.
knobs-doc: $(VENV)/.installed
	$(VENV)/bin/python -m rs_embed_pipeline.orchestration.knobs_doc --write docs/knobs.md

clean:
	rm -rf $(VENV) $(WORKER_VENV) .system-packages.stamp data .dagster_home
