# Two entry points: `make demo` and `make test`. Both install into .venv first; the install is
# stamped so a second run only re-checks what changed.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.raykd-installed
# mmcv 2.1.0 has no wheel for torch 2.13: it is built from source with its CPU ops (once; pip caches
# the wheel). The build needs torch and a setuptools that still ships pkg_resources. It compiles with
# Python's own CFLAGS (what it uses by default: -O3 ...) plus -g0: the same machine code without the
# debug info, whose generation for torch's headers is a third of the build's time (README, *Measured*).
BUILD_PINS := torch==2.13.0 setuptools==80.9.0 wheel ninja
MMCV_CFLAGS = $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_config_var("CFLAGS"))') -g0

.PHONY: install demo test test-fast lint bench check-kd-row publish-teachers constraints clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt $(BUILD_PINS)
	$(BIN)/python -c "import mmcv.ops" 2>/dev/null || CFLAGS="$(MMCV_CFLAGS)" MMCV_WITH_OPS=1 $(BIN)/pip install -c constraints.txt --no-build-isolation mmcv==2.1.0
	$(BIN)/pip install -q -c constraints.txt --no-build-isolation -e '.[dev]'
	touch $(STAMP)

# Re-pin constraints.txt to what .venv holds now (after a deliberate upgrade, then re-measure).
constraints: install
	@{ sed -n '/^#/p' constraints.txt; $(BIN)/pip freeze --exclude-editable; } > constraints.new && mv constraints.new constraints.txt

demo: install
	$(BIN)/python -m raykd.tune search_spaces/demo.yaml

# The whole suite, in two pytest processes side by side: the unit tests keep one core busy while the
# e2e tests mostly wait on Ray (start-up, polling, the searches' own 1-CPU trials). Each has its own
# temporary folder; the unit tests' report follows the e2e tests'; either failing fails the target.
test: install
	@unit_log=$$(mktemp); unit_tmp=$$(mktemp -d); e2e_tmp=$$(mktemp -d); \
	$(BIN)/python -m pytest -q -m "not e2e" --basetemp=$$unit_tmp tests > $$unit_log 2>&1 & unit=$$!; \
	$(BIN)/python -m pytest -q -m e2e --durations=25 --basetemp=$$e2e_tmp tests; e2e_rc=$$?; \
	wait $$unit; unit_rc=$$?; echo "==== unit tests (run beside the e2e tests) ===="; cat $$unit_log; \
	rm -rf $$unit_log $$unit_tmp $$e2e_tmp; test $$e2e_rc -eq 0 -a $$unit_rc -eq 0

# The unit tests only (no Ray cluster, search or CLI run end to end): minutes, for your own loop.
test-fast: install
	$(BIN)/python -m pytest -q -m "not e2e" --durations=10 tests

lint: install
	$(BIN)/ruff check raykd tests benchmarks

bench: install
	$(BIN)/python -m benchmarks.kd_vs_student

# Seed 0 of one KD-table row on today's code against benchmarks/out/ap.json (exit 1 if it moved).
METHOD ?= frs
check-kd-row: install
	$(BIN)/python -m benchmarks.check_kd_row $(METHOD)

# Train the demo's teachers in an empty cache and publish them in experiments/teachers (with SHA256SUMS);
# each file's line says whether this machine reproduced the published one bit for bit (~25 min on 2 cores).
publish-teachers: install
	@cache=$$(mktemp -d); RAYKD_CACHE=$$cache $(BIN)/python -m raykd.cli.publish_teachers experiments/shapes_demo.yaml; \
	rc=$$?; rm -rf $$cache; exit $$rc

clean:
	rm -rf $(VENV) .raykd_cache runs mlflow.db
