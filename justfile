# maglev developer recipes.  `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Install maglev (editable) with its test tools; compiles the C extension.
setup:
    rm -f maglev/_native*.so
    python3 -m pip install -q -e '.[test]'

# Fast rebuild of the C extension in place (no pip).
build:
    python3 maglev/_cffi_src/build.py

# The whole test suite (what CI runs).
test *ARGS:
    python3 -m pytest {{ARGS}}

# ruff over Python; the C extension built with -Wall -Wextra -Werror.
lint:
    ruff check .
    MAGLEV_CFLAGS=-Werror python3 maglev/_cffi_src/build.py

# Benchmarks: print measurements and ratios; never fail on a slow machine.
bench:
    for b in bench/bench_*.py; do echo "== $b"; python3 "$b"; done

# Debian packages the tests use (tshark, routers, traffic tools, clang for fuzzing).
system-deps:
    #!/usr/bin/env bash
    set -euo pipefail
    export DEBIAN_FRONTEND=noninteractive
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends tshark tcpdump bird2 gobgpd iperf3 iproute2 clang llvm libclang-rt-14-dev procps >/dev/null

# Everything CI does: system packages, install, lint, the whole test suite.
ci: system-deps setup
    ruff check .
    python3 -m pytest -p no:cacheprovider

# The main job on a fresh machine.
demo: setup
    maglev table --config examples/sample.toml
    maglev table --backends 1000 --size 65537 --json
