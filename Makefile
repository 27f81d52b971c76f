# duet — see README.md. `make test` installs what it needs on a fresh machine.
SHELL := /bin/bash
CARGO ?= cargo
TARGET := x86_64-unknown-linux-gnu
STATIC_BIN := target/$(TARGET)/release/duet
APT_PACKAGES := iproute2 iputils-ping nftables curl python3 ethtool tcpdump nginx-light haproxy wrk chromium python3-prometheus-client prometheus hping3 clang libbpf-dev openssl

.PHONY: all build deps test unit integration lint demo soak clean-netns

all: build

build:
	RUSTFLAGS='-C target-feature=+crt-static' $(CARGO) build --release --target $(TARGET)
	@file $(STATIC_BIN) 2>/dev/null || true

deps:
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(APT_PACKAGES); \
	fi
	$(CARGO) fetch

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

unit: deps
	$(CARGO) test --lib --bins

# netns tests run the real binary; a few at a time keeps timings honest on 2 cores.
# Everything runs with the default engine (eBPF where the kernel allows);
# the data-plane, sync, failover, health, reload and fault tests run again
# on the userspace engine.
USERSPACE_TESTS := dataplane sync partition health reload faults vips
integration: deps
	$(CARGO) test --no-fail-fast --test '*' -- --test-threads=2
	DUET_ENGINE=userspace $(CARGO) test --no-fail-fast $(addprefix --test ,$(USERSPACE_TESTS)) -- --test-threads=2
	$(MAKE) clean-netns

# Bounded fuzzing of every parser, then the appliance image built and booted
# as a two-VM cluster under QEMU.
test: deps lint unit integration fuzz-smoke vm-test

# Long fault tests (50 % heartbeat loss for two minutes, ...).
soak: deps
	$(CARGO) test --test faults -- --ignored --test-threads=1
	$(MAKE) clean-netns

clean-netns:
	@for ns in $$(ip netns list 2>/dev/null | awk '/^dt[0-9]/{print $$1}'); do \
		ip netns pids $$ns 2>/dev/null | xargs -r kill -9; ip netns del $$ns; done

include image/image.mk
include bench/bench.mk
include fuzz/fuzz.mk

demo: deps
	$(CARGO) build --release
	bash demo/demo.sh target/release/duet
