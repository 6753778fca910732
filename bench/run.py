"""
rawsvc benchmarks, each scenario side by side with its baselines in one run.

    python bench/run.py [--duration S] [--json bench/results.json] [--only SCENARIO]

--tree DIR runs another checkout's rawsvc (a worktree of main, say) with
this bench, for before/after tables in one time window.

Scenarios: rt-eof, rt-line, relay, stream, idle, durable, durable-rt, cluster (see bench/scenarios/).
rawsvc runs as the real C{twistd -n rawsvc} subprocess pinned to core 0; the
load generator (bench/loadgen.c, compiled here with cc -O2 into a temporary
directory) runs on core 1.  Loopback only.  Prints a table and writes every
figure to the JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import build_loadgen, raise_nofile  # noqa: E402
from scenarios import cluster, durable, durable_rt, idle, nodered, relay, roundtrip, stream  # noqa: E402

SCENARIOS = {
    "rt-eof": lambda ctx: roundtrip.run(ctx, "eof"),
    "rt-line": lambda ctx: roundtrip.run(ctx, "line"),
    "relay": relay.run,
    "stream": stream.run,
    "idle": idle.run,
    "durable": durable.run,
    "durable-rt": durable_rt.run,
    "cluster": cluster.run,
}

MB = 1e6
MiB = 1 << 20


class Context:
    def __init__(self, args, workdir: Path, loadgen: Path) -> None:
        self.workdir = workdir
        self.loadgen = loadgen
        self.duration = args.duration
        self.warmup = args.warmup
        self.messages = args.messages
        self.relay_bytes = args.relay_mib * MiB
        self.idle = args.idle
        self.durable_jobs = args.durable_jobs


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def machine() -> dict:
    def out(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return ""

    import twisted

    return {
        "cpus": os.cpu_count(),
        "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), ""),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "node_red": nodered.version(),
        "socat": out("socat", "-V").splitlines()[1:2],
        "tree": str(harness.TREE),
        "commit": out("git", "-C", str(harness.TREE), "rev-parse", "--short", "HEAD"),
        "dirty": bool(out("git", "-C", str(harness.TREE), "status", "--porcelain", "--", "rawsvc")),
    }


# Table ------------------------------------------------------------------------

def _rate(r: dict, key: str, unit: str = "") -> str:
    if "skipped" in r:
        return "skipped: " + r["skipped"]
    if key not in r:
        return "-"
    return f"{r[key]:,.0f}{unit}"


def _mb(n) -> str:
    return f"{n / MB:.1f} MB" if n else "-"


def _cores(r: dict) -> str:
    if r.get("server_core_busy") is None:
        return "-"
    return f"{r['server_core_busy']:.0%} / {r['load_core_busy']:.0%}"


def _ratio(a, b):
    try:
        return a / b if b else None
    except TypeError:
        return None


def _x(ratio) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def table(results: dict) -> tuple[list[str], list[dict]]:
    lines: list[str] = []
    goals: list[dict] = []

    def row(*cells):
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")

    def goal(name, value, target, ok, fmt="{:.2f}x"):
        goals.append({"goal": name, "measured": value, "target": target,
                      "met": None if value is None else bool(ok)})

    for variant in ("rt-eof", "rt-line"):
        rt = results.get(variant)
        if not rt:
            continue
        lines.append("")
        label = "half-close, read to EOF" if variant == "rt-eof" else "1 KiB + \\n, read one line"
        lines.append(f"Round trip ({label}), 32 clients, 1 KiB jobs")
        lines.append("")
        row("server", "jobs/s", "vs bare", "p50 ms", "p99 ms", "errors", "server CPU", "CPU us/job",
            "CPU/job vs bare", "loadgen CPU", "core 0 / core 1 busy")
        row("---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:")
        bare = rt.get("twisted", {})
        for name, r in rt.items():
            if "skipped" in r:
                row(name, "skipped: " + r["skipped"], "", "", "", "", "", "", "", "", "")
                continue
            per_job = r.get("server_cpu_us_per_job")
            row(name, f"{r['jobs_per_s']:,.0f}", _x(_ratio(r["jobs_per_s"], bare.get("jobs_per_s"))),
                f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", r["errors"], f"{r['server_cpu']:.0%}",
                "-" if per_job is None else f"{per_job:,.1f}",
                _x(_ratio(per_job, bare.get("server_cpu_us_per_job"))), f"{r['loadgen_cpu']:.0%}", _cores(r))
        tw = _ratio(rt["rawsvc"].get("jobs_per_s"), bare.get("jobs_per_s"))
        goal(f"{variant}: rawsvc / bare Twisted jobs/s", tw, ">= 0.6 (aim 0.8)", tw is not None and tw >= 0.6)
        cpu = _ratio(rt["rawsvc"].get("server_cpu_us_per_job"), bare.get("server_cpu_us_per_job"))
        goal(f"{variant}: rawsvc / bare Twisted server CPU per job", cpu, "<= 1.7", cpu is not None and cpu <= 1.7)
        if "node-red" in rt:
            nr = _ratio(rt["rawsvc"].get("jobs_per_s"), rt["node-red"].get("jobs_per_s"))
            goal(f"{variant}: rawsvc / Node-RED jobs/s", nr, ">= 2", nr is not None and nr >= 2)

    rl = results.get("relay")
    if rl:
        lines.append("")
        size = next(iter(rl.values())).get("bytes", 0)
        lines.append(f"Relay: one {size / MiB:,.0f} MiB job to a discarding sink (socat: default options)")
        lines.append("")
        row("relay", "MB/s", "seconds", "peak RSS", "RSS at start", "server CPU", "sink got all")
        row("---", "---:", "---:", "---:", "---:", "---:", "---")
        for name, r in rl.items():
            if "skipped" in r:
                row(name, "skipped: " + r["skipped"], "", "", "", "", "")
                continue
            row(name, f"{r['mb_per_s']:,.0f}", f"{r['seconds']:.2f}", _mb(r["peak_rss"]), _mb(r["start_rss"]),
                f"{r['server_cpu']:.0%}", "yes" if r["complete"] else f"NO ({r['sink_received']:,} B)")
        ratio = _ratio(rl["rawsvc"].get("mb_per_s"), rl.get("socat", {}).get("mb_per_s"))
        goal("relay: rawsvc / socat MB/s", ratio, ">= 0.5", ratio is not None and ratio >= 0.5)
        peak = rl["rawsvc"].get("peak_rss")
        goals.append({"goal": "relay: rawsvc peak RSS (MB)", "measured": peak / MB if peak else None,
                      "target": "< 100", "met": bool(peak and peak < 100 * MB)})

    st = results.get("stream")
    if st:
        lines.append("")
        n = next(iter(st.values())).get("messages", 0)
        lines.append(f"Delimited stream: one connection, {n:,} x 100-byte lines, a one-action flow each")
        lines.append("")
        row("server", "messages/s", "seconds", "server CPU", "loadgen CPU", "core 0 / core 1 busy")
        row("---", "---:", "---:", "---:", "---:", "---:")
        for name, r in st.items():
            row(name, f"{r['messages_per_s']:,.0f}", f"{r['seconds']:.2f}", f"{r['server_cpu']:.0%}",
                f"{r['loadgen_cpu']:.0%}", _cores(r))
        goals.append({"goal": "stream: rawsvc messages/s", "measured": st["rawsvc"].get("messages_per_s"),
                      "target": "(no goal set)", "met": None})

    idl = results.get("idle")
    if idl:
        lines.append("")
        lines.append(f"Idle connections held open")
        lines.append("")
        row("server", "connections", "RSS", "RSS before", "per connection")
        row("---", "---:", "---:", "---:", "---:")
        for name, r in idl.items():
            row(name, f"{r['held_by_server']:,} of {r['connections']:,}", _mb(r["rss"]), _mb(r["rss_before"]),
                f"{r['per_connection_kb']:.1f} KiB")
        r = idl["rawsvc"]
        goals.append({"goal": f"idle: rawsvc RSS with {r['connections']:,} connections (MB)",
                      "measured": r["rss"] / MB, "target": "< 150",
                      "met": r["rss"] < 150 * MB and r["held_by_server"] >= r["connections"] >= 10000})

    du = results.get("durable")
    if du is not None:
        lines.append("")
        lines.append("Durable jobs (spool, fsync on) vs the same flow without the spool")
        lines.append("")
        if "pending" in du:
            lines.append(f"pending: {du['pending']}")
            goals.append({"goal": "durable / non-durable jobs/s", "measured": None, "target": ">= 0.7", "met": None})
        else:
            lines.append("```\n" + du.get("output", "").strip() + "\n```")
            ratio = du.get("ratio")
            goals.append({"goal": "durable / non-durable jobs/s", "measured": ratio, "target": ">= 0.7",
                          "met": None if ratio is None else ratio >= 0.7})

    drt = results.get("durable-rt")
    if drt:
        more, more_goals = durable_rt.table(drt)
        lines += more
        goals += more_goals

    cl = results.get("cluster")
    if cl:
        lines += cluster.table(cl)

    lines.append("")
    lines.append("Goals")
    lines.append("")
    row("goal", "measured", "target", "met")
    row("---", "---:", "---", "---")
    for g in goals:
        v = g["measured"]
        shown = "-" if v is None else (f"{v:.2f}" if isinstance(v, float) and v < 1000 else f"{v:,.0f}")
        row(g["goal"], shown, g["target"], {True: "yes", False: "**no**", None: "-"}[g["met"]])
    return lines, goals


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per round trip (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring (default 1)")
    p.add_argument("--json", default=str(Path(__file__).resolve().parent / "results.json"),
                   help="where to write the figures (default bench/results.json)")
    p.add_argument("--only", action="append", choices=list(SCENARIOS),
                   help="run only this scenario (repeatable)")
    p.add_argument("--messages", type=int, default=1_000_000, help="stream scenario messages (default 1,000,000)")
    p.add_argument("--relay-mib", type=int, default=1024, help="relay job size in MiB (default 1024)")
    p.add_argument("--idle", type=int, default=10_000, help="idle connections (default 10,000)")
    p.add_argument("--durable-jobs", type=int, default=20_000, help="jobs per mode in bench/spool_bench.py")
    p.add_argument("--tree", type=Path, help="run the rawsvc of this source tree (default: the one holding bench/)")
    args = p.parse_args(argv)
    if args.tree is not None:
        harness.TREE = args.tree.resolve()

    raise_nofile()
    started = time.time()
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_before": load_average(), "machine": machine(),
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "json"}, "results": {}}
    print(f"rawsvc bench: load average before {report['load_before']}; {report['machine']['cpus']} CPUs; "
          "server on core 0, load on core 1", flush=True)
    with tempfile.TemporaryDirectory(prefix="rawsvc-bench-") as tmp:
        workdir = Path(tmp)
        ctx = Context(args, workdir, build_loadgen(workdir))
        for name in args.only or list(SCENARIOS):
            print(f"  {name} ...", end=" ", flush=True)
            t0 = time.monotonic()
            try:
                report["results"][name] = SCENARIOS[name](ctx)
            except Exception as e:  # one broken scenario must not lose the others
                report["results"][name] = {"error": f"{type(e).__name__}: {e}"}
                print(f"failed: {e}", flush=True)
                continue
            print(f"{time.monotonic() - t0:.0f} s", flush=True)
    report["load_after"] = load_average()
    report["seconds"] = round(time.time() - started, 1)
    ok = {k: v for k, v in report["results"].items() if "error" not in v}
    lines, goals = table(ok)
    report["goals"] = goals
    print("\n".join(lines))
    print(f"\nload average before/after: {report['load_before']} / {report['load_after']}; "
          f"commit {report['machine']['commit']}{' (rawsvc/ modified)' if report['machine']['dirty'] else ''}")
    for name, r in report["results"].items():
        if "error" in r:
            print(f"{name}: ERROR {r['error']}")
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
