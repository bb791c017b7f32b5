"""Fixtures: a real dlockd for the whole run, unique object names, and child processes that are
always killed.

* dlockd is ``DLOCKD_BIN`` or the repository's ``target/debug/dlockd``; it runs on free
  127.0.0.1 ports with a temporary data directory, and ``DLOCK_ENDPOINTS`` (with a short
  ``DLOCK_SESSION_TTL_MS``) is set for this process and every child before any test runs.
* Unnamed and ``Local\\`` objects live in a namespace of this run's own (``DLOCK_LOCAL_DIR``
  is a temporary directory for this process and every child), never in ``/dev/shm``, where a
  segment of another build may be.
* The package under test is the installed ``dlock`` (``pip install ./python``). Without an
  install, the source tree is used with the repository's ``target/debug/libdlock.so``
  (``DLOCK_LIBRARY`` overrides, as always).
"""

import atexit
import os
import queue
import shutil
import tempfile
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

PYTHON_DIR = Path(__file__).resolve().parent.parent
REPO = PYTHON_DIR.parent

# The session TTL of every client (this process and its children): a child killed while it
# owns a mutex abandons it after this long. dlockd's minimum is 2500 ms.
SESSION_TTL_MS = 3000


def _find_package():
    try:
        import dlock  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(PYTHON_DIR))
        import dlock  # noqa: F401
    package_dir = Path(dlock.__file__).resolve().parent
    if not os.environ.get("DLOCK_LIBRARY") and not (package_dir / "libdlock.so").is_file():
        # The source tree, not an installed copy: use the library cargo built.
        os.environ["DLOCK_LIBRARY"] = str(REPO / "target" / "debug" / "libdlock.so")
    return package_dir


PACKAGE_DIR = _find_package()

# Before any dlock call: the local namespace is attached (and its directory read) at the first
# unnamed or Local\ object.
LOCAL_DIR = tempfile.mkdtemp(prefix="dlock-local-")
os.environ["DLOCK_LOCAL_DIR"] = LOCAL_DIR
atexit.register(shutil.rmtree, LOCAL_DIR, ignore_errors=True)


def child_env(**extra):
    """The environment of a child Python process: this one's (DLOCK_ENDPOINTS included), with
    the same dlock package importable."""
    env = dict(os.environ)
    paths = [str(PACKAGE_DIR.parent)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop(proc, grace=10):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)


@pytest.fixture(scope="session", autouse=True)
def dlockd(tmp_path_factory):
    """One dlockd node for the whole run; DLOCK_ENDPOINTS points at it."""
    binary = Path(os.environ.get("DLOCKD_BIN") or REPO / "target" / "debug" / "dlockd")
    if not binary.is_file():
        pytest.fail(
            f"no dlockd at {binary}: build it (cargo build --bin dlockd) or set DLOCKD_BIN",
            pytrace=False,
        )
    root = tmp_path_factory.mktemp("dlockd")
    # Mutual TLS, as a deployment would run it: every test below talks TLS with a client
    # certificate (DLOCK_CACERT, DLOCK_CERT, DLOCK_KEY, inherited by child processes).
    dlockctl = Path(os.environ.get("DLOCKCTL_BIN") or binary.parent / "dlockctl")
    if not dlockctl.is_file():
        pytest.fail(
            f"no dlockctl at {dlockctl}: build it (cargo build --bin dlockctl) or set DLOCKCTL_BIN",
            pytrace=False,
        )
    certs = root / "certs"
    subprocess.run(
        [str(dlockctl), "certs", "init", "--dir", str(certs), "--nodes", "1", "--clients", "py"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    tls_flags = [
        "--cert-file", str(certs / "node-1.pem"), "--key-file", str(certs / "node-1.key"),
        "--trusted-ca-file", str(certs / "ca.pem"), "--client-cert-auth",
    ]
    failures = []
    for attempt in range(3):
        client_port, peer_port = _free_port(), _free_port()
        data_dir = root / f"data{attempt}"
        log_path = root / f"dlockd{attempt}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [
                    str(binary),
                    "--data-dir", str(data_dir),
                    "--client-addr", f"127.0.0.1:{client_port}",
                    "--peer-addr", f"127.0.0.1:{peer_port}",
                    *tls_flags,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline and not _accepts(client_port):
            time.sleep(0.05)
        if proc.poll() is None and _accepts(client_port):
            break
        _stop(proc)
        failures.append(f"attempt {attempt + 1}: {log_path.read_text(errors='replace')[-2000:]}")
    else:
        pytest.fail("dlockd did not start:\n" + "\n".join(failures), pytrace=False)

    tls_env = {
        "DLOCK_CACERT": str(certs / "ca.pem"),
        "DLOCK_CERT": str(certs / "client-py.pem"),
        "DLOCK_KEY": str(certs / "client-py.key"),
    }
    saved = {
        k: os.environ.get(k)
        for k in ("DLOCK_ENDPOINTS", "DLOCK_SESSION_TTL_MS", *tls_env)
    }
    os.environ["DLOCK_ENDPOINTS"] = f"127.0.0.1:{client_port}"
    os.environ["DLOCK_SESSION_TTL_MS"] = str(SESSION_TTL_MS)
    os.environ.update(tls_env)
    try:
        yield {
            "endpoint": os.environ["DLOCK_ENDPOINTS"],
            "process": proc,
            "log": log_path,
            "tls": tls_env,
        }
    finally:
        _stop(proc)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def unique():
    """``unique()`` gives a fresh object name for each call."""
    return lambda prefix="py": f"{prefix}-{uuid.uuid4().hex}"


class Child:
    """A child process whose standard output is read line by line, with timeouts."""

    def __init__(self, args, env):
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines = queue.Queue()  # stdout lines, then None at its end
        self.stderr = []
        self.readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read_stdout(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))

    def readline(self, timeout=30):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from the child within {timeout} s; stderr: {self.stderr}")
        if line is None:
            raise AssertionError(
                f"the child closed its output (exit {self.proc.poll()}); stderr: {self.stderr}"
            )
        return line

    def send(self, text):
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def signal(self, signum):
        self.proc.send_signal(signum)

    def wait(self, timeout=30):
        return self.proc.wait(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        for reader in self.readers:
            reader.join(5)  # they end at the pipes' EOF
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass


@pytest.fixture
def spawn():
    """``spawn(args)`` starts a child (a Python script's arguments after the interpreter, or
    ``["-c", code, ...]``); every child is killed at the end of the test, pass or fail."""
    children = []

    def start(args, **extra_env):
        child = Child([sys.executable, *args], child_env(**extra_env))
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()

