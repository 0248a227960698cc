# One-command entry points. `make test` and `make run` work on a fresh machine with
# Python 3.11+, a C compiler and make: they create .venv and install everything.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard protos/ggap/pb/*.proto)
# etcd's API subset for bench.compare: grpcio stubs only, its root is the repository root.
BENCH_PROTOS := bench/etcdpb/etcd.proto
PYTEST_ARGS ?=

.PHONY: all install run test lint proto proto-check unit ext clean bench bench-ab bench-compare bench-profile fuzz

all: install

$(STAMP): pyproject.toml setup.py ggap/_fastlog.pyx
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "setuptools>=74" "Cython>=3.0,<4" wheel
	$(PY) -m pip install -q --no-build-isolation -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Rebuild the Cython extension in place after editing ggap/_fastlog.pyx.
ext: $(STAMP)
	$(PY) setup.py -q build_ext --inplace

proto: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(PY) -m grpc_tools.protoc -I protos \
	  --python_out=. --pyi_out=. --purerpc_out=. --grpc_python_out=. $(PROTOS)
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. $(BENCH_PROTOS)

# Fails when the committed generated code differs from a fresh generation.
proto-check: $(STAMP)
	@tmp=$$(mktemp -d) && \
	PATH=$(abspath $(BIN)):$$PATH $(PY) -m grpc_tools.protoc -I protos \
	  --python_out=$$tmp --pyi_out=$$tmp --purerpc_out=$$tmp --grpc_python_out=$$tmp $(PROTOS) && \
	diff -r -x __init__.py -x __pycache__ $$tmp/ggap/pb ggap/pb && \
	$(PY) -m grpc_tools.protoc -I . --python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp $(BENCH_PROTOS) && \
	diff -r -x __init__.py -x __pycache__ -x '*.proto' $$tmp/bench/etcdpb bench/etcdpb && rm -rf $$tmp && \
	echo "proto-check: generated code is up to date"

lint: $(STAMP)
	$(BIN)/ruff check ggap tests bench
	$(BIN)/mypy

test: $(STAMP) proto-check lint
	$(BIN)/pytest $(PYTEST_ARGS)
	GGAP_NO_EXTENSIONS=1 $(BIN)/pytest -q -m "not slow" tests/unit
	$(PY) -m ggap.sim --seeds $(or $(SIM_SEEDS),100) --start 1000

# A local 3-node cluster (clients on 127.0.0.1:17000,17010,17020; data and logs in ./data)
# until Ctrl-C. Running it again restarts the same cluster from ./data.
run: $(STAMP)
	$(BIN)/ggap cluster up --nodes 3 --data-dir ./data

bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

# Interleaved A/B comparison of two checkouts (each with its extension built), e.g.
#   make bench-ab A=../ggap-before B=. BENCH_ARGS="--rounds 5 --duration 10 --clients 64 --mix put=100"
bench-ab: $(STAMP)
	$(PY) -m bench.ab --a $(or $(A),$(error set A=DIR)) --b $(or $(B),.) $(BENCH_ARGS)

# etcd 3.4 vs ggap side by side, interleaved, 3-node and 1-node cells (installs etcd-server
# with apt-get when etcd is not on PATH); results in bench/results/<UTC timestamp>/.
bench-compare: $(STAMP)
	$(PY) -m bench.compare $(BENCH_ARGS)

# Profile a 3-node cluster under load with py-spy, e.g. BENCH_ARGS="--clients 64 --mix put=100".
bench-profile: $(STAMP)
	PYTHON=$(PY) bench/profile.sh $(BENCH_ARGS)

# Coverage-guided fuzzing (atheris) of the peer wire decoder, the command codec (pure vs
# Cython), the request converters and the client port's HTTP/2 layer, FUZZ_SECONDS each; `make test` runs a 3 s pass of each.
# A crash leaves ./crash-<sha1>: replay with `$(PY) -m tests.fuzz.run TARGET crash-<sha1>`.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := peer_wire command_codec convert h2_frontdoor
fuzz: $(STAMP)
	@mkdir -p build/fuzz && for t in $(FUZZ_TARGETS); do \
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s (log: build/fuzz/$$t.log)"; \
	  $(PY) -m tests.fuzz.run $$t --seconds $(FUZZ_SECONDS) -print_final_stats=1 > build/fuzz/$$t.log 2>&1 \
	    || { tail -40 build/fuzz/$$t.log; exit 1; }; \
	  grep -E "^(Done|stat::number_of_executed_units)" build/fuzz/$$t.log; \
	done

# Deterministic cluster simulator: a seed sweep; a failure prints its one-line replay command.
.PHONY: sim
sim: $(STAMP)
	$(PY) -m ggap.sim --seeds $(or $(SEEDS),200) --start $(or $(START),0)

clean:
	rm -rf build dist *.egg-info ggap/_fastlog.c ggap/*.so $(VENV)
