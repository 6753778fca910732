"""
What every scenario shares: building the C load generator, starting servers
pinned to one core and load to the other, waiting for ports, and reading a
process's CPU time and memory from /proc.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BASELINES = BENCH / "baselines"
#: The source tree whose rawsvc runs (run.py --tree: another checkout, say main's, with this bench).
TREE = REPO

#: Cores: the server under test runs on SERVER_CPU, the load on LOAD_CPU.
SERVER_CPU = "0"
LOAD_CPU = "1"

NOFILE = 20000
CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_nofile(limit: int = NOFILE) -> int:
    """Raise RLIMIT_NOFILE as far as the hard limit allows; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_loadgen(workdir: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("bench: no C compiler (cc) on PATH; the load generator is C")
    out = workdir / "loadgen"
    subprocess.run([cc, "-O2", "-Wall", "-o", str(out), str(BENCH / "loadgen.c")], check=True)
    return out


def taskset(cpu: str) -> list[str]:
    return ["taskset", "-c", cpu] if shutil.which("taskset") else []


class Proc:
    """A server subprocess, pinned, with /proc readings."""

    def __init__(self, name: str, argv: list[str], workdir: Path, cpu: str = SERVER_CPU,
                 env: dict | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.out"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            taskset(cpu) + argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(cwd or workdir),
            preexec_fn=raise_nofile,  # taskset execs: the limit reaches the server
        )
        self.pid = self.popen.pid

    def status(self, key: str) -> int:
        """A kB figure from /proc/PID/status (VmRSS, VmHWM), in bytes."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    @property
    def rss(self) -> int:
        return self.status("VmRSS")

    @property
    def peak_rss(self) -> int:
        return self.status("VmHWM")

    def cpu_seconds(self) -> float:
        """User + system CPU time; a process that exited (socat) counts what waitpid reported."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError):
            return self._final_cpu

    _final_cpu = 0.0

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def listening(port: int) -> bool:
    """True when something listens on TCP C{port} (read from /proc/net/tcp*,
    so waiting never makes a connection: socat without C{fork} would take it
    as its one client, rawsvc would count it)."""
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[1].endswith(want) and fields[3] == "0A":
                        return True
        except OSError:
            continue
    return False


def wait_port(port: int, proc: Proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited before listening:\n{proc.tail()}")
        if listening(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not listen on {port} within {timeout:g} s:\n{proc.tail()}")


def twistd_path() -> str:
    candidate = Path(sys.executable).parent / "twistd"
    return str(candidate) if candidate.exists() else (shutil.which("twistd") or "twistd")


def python_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(TREE) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONDEVMODE", None)
    return env


def start_rawsvc(workdir: Path, name: str, config: str) -> Proc:
    """C{twistd -n rawsvc --config <tmp config>}, as the service really runs."""
    run_dir = workdir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = run_dir / "rawsvc.toml"
    cfg.write_text(config)
    argv = [twistd_path(), "-n", "--pidfile=", "--logfile", str(run_dir / "twistd.log"),
            "rawsvc", "--config", str(cfg)]
    wrapper = os.environ.get("BENCH_RAWSVC_WRAPPER")  # e.g. a profiler: "py-spy record -o f.svg --"
    if wrapper:
        argv = wrapper.split() + argv
    return Proc(name, argv, workdir, env=python_env(), cwd=run_dir)


def start_python_baseline(workdir: Path, name: str, script: str, *args: str) -> Proc:
    return Proc(name, [sys.executable, str(BASELINES / script), *map(str, args)], workdir)


def run_load(loadgen: Path, *args: object, timeout: float = 600.0) -> dict:
    """Run the load generator on the load core; its JSON result."""
    out = subprocess.run(
        taskset(LOAD_CPU) + [str(loadgen), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, preexec_fn=raise_nofile,
    )
    if out.returncode != 0:
        raise RuntimeError(f"loadgen {args[0]} failed ({out.returncode}): {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def core_times() -> dict[str, tuple[int, int]]:
    """Per core: (busy, total) jiffies from /proc/stat; busy counts irq and softirq."""
    cores = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *v = line.split()
                v = [int(x) for x in v[:8]]
                idle = v[3] + v[4]
                cores[name[3:]] = (sum(v) - idle, sum(v))
    return cores


def core_busy(before: dict, after: dict) -> dict[str, float]:
    out = {}
    for core, (b1, t1) in after.items():
        b0, t0 = before.get(core, (0, 0))
        out[core] = round((b1 - b0) / (t1 - t0), 3) if t1 > t0 else 0.0
    return out


def measured_load(server: Proc, loadgen: Path, warmup: float, *args: object, timeout: float = 600.0) -> dict:
    """
    Run the load generator and add the server's CPU use (busy fraction of
    its one core) over the measured window, so a table shows which side was
    the limit.
    """
    p = subprocess.Popen(
        taskset(LOAD_CPU) + [str(loadgen), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=raise_nofile,
    )
    time.sleep(warmup)
    c0, t0, k0 = server.cpu_seconds(), time.monotonic(), core_times()
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        raise
    c1, t1, k1 = server.cpu_seconds(), time.monotonic(), core_times()
    if p.returncode != 0:
        raise RuntimeError(f"loadgen {args[0]} failed ({p.returncode}): {err.strip()}")
    result = json.loads(out.strip().splitlines()[-1])
    result["server_cpu"] = round((c1 - c0) / (t1 - t0), 3)
    # CPU per job holds still on a noisy machine where jobs/s does not: the
    # server's CPU rate over the window times the loadgen's measured seconds,
    # over the jobs it finished in them.
    done = result.get("jobs") or result.get("messages")
    if done:
        result["server_cpu_us_per_job"] = round((c1 - c0) / (t1 - t0) * result["seconds"] / done * 1e6, 1)
    busy = core_busy(k0, k1)  # whole cores: kernel network work and other users' processes too
    result["server_core_busy"] = busy.get(SERVER_CPU)
    result["load_core_busy"] = busy.get(LOAD_CPU)
    return result
