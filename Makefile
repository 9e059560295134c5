# InferenceServer: the two commands are `make run` and `make test`.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
CONFIG  ?= config/default.yaml
PROTO_SRC := proto/inference.proto
PROTO_OUT := commonlib/wire

.PHONY: run test lint typecheck pytest proto check-proto native bench fuzz train-lstm train-motion clean-venv system-deps goldens

$(STAMP): requirements.txt requirements-runtime.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $(STAMP)

## proto: regenerate the Python protobuf modules from proto/ (committed).
proto: $(STAMP)
	$(VPY) -m grpc_tools.protoc -Iproto --python_out=$(PROTO_OUT) --pyi_out=$(PROTO_OUT) $(PROTO_SRC)

## check-proto: fail when the committed generated code differs from proto/.
check-proto: $(STAMP)
	$(VPY) scripts/check_proto.py

## native: build the C extensions (scripts/build_native.py SOURCES: codec, UDP, LSTM; gcc and python3-dev, nothing downloaded).
native: $(STAMP)
	$(VPY) scripts/build_native.py

## run: install, then start the daemon with the bundled config and models.
run: $(STAMP) proto native
	$(VPY) -m aiServer --config $(CONFIG)

lint: $(STAMP)
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .

typecheck: $(STAMP)
	$(VPY) -m mypy

## system-deps: Debian packages the tests use for real (promtool), and pm2 from npm.
system-deps:
	bash scripts/install_system_deps.sh
	if command -v npm >/dev/null 2>&1; then npm install --no-audit --no-fund --loglevel=error; fi

## pytest: two test processes (most tests wait on real daemons and sockets); a file's
## tests stay in one process, so a module's daemon fixture starts once.
pytest: $(STAMP) system-deps native
	$(VPY) -m pytest -q -n 2 --dist loadfile

## test: install, then proto freshness, ruff, mypy and the whole pytest suite.
test: $(STAMP) check-proto lint typecheck pytest

## bench: the throughput/latency benchmark (minutes; see docs/performance.md).
bench: $(STAMP)
	$(VPY) bench/bench_server.py

## fuzz: coverage-guided fuzzing of the decoder and dispatcher (FUZZ_SECONDS, default 60).
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(VPY) tests/fuzz/fuzz_packets.py -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1

## train-lstm: train a new lstm_timeseries version into models/lstm_timeseries/ (next number) (seeded, under a minute).
train-lstm: $(STAMP)
	$(VPY) scripts/train_lstm.py --repository models

## train-motion: train a new motion_lstm version into models/motion_lstm/ (next number) (seeded, about 3 minutes on 2 cores).
train-motion: $(STAMP)
	$(VPY) scripts/train_motion.py --repository models

## goldens: store every served model version's current predictions as the regression gate's
## goldens (tests/goldens/<model>/<version>.json; make test checks them within 2 %). Installs
## nothing: run it after an intended change to a model or its preprocessing, review the diff.
goldens:
	$(VPY) scripts/goldens.py --write

clean-venv:
	rm -rf $(VENV)

## bot-test: the bot's own tests (units, every scenario on loopback daemons, pm2 failover).
.PHONY: bot-test
bot-test: $(STAMP) system-deps
	$(VPY) -m pytest -q tests/test_bot.py tests/test_bot_units.py tests/test_bot_scenarios.py tests/test_pm2.py
