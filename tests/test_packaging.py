"""
Packaging: the wheel holds rawsvc and the twistd dropin (and no
twisted/__init__.py), and a non-editable install gives a working
``rawsvc`` command and ``twistd rawsvc``, run here as real subprocesses.

How the install is made, and why:

- The working tree is copied to a temporary directory first, because
  setuptools writes build/ and *.egg-info/ into the source tree and other
  people work in it.
- ``pip wheel --no-deps`` builds the wheel exactly as ``pip install .``
  would.  Build isolation is switched off when the test interpreter
  already has a setuptools that can build it (>= 68, plus ``wheel`` before
  70.1), so the test runs offline; otherwise pip fetches the build backend,
  as ``pip install .`` would.
- The venv is made with ``python -m venv --without-pip`` (instant) and
  given a ``.pth`` line naming the test interpreter's site-packages, so
  Twisted and the other dependencies import without being downloaded and
  installed again (30-60 s, and network).  A plain path line does not run
  that directory's own ``.pth`` files, so an editable rawsvc there stays
  invisible; the venv's own site-packages comes first on ``sys.path``, so
  its rawsvc and its ``twisted/plugins/rawsvc_plugin.py`` win over any
  installed in the test interpreter (a test checks which one is imported).
- The wheel goes in with the test interpreter's pip, ``--python`` pointing
  at the venv, so the console script's shebang is the venv's python.
- Twisted itself is not installed in the venv, so there is no
  ``bin/twistd``; the fixture writes the same three-line launcher pip
  writes for Twisted's ``twistd = twisted.scripts.twistd:run``.
- pip builds no ``dropin.cache``: the fixture regenerates it with
  ``rawsvc plugin-cache`` (getPlugins) as the README tells users to.

All of this is done once per module.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import zipfile

import pytest

from rawsvc import __version__

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_CONFIG = os.path.join(ROOT, "etc", "rawsvc.toml")
IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "var", "*.egg-info", "__pycache__", "*.pyc",
    "dropin.cache", ".pytest_cache", ".hypothesis", "bench",
)


def _can_build_offline() -> bool:
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    major_minor = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    if major_minor < (68, 0):
        return False
    if major_minor >= (70, 1):
        return True
    try:
        importlib.metadata.version("wheel")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 300), **kw)
    if result.returncode != 0:
        pytest.fail(f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _clean_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(base / "out"), str(src)]
    if _can_build_offline():
        cmd.insert(4, "--no-build-isolation")
    _run(cmd, env=_clean_env())
    [name] = os.listdir(base / "out")
    return str(base / "out" / name)


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("venv")
    env_dir = root / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)])
    python = str(env_dir / "bin" / "python")
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    runner_paths = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    with open(os.path.join(site, "_test_runner_site.pth"), "w") as f:
        f.write("".join(p + "\n" for p in runner_paths))
    # --ignore-installed: the .pth above also shows the runner's own rawsvc
    # (CI installs it), which pip would otherwise call "already satisfied".
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--ignore-installed", "-q", wheel],
         env=_clean_env())
    twistd = env_dir / "bin" / "twistd"
    twistd.write_text(f"#!{python}\nimport sys\nfrom twisted.scripts.twistd import run\nsys.exit(run())\n")
    twistd.chmod(0o755)
    work = root / "work"  # the subprocesses' cwd: no rawsvc/ or twisted/ here
    work.mkdir()
    cache = _run([str(env_dir / "bin" / "rawsvc"), "plugin-cache"], cwd=work, env=_clean_env())
    return {
        "python": python,
        "site": site,
        "bin": str(env_dir / "bin"),
        "work": str(work),
        "plugin_cache_output": cache.stdout,
    }


def run_in(venv, *cmd, **kw) -> subprocess.CompletedProcess:
    exe = os.path.join(venv["bin"], cmd[0])
    return subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, cwd=venv["work"],
                          env=_clean_env(), timeout=kw.pop("timeout", 60), **kw)


# The wheel --------------------------------------------------------------------


def wheel_names(wheel: str) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def test_wheel_holds_the_twistd_dropin(wheel):
    assert "twisted/plugins/rawsvc_plugin.py" in wheel_names(wheel)


def test_wheel_holds_no_twisted_init(wheel):
    names = wheel_names(wheel)
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert {n for n in names if n.startswith("twisted/")} == {"twisted/plugins/rawsvc_plugin.py"}


def test_wheel_holds_no_plugin_cache_and_no_tests(wheel):
    names = wheel_names(wheel)
    assert not any(n.endswith("dropin.cache") for n in names)
    assert not any(n.startswith("tests/") for n in names)


def test_wheel_holds_every_rawsvc_module(wheel):
    """Every module of the source tree (packages are listed by hand in pyproject.toml)."""
    names = wheel_names(wheel)
    missing = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, "rawsvc")):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in filenames:
            if f.endswith(".py") or f == "py.typed":
                rel = os.path.relpath(os.path.join(dirpath, f), ROOT).replace(os.sep, "/")
                if rel not in names:
                    missing.append(rel)
    assert missing == []


def test_wheel_declares_the_rawsvc_console_script(wheel):
    with zipfile.ZipFile(wheel) as z:
        [ep] = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = z.read(ep).decode()
    assert re.search(r"^\[console_scripts\]\s*\nrawsvc = rawsvc\.cli:main", text, re.M)


# The installed package ----------------------------------------------------------


def _installed_sites(venv) -> list[str]:
    """
    Where an installed (non-editable) rawsvc may be found: the venv's own
    site-packages, or, where the test runner itself has rawsvc installed
    from a wheel (CI: pip install '.[test]'), the runner's, which the venv
    sees through its .pth line and which Twisted's plugin package (the
    runner's) searches first.  Never the source tree.
    """
    return [venv["site"], sysconfig.get_path("purelib")]


def test_installed_package_is_the_one_imported(venv):
    result = run_in(venv, "python", "-c",
                    "import rawsvc, twisted.plugins.rawsvc_plugin as p; print(rawsvc.__file__); print(p.__file__)")
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        assert line.startswith(tuple(_installed_sites(venv))), line
        source_tree = (os.path.join(ROOT, "rawsvc") + os.sep, os.path.join(ROOT, "twisted") + os.sep)
        assert not line.startswith(source_tree), line


def test_plugin_cache_is_regenerated_after_install(venv):
    assert "rawsvc" in venv["plugin_cache_output"]
    caches = [os.path.join(site, "twisted", "plugins", "dropin.cache") for site in _installed_sites(venv)]
    assert any(os.path.exists(c) for c in caches), caches


def test_installed_twistd_help_lists_rawsvc(venv):
    result = run_in(venv, "twistd", "--help")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\s+rawsvc\s+Raw TCP/IP device and print integration service$", result.stdout, re.M)


def test_installed_rawsvc_version(venv):
    result = run_in(venv, "rawsvc", "--version")
    assert (result.returncode, result.stdout) == (0, f"rawsvc {__version__}\n")


def test_installed_twistd_rawsvc_version(venv):
    result = run_in(venv, "twistd", "rawsvc", "--version")
    assert (result.returncode, result.stdout) == (0, f"rawsvc {__version__}\n")


_ONE_TRIGGER = '[[trigger]]\nname = "t"\ntype = "tcp"\nlisten = "tcp:0:interface=127.0.0.1"\nflow = "f"\n'


def test_installed_rawsvc_check_config(venv, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(_ONE_TRIGGER + '[[flow]]\nname = "f"\nactions = [ { type = "log" } ]\n')
    result = run_in(venv, "rawsvc", "check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert "1 flow(s) [f]" in result.stdout


# twistd rawsvc as a real process ----------------------------------------------------


class Daemon:
    """A twistd process whose combined output is collected by a thread."""

    def __init__(self, venv, *args: str) -> None:
        self.proc = subprocess.Popen(
            [os.path.join(venv["bin"], "twistd"), "-n", "--pidfile=", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            cwd=venv["work"], env=_clean_env(),
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.output)
            if m:
                return m
            if self.proc.poll() is not None:
                self._reader.join(5)
                m = re.search(pattern, self.output)
                if m:
                    return m
                pytest.fail(f"twistd exited {self.proc.returncode} before {pattern!r}:\n{self.output}")
            time.sleep(0.05)
        pytest.fail(f"no {pattern!r} within {timeout} s:\n{self.output}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return code


@pytest.fixture
def daemon(venv):
    started: list[Daemon] = []

    def start(*args: str) -> Daemon:
        d = Daemon(venv, *args)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def _exited_cleanly(code: int) -> bool:
    # twistd's own status after SIGTERM: 0, or death by the same signal,
    # which newer twistd re-raises so the parent sees how it stopped.
    return code in (0, -signal.SIGTERM)


def test_twistd_rawsvc_starts_logs_triggers_and_flows_and_stops_on_sigterm(daemon, tmp_path):
    config = tmp_path / "rawsvc.toml"
    config.write_text(
        f'[service]\nstate_dir = "{tmp_path / "state"}"\n'
        '[[trigger]]\nname = "orders"\ntype = "tcp"\nlisten = "tcp:0:interface=127.0.0.1"\n'
        'flow = "archive"\n'
        f'[[flow]]\nname = "archive"\nactions = [ {{ type = "file", folder = "{tmp_path / "jobs"}" }} ]\n'
    )
    d = daemon("rawsvc", "--config", str(config))
    d.wait_for(r"rawsvc starting: triggers orders \(tcp\); flows archive")
    code = d.stop()
    assert _exited_cleanly(code), (code, d.output)
    assert "Traceback" not in d.output
    assert "rawsvc stopped" in d.output


def test_installed_service_archives_a_job_sent_over_tcp(daemon, tmp_path):
    import socket

    jobs = tmp_path / "jobs"
    config = tmp_path / "rawsvc.toml"
    config.write_text(
        f'[service]\nstate_dir = "{tmp_path / "state"}"\n'
        '[[trigger]]\nname = "in"\ntype = "tcp"\nlisten = "tcp:0:interface=127.0.0.1"\nflow = "archive"\n'
        f'[[flow]]\nname = "archive"\nactions = [ {{ type = "file", folder = "{jobs}", name = "${{trigger}}.prn" }} ]\n'
    )
    d = daemon("rawsvc", "--config", str(config))
    port = int(d.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"^XA^FDhello^FS^XZ")
        s.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + 20
    while not (jobs / "in.prn").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (jobs / "in.prn").read_bytes() == b"^XA^FDhello^FS^XZ"
    assert _exited_cleanly(d.stop()), d.output
    assert "Traceback" not in d.output


def test_twistd_rawsvc_refuses_a_config_with_no_trigger(daemon, tmp_path):
    config = tmp_path / "rawsvc.toml"
    config.write_text(f'[service]\nstate_dir = "{tmp_path / "state"}"\n'
                      '[[flow]]\nname = "f"\nactions = [ { type = "log" } ]\n')
    d = daemon("rawsvc", "--config", str(config))
    code = d.proc.wait(60)
    d._reader.join(5)
    assert code == 1
    assert f"{config}: top level: the config defines no [[trigger]]; rawsvc would do nothing" in d.output
    assert "Traceback" not in d.output
    assert not (tmp_path / "state").exists()


@pytest.mark.skipif(not os.path.exists(SHIPPED_CONFIG), reason="etc/rawsvc.toml is not written yet")
def test_twistd_rawsvc_runs_the_shipped_config(daemon, tmp_path):
    """etc/rawsvc.toml, with every port made 0 and the state in tmp_path."""
    text = open(SHIPPED_CONFIG).read()
    text = re.sub(r'"(tcp|udp):\d+', r'"\1:0', text)
    text = re.sub(r'(?m)^state_dir = "[^"]*"', f'state_dir = "{tmp_path / "state"}"', text)
    text = text.replace('"var/', f'"{tmp_path}/var/').replace('"etc/', f'"{ROOT}/etc/')
    config = tmp_path / "rawsvc.toml"
    config.write_text(text)
    d = daemon("rawsvc", "--config", str(config))
    d.wait_for(r"rawsvc starting: triggers \S")
    code = d.stop()
    assert _exited_cleanly(code), (code, d.output)
    assert "Traceback" not in d.output


def test_twistd_rawsvc_refuses_a_bad_config_without_traceback(daemon, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[service]\nhistroy = 1\n' + _ONE_TRIGGER + '[[flow]]\nname = "f"\nactions = [ { type = "nope" } ]\n')
    d = daemon("rawsvc", "--config", str(config))
    code = d.proc.wait(60)
    d._reader.join(5)
    assert code != 0
    assert "Traceback" not in d.output
    assert "the config has 2 error(s); not starting" in d.output
    assert f"{config}: [service]: key 'histroy': unknown key" in d.output
    assert f"{config}: [[flow]] 'f' actions[0] (nope): key 'type': unknown action type 'nope'" in d.output


def test_twistd_rawsvc_refuses_a_missing_config_without_traceback(daemon, tmp_path):
    d = daemon("rawsvc", "--config", str(tmp_path / "absent.toml"))
    code = d.proc.wait(60)
    d._reader.join(5)
    assert code != 0
    assert "Traceback" not in d.output
    assert "cannot read config" in d.output
