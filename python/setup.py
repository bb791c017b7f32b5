"""Bundles libdlock.so into the package at build time (`pip install ./python`).

The library comes from, in this order:

* ``DLOCK_LIBRARY``: a path to a built ``libdlock.so``, copied as it is (a relative path is
  taken from the directory pip was started in, else from the repository);
* otherwise ``cargo build --release -p dlock-capi`` in the repository that holds this file
  (the parent of ``python/``), then ``<cargo target dir>/release/libdlock.so``.

pip (21.3 and later) builds a local directory in place, so this file's own location finds the
repository even inside pip's isolated build environment.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LIB_NAME = "libdlock.so"
ENV = "DLOCK_LIBRARY"


def fail(message):
    sys.stderr.write(f"\nerror: {message}\n\n")
    raise SystemExit(1)


def library_from_env(value):
    path = Path(value).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        # pip runs this script from the package directory: a relative path given on the
        # command line is relative to where pip started (the shell's PWD).
        starts = [os.environ.get("PWD"), os.getcwd(), str(REPO)]
        candidates = []
        for start in starts:
            if start and Path(start) / path not in candidates:
                candidates.append(Path(start) / path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    fail(
        f"{ENV}={value!r} names no file (looked at {', '.join(map(str, candidates))}); "
        f"set it to a built {LIB_NAME}, e.g. target/release/{LIB_NAME} after "
        "`cargo build --release -p dlock-capi`"
    )


def library_from_cargo():
    if not (REPO / "Cargo.toml").is_file() or not (REPO / "capi" / "Cargo.toml").is_file():
        fail(
            f"{REPO} is not the dlock repository (no Cargo.toml or capi/Cargo.toml), so "
            f"{LIB_NAME} cannot be built here; build from the repository (`pip install ./python`), "
            f"or set {ENV} to the path of a built {LIB_NAME}"
        )
    cargo = os.environ.get("CARGO") or shutil.which("cargo")
    if not cargo:
        fail(f"cargo is not on PATH: install Rust, or set {ENV} to the path of a built {LIB_NAME}")
    command = [cargo, "build", "--release", "-p", "dlock-capi"]
    print(f"building {LIB_NAME}: {' '.join(command)} (in {REPO})", flush=True)
    if subprocess.run(command, cwd=REPO).returncode != 0:
        fail(f"`{' '.join(command)}` failed (its output is above); or set {ENV} to a built {LIB_NAME}")
    metadata = subprocess.run(
        [cargo, "metadata", "--format-version", "1", "--no-deps"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        check=False,
    )
    target = REPO / "target"
    if metadata.returncode == 0:
        target = Path(json.loads(metadata.stdout)["target_directory"])
    built = target / "release" / LIB_NAME
    if not built.is_file():
        fail(f"cargo succeeded but {built} does not exist; set {ENV} to the path of {LIB_NAME}")
    return built


def find_library():
    value = os.environ.get(ENV)
    return library_from_env(value) if value else library_from_cargo()


class build_py_with_library(build_py):
    """build_py, plus libdlock.so copied into the package (``dlock/libdlock.so``)."""

    def run(self):
        super().run()
        source = find_library()
        if getattr(self, "editable_mode", False):
            # `pip install -e`: the package is imported from the source tree.
            destination = HERE / "dlock" / LIB_NAME
        else:
            destination = Path(self.build_lib) / "dlock" / LIB_NAME
        print(f"bundling {source} as {destination}", flush=True)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
        destination.chmod(0o755)
        self._library = str(destination)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        library = getattr(self, "_library", None)
        return outputs + [library] if library and library not in outputs else outputs


class BinaryDistribution(Distribution):
    """The wheel carries a native library: tag it for this platform, not as pure Python."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": build_py_with_library}, distclass=BinaryDistribution)
