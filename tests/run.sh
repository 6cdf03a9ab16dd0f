#!/usr/bin/env bash
# The whole test suite: Rust unit, model, concurrency, header and doc tests;
# the C ABI test under AddressSanitizer + UBSan and under valgrind; the C++
# wrapper test; the install + pkg-config test of the README's C example; the
# Python binding's unittest suite against a pip-installed copy; the .NET
# binding's test under Mono. The Redis tests (Rust, and each binding's
# shared-store part) run against redis-servers started here and by the tests.
# A suite whose tool is missing is skipped with the reason, except when
# CI=true, where it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out="$root/target/c-tests"
mkdir -p "$out"
passed=0
skipped=0
prefix=""
redis_pid=""
cleanup() {
  [ -z "$prefix" ] || rm -rf "$prefix"
  [ -z "$redis_pid" ] || kill "$redis_pid" 2>/dev/null || true
}
trap cleanup EXIT

suite() { echo; echo "== $*"; }
ok() { passed=$((passed + 1)); }
# have TOOL WHY: true if TOOL exists; else skip (or fail under CI=true).
have() {
  if command -v "$1" >/dev/null 2>&1; then return 0; fi
  if [ "${CI:-}" = "true" ]; then echo "FAILED: $1 is required under CI=true ($2)" >&2; exit 1; fi
  echo "SKIPPED: $1 not installed ($2)"
  skipped=$((skipped + 1))
  return 1
}

suite "cargo test (unit, model, concurrency, snapshot, defence, daemon, Redis, header, doc tests)"
# tests/redis.rs starts its own redis-servers; without one it says why it
# skipped (and fails under CI=true).
have redis-server "the Redis store tests (apt-get install redis-server)" || true
cargo test --lib --bins --tests -- --skip postfix_ --skip exim_
cargo test --doc
# The benchmarks, once each on small tables: they must not rot.
cargo test --benches
ok

suite "real Postfix and real Exim through greylist-policyd"
# Their own run, so a skip's reason (no postfix, swaks or exim here) is shown.
cargo test --test postfix --test exim -- --show-output
ok

cargo build --release --lib
static_libs=$(cargo rustc -q --release --lib --crate-type staticlib -- --print native-static-libs 2>&1 \
  | sed -n 's/.*native-static-libs: //p' | head -n1)
lib="$root/target/release/libgreylist.a"

suite "a redis-server for the bindings' shared-store tests"
if have redis-server "the bindings' shared-store tests"; then
  redis_dir="$root/target/redis-bindings"
  rm -rf "$redis_dir" && mkdir -p "$redis_dir"
  redis_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$redis_dir" \
    >"$redis_dir/log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null && break
    sleep 0.1
  done
  export GREYLIST_TEST_REDIS_URL="redis://127.0.0.1:$redis_port/0"
  echo "redis-server on $GREYLIST_TEST_REDIS_URL"
  ok
fi

suite "C ABI test (gcc -std=c11 -Wall -Wextra -Werror, ASan + UBSan)"
gcc -std=c11 -Wall -Wextra -Werror -g -fsanitize=address,undefined -fno-sanitize-recover=all \
  -fno-omit-frame-pointer -Iinclude tests/c/test_greylist.c "$lib" $static_libs \
  -o "$out/test_greylist_asan"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1 "$out/test_greylist_asan"
ok

suite "C++ wrapper test (g++ -std=c++17, ASan + UBSan)"
g++ -std=c++17 -Wall -Wextra -Werror -g -fsanitize=address,undefined -fno-sanitize-recover=all \
  -Iinclude -Ibindings/cpp tests/cpp/test_wrapper.cpp "$lib" $static_libs -o "$out/test_wrapper"
ASAN_OPTIONS=detect_leaks=1 "$out/test_wrapper"
ok

suite "C ABI test under valgrind (no errors, no leaks)"
if have valgrind "the memcheck run of the C test"; then
  gcc -std=c11 -Wall -Wextra -Werror -g -Iinclude tests/c/test_greylist.c "$lib" $static_libs \
    -o "$out/test_greylist"
  valgrind -q --error-exitcode=1 --leak-check=full --show-leak-kinds=definite,indirect,possible \
    --suppressions=tests/c/valgrind.supp \
    --errors-for-leak-kinds=definite,indirect,possible "$out/test_greylist"
  ok
fi

suite "install into a temporary prefix; build the README's C example with pkg-config"
if have pkg-config "the install test"; then
  prefix=$(mktemp -d)
  bash bindings/c/install.sh "$prefix" >/dev/null
  # The README's first ```c block is the example: it must build and say this.
  awk '/^```c$/{on=1; next} /^```$/{if(on) exit} on' README.md > "$out/example.c"
  export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
  # shellcheck disable=SC2046
  gcc -std=c11 -Wall -Wextra -Werror "$out/example.c" -o "$out/example" $(pkg-config --cflags --libs greylist)
  got=$(LD_LIBRARY_PATH="$prefix/lib" "$out/example")
  want=$'450 4.2.0 Greylisted, please try again in 300 seconds\n450 4.2.0 Greylisted, please try again in 240 seconds\n250 OK'
  if [ "$got" != "$want" ]; then
    printf 'FAILED: the README example printed:\n%s\n' "$got" >&2
    exit 1
  fi
  [ "$(readelf -d "$prefix/lib/libgreylist.so" | sed -n 's/.*soname: \[\(.*\)\]/\1/p')" = libgreylist.so.1 ]
  ok
fi

suite "Python binding (unittest), pip-installed into a virtualenv"
if have python3 "the Python binding tests"; then
  venv="$root/target/python-venv"
  # System site-packages stay visible, for aiosmtpd where .ci/run installed it.
  [ -x "$venv/bin/python" ] || python3 -m venv --system-site-packages "$venv"
  "$venv/bin/python" -m pip install -q --no-deps --force-reinstall bindings/python
  (cd "$out" && GREYLIST_LIBRARY="$root/target/release/libgreylist.so" \
    "$venv/bin/python" -m unittest discover -v -s "$root/bindings/python/tests")
  ok
fi

suite ".NET binding under Mono (mcs, C# 7.2 language level)"
if have mcs "the .NET binding test (apt-get install mono-devel)"; then
  mkdir -p "$root/target/dotnet"
  mcs -langversion:7.2 -warnaserror -out:"$root/target/dotnet/TestGreylist.exe" \
    bindings/dotnet/Greylist.cs bindings/dotnet/tests/TestGreylist.cs
  LD_LIBRARY_PATH="$root/target/release" mono "$root/target/dotnet/TestGreylist.exe"
  ok
fi

echo
echo "suites: $passed passed, 0 failed, $skipped skipped"
