"""Builds the package with the Rust library inside it.

`pip install bindings/python` (or `pip wheel`) runs `cargo build --release
-p greylist-c` (the C ABI crate, bindings/c) and puts the library, named
libgreylist.so, libgreylist.dylib or greylist.dll, into the `greylist`
package, so that
`import greylist` finds it in any folder with no environment variable. The
wheel is tagged `py3-none-<platform>`: it holds no Python extension (the
binding is ctypes), only the platform's library. The rest of the metadata is
in pyproject.toml.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:  # setuptools >= 70.1 carries bdist_wheel; before, the wheel package does.
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # pragma: no cover
    from wheel.bdist_wheel import bdist_wheel

HERE = Path(__file__).resolve().parent
CRATE = HERE.parent.parent  # bindings/python -> the repository root

# What cargo builds (the crate's library is greylist_c) and the name the
# binding loads.
LIBRARIES = {
    "linux": ("libgreylist_c.so", "libgreylist.so"),
    "darwin": ("libgreylist_c.dylib", "libgreylist.dylib"),
    "win32": ("greylist_c.dll", "greylist.dll"),
}


def library_names() -> tuple[str, str]:
    for prefix, names in LIBRARIES.items():
        if sys.platform.startswith(prefix):
            return names
    return LIBRARIES["linux"]


class BuildWithLibrary(build_py):
    """build_py, then the Rust library built and copied into the package."""

    def run(self) -> None:
        super().run()
        manifest = CRATE / "Cargo.toml"
        if not manifest.is_file():
            raise SystemExit(f"greylist: no Cargo.toml at {CRATE}: build from the repository")
        cargo = os.environ.get("CARGO", "cargo")
        # The library alone, with the shared store (Redis) and without the
        # daemon's dependencies.
        command = [
            cargo, "build", "--release", "-p", "greylist-c", "--lib",
            "--manifest-path", str(manifest),
        ]
        try:
            subprocess.run(command, check=True)
        except FileNotFoundError:
            raise SystemExit("greylist: building the library needs Rust's cargo (https://rustup.rs)")
        target = Path(os.environ.get("CARGO_TARGET_DIR", CRATE / "target"))
        built_name, name = library_names()
        built = target / "release" / built_name
        destination = Path(self.build_lib) / "greylist" / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built, destination)
        # Stripped, as a packaged library is (the debug information is most
        # of its size).
        if sys.platform.startswith("linux") and shutil.which("strip"):
            subprocess.run(["strip", "--strip-unneeded", str(destination)], check=True)


class WithLibrary(Distribution):
    """A distribution that carries a platform's library (installed where
    extension modules go, in a platform wheel)."""

    def has_ext_modules(self) -> bool:
        return True


class PlatformWheel(bdist_wheel):
    """A wheel for this platform and any Python 3 (ctypes, no extension)."""

    def get_tag(self):  # type: ignore[no-untyped-def]
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(distclass=WithLibrary, cmdclass={"build_py": BuildWithLibrary, "bdist_wheel": PlatformWheel})
