# maglev developer recipes.  `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Every recipe runs with the project's virtual environment first on PATH, so `python3`,
# `maglev`, `pytest` and `ruff` are the ones in .venv (made by `just venv` or ./bootstrap,
# reused when present).  Nothing is pip-installed outside it: a system Python that refuses
# `pip install` (PEP 668, Debian 12 / Ubuntu 24.04) is fine.
export PATH := justfile_directory() + "/.venv/bin:" + env_var("PATH")

# The virtual environment .venv, made with $PYTHON (default python3); kept when present.
venv:
    #!/usr/bin/env bash
    set -euo pipefail
    [ -x .venv/bin/pip ] && exit 0
    rm -rf .venv
    py="${PYTHON:-python3}"
    if ! "$py" -m venv .venv; then
        rm -rf .venv
        echo "just venv: '$py -m venv .venv' failed: install python3-venv (just system-deps does, as root)" >&2
        exit 1
    fi

# Install maglev (editable, into .venv) with its test tools; compiles the C extension.
setup: venv
    rm -f maglev/_native*.so
    python3 -m pip install -q --disable-pip-version-check -e '.[test]'

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
    MAGLEV_CFLAGS=-Werror python3 bench/native/build.py

# The benchmark-only C (bench/native: ring loops, mg_dp_bench, mg_encap_bench) in its own
# module, bench/native/_mgbench*.so; never part of maglev._native.  The benchmark scripts
# also build it on demand when a source is newer.
bench-ext:
    python3 bench/native/build.py

# Benchmarks: print measurements and ratios; never fail on a slow machine.
bench: bench-ext
    for b in bench/bench_*.py; do echo "== $b"; python3 "$b"; done

# A package this distribution does not have is skipped with a message (the tests that need
# it skip and say why); the sanitizer runtime follows the distribution's clang version.
# Debian 12 / Ubuntu 24.04 packages (root): C compiler, Python headers, venv, test tools.
system-deps:
    #!/usr/bin/env bash
    set -euo pipefail
    if ! command -v apt-get >/dev/null; then
        echo "just system-deps: no apt-get here; install by hand: a C compiler, Python headers, python3-venv, tshark, tcpdump, bird2, gobgpd, iperf3, wrk, iproute2, clang" >&2
        exit 0
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "just system-deps: apt-get needs root; skipped (namespace tests need root as well)" >&2
        exit 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -qq
    have() { local c; c=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'); [ -n "$c" ] && [ "$c" != "(none)" ]; }
    # the clang runtime (libFuzzer, sanitizers) comes per clang version: clang-14 on Debian 12,
    # clang-18 on Ubuntu 24.04; libclang-rt-dev, when present, follows the default clang
    clang_v=$(apt-cache depends clang 2>/dev/null | sed -n 's/^ *Depends: clang-\([0-9][0-9]*\)$/\1/p' | head -n 1)
    rt=libclang-rt-dev
    have "$rt" || rt="libclang-rt-${clang_v:-none}-dev"
    want=(gcc libc6-dev python3-dev python3-venv pkg-config
          tshark tcpdump bird2 gobgpd iperf3 wrk iproute2 procps util-linux
          clang llvm "$rt")
    pkgs=()
    for p in "${want[@]}"; do
        if have "$p"; then pkgs+=("$p"); else echo "just system-deps: $p is not available on this distribution; skipped"; fi
    done
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null

# With CI set (.ci/run sets it) a test whose data is missing fails instead of skipping.
# Everything CI does: system packages, install, lint, the whole test suite.
ci: system-deps setup
    ruff check .
    python3 -m pytest -p no:cacheprovider

# The main job on a fresh machine (root): system packages, install, then a namespace lab
# with 3 backends and 1000 real HTTP requests through the VIP (`maglev demo`).
demo: system-deps setup
    maglev demo

# Reproduce the paper's Figures 11 and 12 (Maglev vs Karger vs Rendezvous).
evaluate:
    maglev table --evaluate

# The forwarder on the sample config with the traffic generator for 5 s (JSON summary).
run-sample:
    maglev run --workers 2 --nic gen:seconds=5 --json

# Fuzz the C parser + burst kernel with libFuzzer under ASan+UBSan for SECONDS (default 60),
# seeded with every packet of the test corpus (tests/data/corpus) (docs/datapath.md, "Fuzzing").
fuzz SECONDS="60":
    python3 fuzz/make_seeds.py build/fuzz
    clang -g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Imaglev/_cffi_src/include fuzz/fuzz_dp.c maglev/_cffi_src/src/mg_parse.c maglev/_cffi_src/src/mg_dp.c maglev/_cffi_src/src/mg_conntrack.c maglev/_cffi_src/src/mg_tables.c maglev/_cffi_src/src/mg_encap.c maglev/_cffi_src/src/mg_icmp.c maglev/_cffi_src/src/mg_frag.c maglev/_cffi_src/src/mg_hash.c maglev/_cffi_src/src/mg_quic.c -o build/fuzz/fuzz_dp
    MG_FUZZ_TABLES=build/fuzz/tables.bin build/fuzz/fuzz_dp -max_total_time={{SECONDS}} -max_len=4096 -print_final_stats=1 build/fuzz/corpus

# tests/datapath against an ASan+UBSan build of the extension, in a private copy of the
# tree (build/sanitize), so the shared in-place build is never replaced.
sanitize:
    #!/usr/bin/env bash
    set -euo pipefail
    rm -rf build/sanitize && mkdir -p build/sanitize
    cp -r maglev tests pyproject.toml build/sanitize/
    cp -r cli build/sanitize/maglev_cli
    rm -f build/sanitize/maglev/_native*.so
    (cd build/sanitize && MAGLEV_SANITIZE=1 python3 maglev/_cffi_src/build.py >/dev/null)
    cd build/sanitize
    LD_PRELOAD="$(gcc -print-file-name=libasan.so)" ASAN_OPTIONS=detect_leaks=0 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 PYTHONPATH=. \
    python3 -m pytest -p no:cacheprovider -q tests/datapath

# Regenerate the goldens of the recorded lab traces (traces/README.md); review the diff.
traces-golden:
    python3 traces/golden.py --update

# Re-record the lab traces (root: brings a namespace lab up and down), then the goldens.
traces-record:
    python3 traces/record.py
    python3 traces/golden.py --update

# BGP speaker against BIRD 2 and GoBGP in network namespaces (root; docs/bgp.md).
bgp-interop *ARGS:
    python3 -m pytest tests/bgp/test_interop_bird.py tests/bgp/test_interop_gobgp.py {{ARGS}}
