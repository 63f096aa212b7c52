# libblackmamba build. `make` builds the libraries, tools and examples;
# `make test` runs every test; `make install PREFIX=... DESTDIR=...` installs.
# The CUDA backend is built when nvcc is found (CUDA=0 turns it off).

VERSION_MAJOR := 0
VERSION_MINOR := 1
VERSION_PATCH := 0
VERSION := $(VERSION_MAJOR).$(VERSION_MINOR).$(VERSION_PATCH)

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DESTDIR ?=

BUILD ?= build
CC ?= cc
CFLAGS ?= -O2 -g
SAN ?=
DEPLIBS := -lyaml -ljansson -lutf8proc -lm -lpthread

BM_CPPFLAGS := -Iinclude -Ilib -D_GNU_SOURCE -DBM_BUILDING_LIBRARY
BM_CFLAGS := -std=c11 -Wall -Wextra -Wshadow -Wno-format-truncation -fPIC -fvisibility=hidden $(SAN) $(CFLAGS)

SONAME := libblackmamba.so.$(VERSION_MAJOR)
SHARED := $(BUILD)/libblackmamba.so.$(VERSION)
STATIC := $(BUILD)/libblackmamba.a

LIB_SRC := $(sort $(wildcard lib/*.c lib/cpu/*.c))
BM_CPPFLAGS += -Ilib/cpu
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)

TOOL_SRC := $(sort $(wildcard tools/*.c))
TOOLS := $(TOOL_SRC:tools/%.c=$(BUILD)/%)
EXAMPLE_SRC := $(sort $(wildcard examples/*.c))
EXAMPLES := $(EXAMPLE_SRC:examples/%.c=$(BUILD)/%)
# GPU tests (test/test_cuda*.c) run with `make test-cuda`, not `make test`.
CUDA_TEST_SRC := $(sort $(wildcard test/test_cuda*.c))
TEST_SRC := $(filter-out $(CUDA_TEST_SRC),$(sort $(wildcard test/test_*.c)))
TESTS := $(TEST_SRC:test/%.c=$(BUILD)/%)
TEST_SUPPORT := $(sort $(wildcard test/support/*.c))
# Test scripts run after the C tests; each prints its own "N passed, N failed".
SCRIPT_TESTS := test/test_cli.sh test/test_reference.py
# The Python and Go bindings' tests (also alone: make test-python, make test-go).
SCRIPT_TESTS += test/test_python.sh test/test_go.sh

# ---- optional CUDA backend -------------------------------------------------
NVCC ?= $(shell command -v nvcc 2>/dev/null)
CUDA ?= $(if $(and $(NVCC),$(wildcard cuda/*.cu)),1,0)
ifeq ($(CUDA),1)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_SRC := $(sort $(wildcard cuda/*.cu))
CUDA_OBJ := $(CUDA_SRC:%.cu=$(BUILD)/obj/%.o)
CUDA_ARCHS ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_86,code=sm_86 \
              -gencode arch=compute_89,code=sm_89 -gencode arch=compute_90a,code=sm_90a \
              -gencode arch=compute_90,code=compute_90
NVCCFLAGS ?= -O3 -std=c++17 $(CUDA_ARCHS) -Xcompiler -fPIC,-fvisibility=hidden -Iinclude -Ilib -Icuda \
             -DBM_BUILDING_LIBRARY -DBM_WITH_CUDA=1
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart_static -ldl -lrt -lstdc++
BM_CPPFLAGS += -DBM_WITH_CUDA=1 -Icuda
# GPU tests and the per-kernel harnesses (cuda/dev/*.cu, llm.c dev/cuda
# style): compiled by `make` so CI checks them, run by `make test-cuda`.
CUDA_TESTS := $(CUDA_TEST_SRC:test/%.c=$(BUILD)/%)
CUDA_DEV_SRC := $(sort $(wildcard cuda/dev/*.cu))
CUDA_DEV := $(CUDA_DEV_SRC:cuda/dev/%.cu=$(BUILD)/dev/%)
else
CUDA_OBJ :=
CUDA_LIBS :=
CUDA_TESTS :=
CUDA_DEV :=
endif

ALL_LIBS := $(CUDA_LIBS) $(DEPLIBS)

.PHONY: all lib tools examples tests test test-cuda test-cuda-memcheck cuda-dev install uninstall clean check-exports
all: lib tools examples tests $(CUDA_TESTS) $(CUDA_DEV)

lib: $(SHARED) $(STATIC) $(BUILD)/libblackmamba.so $(BUILD)/blackmamba.pc

$(BUILD)/obj/%.o: %.c $(wildcard include/*.h lib/*.h lib/cpu/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(BM_CPPFLAGS) $(BM_CFLAGS) -c $< -o $@

$(BUILD)/obj/%.o: %.cu $(wildcard include/*.h lib/*.h cuda/*.cuh cuda/*.h)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(SHARED): $(LIB_OBJ) $(CUDA_OBJ) lib/blackmamba.map
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=lib/blackmamba.map -Wl,--no-undefined \
	  $(SAN) -o $@ $(LIB_OBJ) $(CUDA_OBJ) $(ALL_LIBS)

$(BUILD)/libblackmamba.so: $(SHARED)
	ln -sf $(notdir $(SHARED)) $(BUILD)/$(SONAME)
	ln -sf $(SONAME) $@

$(STATIC): $(LIB_OBJ) $(CUDA_OBJ)
	rm -f $@
	ar rcs $@ $^

# Regenerated on every build: PREFIX and LIBDIR may differ from the last run.
.PHONY: $(BUILD)/blackmamba.pc
$(BUILD)/blackmamba.pc: pkgconfig/blackmamba.pc.in
	@mkdir -p $(BUILD)
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' \
	    -e 's|@VERSION@|$(VERSION)|g' -e 's|@PRIVATE_LIBS@|$(ALL_LIBS)|g' $< > $@

# Tools, examples and tests link the static library: tests reach internals.
tools: $(TOOLS)
examples: $(EXAMPLES)
tests: $(TESTS)

$(BUILD)/%: tools/%.c $(STATIC)
	$(CC) $(BM_CPPFLAGS) $(BM_CFLAGS) -o $@ $< $(STATIC) $(ALL_LIBS)

$(BUILD)/%: examples/%.c $(STATIC)
	$(CC) $(BM_CPPFLAGS) $(BM_CFLAGS) -o $@ $< $(STATIC) $(ALL_LIBS)

$(BUILD)/test_%: test/test_%.c $(TEST_SUPPORT) $(wildcard test/support/*.h) test/check.h $(STATIC)
	$(CC) $(BM_CPPFLAGS) -Itest -Itest/support $(BM_CFLAGS) -o $@ $< $(TEST_SUPPORT) $(STATIC) $(ALL_LIBS)

# ---- fuzzing (test/fuzz/, docs/ROBUSTNESS.md) --------------------------------
# `make fuzz` builds the libFuzzer targets with clang, ASan and UBSan in
# $(FUZZ_BUILD)/fuzz_*; `make test` replays every corpus without libFuzzer
# ($(BUILD)/replay_*: the committed test/fuzz/corpus/NAME plus seeds that
# test/fuzz/make_corpus.sh makes from the fixtures in $(BUILD)/fuzz-seeds).
FUZZ_NAMES := $(sort $(patsubst test/fuzz/fuzz_%.c,%,$(wildcard test/fuzz/fuzz_*.c)))
REPLAYS := $(FUZZ_NAMES:%=$(BUILD)/replay_%)
FUZZERS := $(FUZZ_NAMES:%=$(BUILD)/fuzz_%)
FUZZ_BUILD ?= build-fuzz
.PHONY: fuzz fuzzers replays fuzz-seeds
fuzz:
	$(MAKE) BUILD=$(FUZZ_BUILD) CC=clang CUDA=0 CFLAGS="-O1 -g -fno-omit-frame-pointer" \
	  SAN="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined" fuzzers
fuzzers: $(FUZZERS)
replays: $(REPLAYS)
$(BUILD)/fuzz_%: test/fuzz/fuzz_%.c $(wildcard test/fuzz/*.h) $(STATIC)
	$(CC) $(BM_CPPFLAGS) $(BM_CFLAGS) -fsanitize=fuzzer -o $@ $< $(STATIC) $(ALL_LIBS)
$(BUILD)/replay_%: test/fuzz/fuzz_%.c test/fuzz/replay.c $(wildcard test/fuzz/*.h) $(STATIC)
	$(CC) $(BM_CPPFLAGS) $(BM_CFLAGS) -DFUZZ_NAME='"$*"' -o $@ $< test/fuzz/replay.c $(STATIC) $(ALL_LIBS)
fuzz-seeds: all
	@sh test/fuzz/make_corpus.sh $(SHARED_DIR) $(BUILD)/fuzz-seeds $(BUILD)

SHARED_DIR ?= ../shared
test: all $(REPLAYS) fuzz-seeds
	@BM_SHARED=$(SHARED_DIR) BM_BUILD=$(BUILD) sh test/run_tests.sh $(TESTS) $(SCRIPT_TESTS) $(REPLAYS)

.PHONY: test-python test-go
test-python test-go: lib
	@BM_SHARED=$(SHARED_DIR) BM_BUILD=$(BUILD) sh test/run_tests.sh test/$(subst -,_,$@).sh

# ---- CUDA: GPU tests, harnesses, memcheck (docs/CUDA.md) ----------------------
$(BUILD)/dev/%: cuda/dev/%.cu $(wildcard cuda/dev/*.cuh cuda/*.cuh cuda/*.h) $(STATIC)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -o $@ $< $(STATIC) $(ALL_LIBS)

cuda-dev: $(CUDA_DEV)

test-cuda: all
	@if [ "$(CUDA)" != 1 ]; then echo "test-cuda: this build has no CUDA backend (no nvcc)"; exit 1; fi
	@BM_SHARED=$(SHARED_DIR) BM_BUILD=$(BUILD) sh test/run_tests.sh $(CUDA_TESTS) $(CUDA_DEV)
	@# again with the opt-in persistent batch-1 step kernel (cuda/decode_fused.cu)
	@BM_CUDA_FUSED_STEP=1 BM_SHARED=$(SHARED_DIR) BM_BUILD=$(BUILD) sh test/run_tests.sh \
	  $(BUILD)/test_cuda_backend $(BUILD)/test_cuda_batch

# The GPU tests on small models under compute-sanitizer's memcheck.
test-cuda-memcheck: all
	@for t in $(CUDA_TESTS); do \
	  BM_SHARED=$(SHARED_DIR) BM_CUDA_TEST_SMALL=1 compute-sanitizer --tool memcheck --error-exitcode 9 $$t || exit 1; \
	done

check-exports: $(SHARED)
	sh test/check_exports.sh $(SHARED) $(SONAME)

install: lib
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR)
	install -m 644 include/blackmamba.h $(DESTDIR)$(INCLUDEDIR)/
	install -m 755 $(SHARED) $(DESTDIR)$(LIBDIR)/
	ln -sf $(notdir $(SHARED)) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libblackmamba.so
	install -m 644 $(STATIC) $(DESTDIR)$(LIBDIR)/
	install -m 644 $(BUILD)/blackmamba.pc $(DESTDIR)$(PKGCONFIGDIR)/

uninstall:
	rm -f $(DESTDIR)$(INCLUDEDIR)/blackmamba.h $(DESTDIR)$(LIBDIR)/libblackmamba.so* \
	      $(DESTDIR)$(LIBDIR)/libblackmamba.a $(DESTDIR)$(PKGCONFIGDIR)/blackmamba.pc

clean:
	rm -rf $(BUILD)

# The main job of the README: write a small random-weight model in the
# published layout and generate from it. TOKENIZER=path/to/tokenizer.json
# turns on text; without it the demo prints token ids.
DEMO_DIR ?= $(BUILD)/demo-model
TOKENIZER ?=
.PHONY: demo
demo: all
	$(BUILD)/bm-mkmodel $(DEMO_DIR) --dims tiny --vocab 50304 --seed 7
ifeq ($(TOKENIZER),)
	$(BUILD)/bm-generate -m $(DEMO_DIR) --ids -p "510 3158 247 673" -n 32 --seed 1
else
	$(BUILD)/bm-generate -m $(DEMO_DIR) --tokenizer $(TOKENIZER) -p "Once upon a time" -n 32 --seed 1
endif
