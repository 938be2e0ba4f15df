# Canopy: the two commands.
#   make demo   install what is missing, build, run the pipeline on the embedded default
#   make test   install what is missing, build, run the whole suite (and again under ASan/UBSan)
#   make bench  run the benchmarks, regenerate docs/BENCHMARKS.md
BUILD    ?= build
ASAN     ?= build-asan
JOBS     ?= $(shell nproc 2>/dev/null || echo 2)
CTEST_J  ?= 2
DEMO_ARGS ?=

.PHONY: all bootstrap build build-asan test test-main test-asan demo bench chaos fuzz docs clean

all: build

bootstrap:
	@scripts/bootstrap

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja

build: bootstrap $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

$(ASAN)/build.ninja:
	cmake -S . -B $(ASAN) -G Ninja -DCANOPY_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug

build-asan: bootstrap $(ASAN)/build.ninja
	cmake --build $(ASAN) -j $(JOBS)

# The suite: every test in the normal build, then the unit and integration
# tests again built with AddressSanitizer and UndefinedBehaviorSanitizer.
test: build build-asan
	scripts/run-tests $(BUILD) $(ASAN)

demo: build
	$(BUILD)/bin/canopy-demo $(DEMO_ARGS)

bench: build
	scripts/run-bench $(BUILD)

chaos: build
	ctest --test-dir $(BUILD) -L chaos --output-on-failure -j 1 -C long

docs: build
	$(BUILD)/bin/canopy-confdoc > docs/CONFIG.md

clean:
	rm -rf $(BUILD) $(ASAN)
