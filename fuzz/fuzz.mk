# Fuzzing, included by the top-level Makefile (`include fuzz/fuzz.mk`).
#
#   make fuzz-smoke   bounded run of every target (part of `make test`)
#   make fuzz         long run of every target (FUZZ_SECS each)
#
# cargo-fuzz and libfuzzer-sys need nightly-only rustc flags (-Z sanitizer,
# sanitizer coverage passes); RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them. The fuzz crate is its own workspace (fuzz/Cargo.toml), built
# into fuzz/target with AddressSanitizer and debug assertions (overflow
# checks on). The first build instruments every dependency: ~8-10 minutes on
# two shared cores; later runs reuse fuzz/target.
#
# A crash ends that target's run (the others still run, then make fails):
# the input is in fuzz/artifacts/<target>/, and
# `make fuzz-repro TARGET=<t> INPUT=<file>` replays it.

FUZZ_TARGETS ?= heartbeat sync frame config admin_http proxy_http
FUZZ_SMOKE_SECS ?= 45
FUZZ_SECS ?= 900
# A fixed seed makes a smoke run repeatable from the same corpus;
# `make fuzz FUZZ_SEED=0` lets libFuzzer pick one.
FUZZ_SEED ?= 1
FUZZ_ENV := RUSTC_BOOTSTRAP=1
# admin_http talks to a real server over loopback: allow its read timeouts.
FUZZ_FLAGS := -seed=$(FUZZ_SEED) -max_len=4096 -timeout=30 -rss_limit_mb=3072 -print_final_stats=1

.PHONY: fuzz-deps fuzz-build fuzz-smoke fuzz fuzz-repro

fuzz-deps:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked

fuzz-build: fuzz-deps
	cd fuzz && $(FUZZ_ENV) $(CARGO) fuzz build

# Runs each target for $(1) seconds from its seeds plus the corpus kept from
# earlier runs, and prints one summary line per target.
define fuzz_run
	@failed=""; for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t; \
		if ( cd fuzz && $(FUZZ_ENV) $(CARGO) fuzz run $$t corpus/$$t seeds/$$t -- \
			-max_total_time=$(1) $(FUZZ_FLAGS) ) > fuzz/last-$$t.log 2>&1; then \
			runs=$$(grep -o 'stat::number_of_executed_units: *[0-9]*' fuzz/last-$$t.log | grep -o '[0-9]*$$'); \
			cov=$$(grep -o 'cov: [0-9]*' fuzz/last-$$t.log | tail -1); \
			echo "fuzz: $$t: $$runs inputs in $(1) s, $$cov, no crash"; \
		else \
			grep -m1 -A1 -E "panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer" fuzz/last-$$t.log; \
			grep -m1 -o "artifacts/$$t/[a-z]*-[0-9a-f]*" fuzz/last-$$t.log; \
			echo "fuzz: $$t: CRASH (log fuzz/last-$$t.log)"; failed="$$failed $$t"; \
		fi; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: crashes in:$$failed"; exit 1; fi
endef

fuzz-smoke: fuzz-build
	$(call fuzz_run,$(FUZZ_SMOKE_SECS))

fuzz: fuzz-build
	$(call fuzz_run,$(FUZZ_SECS))

fuzz-repro: fuzz-build
	cd fuzz && $(FUZZ_ENV) $(CARGO) fuzz run $(TARGET) $(abspath $(INPUT))
