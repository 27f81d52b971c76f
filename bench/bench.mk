# `make bench`: duet against direct access and HAProxy, side by side, in
# network namespaces (bench/run.py). Included by the top-level Makefile.
# Knobs (environment): BENCH_SECONDS (per load case, default 8),
# BENCH_FAILOVER_N (default 5), BENCH_CONNECTIONS (wrk, default 50), BENCH_ROUNDS (3),
# BENCH_FLOWS (default 100000), BENCH_ENGINES (engines measured, default ebpf,userspace), BENCH_NEW_FLOW_BUDGET
# (cluster.new_flow_budget), BENCH_SKIP (comma list: micro,rss,http,bulk,
# pps,health,failover,proxy). Writes bench/results.json and bench/RESULTS.md.
BENCH_APT_PACKAGES := nginx-light wrk haproxy iperf3 iproute2 curl python3 gcc libc6-dev
CARGO ?= cargo

.PHONY: bench bench-deps

# Wherever this file is included, it does not become the default goal.
_bench_saved_goal := $(.DEFAULT_GOAL)

bench-deps:
	@missing=$$(for p in $(BENCH_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "bench: installing $$missing"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

bench: bench-deps
	$(CARGO) build --release
	python3 bench/run.py

.DEFAULT_GOAL := $(_bench_saved_goal)
