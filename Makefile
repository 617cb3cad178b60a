# A thin wrapper over CMake; CMakeLists.txt is the truth.
PREFIX ?= /usr/local
BUILD ?= build
JOBS ?= $(shell nproc)
FUZZ_SECONDS ?= 60

.PHONY: all build deps deps-test test test-asan test-matrix test-soak test-peers fuzz demo bench install clean

all: build

# `make` installs only what building needs; the tests install the rest.
deps:
	@scripts/deps.sh build

deps-test:
	@scripts/deps.sh test

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=$(PREFIX) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

test: deps-test build
	@cd $(BUILD) && ctest --output-on-failure

test-asan: deps-test
	@cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DMOONSHIFT_SANITIZE=ON >/dev/null
	@cmake --build build-asan -j $(JOBS)
	@cd build-asan && ctest --output-on-failure

SOAK_RUNS ?= 100
test-soak: deps-test build
	@MOONSHIFT_SOAK_RUNS=$(SOAK_RUNS) MOONSHIFT_BIN=$(BUILD)/moonshift MOONSHIFT_LUA_DIR= \
		$(BUILD)/moonshift --run-lua spec/busted.lua --tags=soak --exclude-tags=none spec/soak

# The real dbmate, sql-migrate, node-pg-migrate, postgrator, Sqitch and Alembic first, then
# moonshift adopting what each applied (scripts/peers.sh installs them).
test-peers: deps-test build
	@scripts/peers.sh
	@MOONSHIFT_BIN=$(BUILD)/moonshift MOONSHIFT_LUA_DIR= \
		$(BUILD)/moonshift --run-lua spec/busted.lua --tags=peers --exclude-tags=none spec/peers

test-matrix: deps-test build
	@scripts/test-matrix.sh

fuzz:
	@scripts/deps.sh clang-14 libclang-rt-14-dev
	@CC=clang-14 cmake -S . -B build-fuzz -DMOONSHIFT_FUZZ=ON >/dev/null
	@cmake --build build-fuzz --target fuzz_splitter -j $(JOBS)
	@mkdir -p build-fuzz/corpus
	@cp tests/fuzz_seeds/* spec/fixtures/split/* build-fuzz/corpus/ 2>/dev/null || true
	build-fuzz/fuzz_splitter -max_total_time=$(FUZZ_SECONDS) -max_len=4096 build-fuzz/corpus

demo: build
	@scripts/deps.sh postgresql-15 postgresql-client-15
	@$(BUILD)/moonshift demo

bench: deps-test build
	@scripts/deps.sh hyperfine
	@bench/run.sh

install: build
	@cmake --install $(BUILD) --prefix $(PREFIX)

clean:
	rm -rf build build-asan build-fuzz
