"""Medians over runs, the markdown table and the plots of `make bench`."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from mesh import servers

Record = dict[str, Any]
BENCH = Path(__file__).resolve().parent
STACK_ORDER = ["chat-mesh", "python-socketio", "node-socketio"]


def ordered_stacks(rows: list[dict[str, Any]]) -> list[str]:
    """The stacks in these rows: STACK_ORDER's first, then any other (`--store-in-memory`,
    `running`) in the order met."""
    names = list(dict.fromkeys(str(r["stack"]) for r in rows))
    return sorted(names, key=lambda s: STACK_ORDER.index(s) if s in STACK_ORDER else 99)


LINEAR_SHAPES = ["base", "clients_x2", "rooms_x2", "ratios"]


def _cmd_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def _lock_version(folder: Path, package: str) -> str:
    try:
        lock = json.loads((folder / "package-lock.json").read_text())
        return str(lock["packages"][f"node_modules/{package}"]["version"])
    except (OSError, KeyError, ValueError):
        return "?"


def machine(quick: bool, runs: int, started: float, config: dict[str, Any]) -> dict[str, Any]:
    cpu_model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    bindir = Path(sys.executable).parent
    versions = {
        "python": platform.python_version(),
        "node": _cmd_version([shutil.which("node") or "node", "--version"]),
        "nats-server": _cmd_version([str(bindir / "nats-server"), "--version"]),
        "redis-server": _cmd_version([str(bindir / "redis-server"), "--version"]),
        "dynalite": _lock_version(BENCH.parent / "compose", "dynalite"),
        "socket.io (node)": _lock_version(BENCH / "peers" / "node", "socket.io"),
        "@socket.io/redis-adapter": _lock_version(
            BENCH / "peers" / "node", "@socket.io/redis-adapter"
        ),
        "ws (load generator)": _lock_version(BENCH / "loadgen", "ws"),
    }
    for pkg in ("python-socketio", "python-engineio", "uvicorn", "websockets", "uvloop", "nats-py"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "?"
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "mode": "quick" if quick else "full",
        "runs": runs,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "minutes": round((time.time() - started) / 60, 1),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
        # every stack's servers are started by mesh.servers.spawn, under the same policy
        "scheduling": "SCHED_BATCH" if servers.batch_scheduling() else "default",
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in config.items()},
    }


# ---- medians -------------------------------------------------------------------------------


def _key(r: Record) -> tuple[str, str, Any]:
    if r["scenario"] == "fanout":
        step = r.get("offered_rate")
    elif r["scenario"] == "linear":
        step = r.get("shape")
    else:
        step = r.get("index")
    return (r["stack"], r["scenario"], step)


def _order(r: Record) -> tuple[int, str, float]:
    """Stacks in STACK_ORDER, fan-out steps by rate, linear shapes base -> doubled -> ratios."""
    stack = STACK_ORDER.index(r["stack"]) if r["stack"] in STACK_ORDER else 9
    if r["scenario"] == "linear" and r.get("shape") in LINEAR_SHAPES:
        within = float(LINEAR_SHAPES.index(r["shape"]))
    else:
        within = float(r.get("offered_rate") or 0)
    return (stack, r["scenario"], within)


def _median(values: list[Any]) -> Any:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    if all(isinstance(v, bool) for v in vals):
        return sum(vals) * 2 >= len(vals)
    if all(isinstance(v, int | float) for v in vals):
        return statistics.median(vals)
    if all(isinstance(v, dict) for v in vals):
        keys = {k for v in vals for k in v}
        return {k: _median([v.get(k) for v in vals]) for k in sorted(keys)}
    return vals[0]


def aggregate(raw: list[Record]) -> list[Record]:
    """One record per (stack, scenario, step): the median of every figure and its min/max."""
    groups: dict[tuple[str, str, Any], list[Record]] = {}
    for r in raw:
        if "error" in r:
            continue
        groups.setdefault(_key(r), []).append(r)
    out: list[Record] = []
    for (stack, scenario, _), recs in groups.items():
        keys = {k for r in recs for k in r} - {"run", "stack", "scenario"}
        med: Record = {"stack": stack, "scenario": scenario, "runs": len(recs)}
        spread: dict[str, list[float]] = {}
        for k in sorted(keys):
            vals = [r.get(k) for r in recs]
            med[k] = _median(vals)
            nums = [v for v in vals if isinstance(v, int | float) and not isinstance(v, bool)]
            if len(nums) > 1:
                spread[k] = [min(nums), max(nums)]
        med["spread"] = spread
        med["passes"] = sum(1 for r in recs if r.get("pass"))
        out.append(med)
    out.sort(key=_order)
    return out


# ---- table ---------------------------------------------------------------------------------


def _f(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int | float):
        return f"{v:,.{digits}f}"
    return str(v)


def _fs(r: Record, key: str, digits: int = 0) -> str:
    """The median, with (min-max) over runs when there were several."""
    text = _f(r.get(key), digits)
    sp = r.get("spread", {}).get(key)
    if sp and sp[0] != sp[1]:
        text += f" ({_f(sp[0], digits)}-{_f(sp[1], digits)})"
    return text


def _procs(r: Record) -> str:
    cpu = r.get("cpu_pct") or {}
    mem = r.get("peak_rss_mb") or {}
    return ", ".join(f"{n} {cpu[n]:.0f}%/{mem.get(n, 0):.0f}MB" for n in cpu if cpu[n] is not None)


def best_per_run(raw: list[Record], stack: str) -> list[float]:
    """Each run's highest passing fan-out step (0 when none passed)."""
    runs = sorted({r["run"] for r in raw if r["stack"] == stack and r["scenario"] == "fanout"})
    return [
        max(
            (
                r["offered_rate"]
                for r in raw
                if r["stack"] == stack
                and r["scenario"] == "fanout"
                and r["run"] == run
                and r.get("pass")
            ),
            default=0,
        )
        for run in runs
    ]


def best_fanout(agg: list[Record], raw: list[Record], stack: str) -> Record | None:
    """The step at the median of the runs' best passing steps."""
    bests = best_per_run(raw, stack)
    if not bests or statistics.median_low(bests) == 0:
        return None
    rate = statistics.median_low(bests)
    for r in agg:
        if r["stack"] == stack and r["scenario"] == "fanout" and r["offered_rate"] == rate:
            return r
    return None


def table(agg: list[Record], raw: list[Record], meta: dict[str, Any]) -> str:
    v = meta["versions"]
    lines = [
        "# make bench results",
        "",
        f"Machine: {meta['cores']} cores ({meta['cpu']}), {meta['memory_gb']} GB, {meta['os']}. "
        f"Mode: {meta['mode']}, {meta['runs']} run(s) per figure (median, with (min-max) over "
        f"runs), started {meta['started']}, {meta['minutes']} min. Load average at the end: "
        f"{meta['load_average_at_end']}. The load generator runs on the same cores. "
        f"Every stack's server processes run under the {meta.get('scheduling', 'default')} "
        "scheduling policy (CHAT_SCHED_BATCH), the load generator under the default one.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
    ]
    stacks = ordered_stacks(agg)
    fan = [r for r in agg if r["scenario"] == "fanout"]
    if fan:
        cfg = meta["config"]
        lines += [
            f"## Fan-out ({cfg['clients']} clients, rooms of {cfg['room_size']} over both nodes, "
            f"{cfg['step_seconds']} s per step; pass = no loss and p99 < {cfg['max_p99_ms']} ms)",
            "",
            "Best passing step: the median of each run's highest passing step (each run's "
            "in brackets); its figures are the medians over the runs that ran that step.",
            "",
            "| stack | best passing step (msg/s) | delivered frames/s | p50 ms | p99 ms | "
            "server CPU us/frame |",
            "|---|---|---|---|---|---|",
        ]
        for s in stacks:
            b = best_fanout(agg, raw, s)
            per_run = ", ".join(_f(x) for x in best_per_run(raw, s))
            if b is None:
                lines.append(f"| {s} | none ({per_run}) | - | - | - | - |")
            else:
                lines.append(
                    f"| {s} | {_f(b['offered_rate'])} ({per_run}) | {_fs(b, 'delivered_fps')} | "
                    f"{_fs(b, 'p50_ms', 1)} | {_fs(b, 'p99_ms', 1)} | "
                    f"{_fs(b, 'server_cpu_us_per_frame')} |"
                )
        lines += [
            "",
            "Every step (CPU % is of one core; the machine has "
            f"{meta['cores'] * 100}%. Others' CPU % is what the rest of the machine used meanwhile:"
            " other users' processes and the bench orchestrator):",
            "",
            "| stack | offered msg/s | sent | delivered frames/s | lost | dup | out of order | "
            "p50 | p95 | p99 | max ms | server CPU % | us/frame | loadgen CPU % / ELU | "
            "others' CPU % | passed (runs) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in fan:
            bound = " load-bound" if r.get("load_bound") else ""
            lines.append(
                f"| {r['stack']} | {_f(r['offered_rate'])} | {_fs(r, 'sent')} | "
                f"{_fs(r, 'delivered_fps')} | {_fs(r, 'lost')} | {_f(r.get('duplicated'))} | "
                f"{_f(r.get('out_of_order'))} | {_fs(r, 'p50_ms', 1)} | {_fs(r, 'p95_ms', 1)} | "
                f"{_fs(r, 'p99_ms', 1)} | {_fs(r, 'max_ms', 1)} | {_fs(r, 'server_cpu_pct')} | "
                f"{_fs(r, 'server_cpu_us_per_frame')} | {_f(r.get('loadgen_cpu_pct'))} / "
                f"{_f(r.get('loadgen_elu'), 2)}{bound} | {_fs(r, 'other_cpu_pct')} | "
                f"{r.get('passes', 0)}/{r['runs']} |"
            )
        late = [r for r in raw if r.get("scenario") == "fanout" and "arrived_after_drain" in r]
        if late:
            lines += [
                "",
                'Failing steps\' "lost" frames, followed up (listening until 5 s pass without a '
                "frame): arrived late, or never delivered:",
                "",
            ]
            for r in late:
                lines.append(
                    f"- {r['stack']} at {_f(r['offered_rate'])} msg/s (run {r['run'] + 1}): "
                    f"{_f(r['lost'])} not within the step; {_f(r['arrived_after_drain'])} arrived "
                    f"later, {_f(r['never_delivered'])} never, "
                    f"{_f(r.get('duplicated_after_drain'))} duplicated"
                )
        lines += ["", "CPU % and peak RSS of every process at each stack's last step run:", ""]
        for s in stacks:
            steps = [r for r in fan if r["stack"] == s]
            if steps:
                last = steps[-1]
                lines.append(f"- {s} at {_f(last['offered_rate'])} msg/s: {_procs(last)}")
        lines.append("")
    lat = [r for r in agg if r["scenario"] == "latency"]
    if lat:
        cfg = meta["config"]
        lines += [
            f"## Latency ({cfg['latency_clients']} clients, rooms of 2 across the nodes, "
            f"{cfg['latency_rate']} msg/s, {cfg['latency_seconds']} s)",
            "",
            "| stack | p50 ms | p95 ms | p99 ms | max ms | lost | server CPU % |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in lat:
            lines.append(
                f"| {r['stack']} | {_fs(r, 'p50_ms', 1)} | {_fs(r, 'p95_ms', 1)} | "
                f"{_fs(r, 'p99_ms', 1)} | {_fs(r, 'max_ms', 1)} | {_f(r.get('lost'))} | "
                f"{_fs(r, 'server_cpu_pct')} |"
            )
        lines.append("")
    idle = [r for r in agg if r["scenario"] == "idle"]
    if idle:
        lines += [
            "## Idle connections (held open across both edge nodes)",
            "",
            "| stack | connections | connected | connect time s | KB per connection per edge "
            "(mean) | per edge node | edge RSS after, MB | server CPU holding them, % of a core "
            "(busiest) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in idle:
            per = ", ".join(f"{k} {v:.1f}" for k, v in (r.get("kb_per_connection") or {}).items())
            after = ", ".join(f"{k} {v:.0f}" for k, v in (r.get("edge_rss_after_mb") or {}).items())
            held = r.get("hold_cpu_pct") or {}
            busiest = ", ".join(
                f"{k} {v:.1f}" for k, v in sorted(held.items(), key=lambda kv: -kv[1])[:3]
            )
            lines.append(
                f"| {r['stack']} | {_f(r.get('connections'))} | {_fs(r, 'connected')} | "
                f"{_fs(r, 'connect_seconds', 1)} | {_fs(r, 'kb_per_connection_mean', 1)} | "
                f"{per} | {after} | {_fs(r, 'hold_server_cpu_pct', 1)} ({busiest}) |"
            )
        lines.append("")
    lines += linear_table(agg, raw, meta)
    hist = [r for r in agg if r["scenario"] == "history"]
    if hist:
        lines += ["## History (chat-mesh only: the peers keep no history)", ""]
        for r in hist:
            if r.get("kind") == "pages":
                lines.append(
                    f"- pages of {r['limit']} (`?before=`), {r['readers']} concurrent readers, "
                    f"{_f(r.get('messages_stored'))} messages stored: "
                    f"{_fs(r, 'requests_per_s')} requests/s, p50 {_fs(r, 'p50_ms', 1)} ms, "
                    f"p99 {_fs(r, 'p99_ms', 1)} ms, errors {_f(r.get('errors'))}; {_procs(r)}"
                )
            elif r.get("kind") == "sync":
                lines.append(
                    f"- sync after reconnect: {_f(r.get('clients'))} clients at once, each "
                    f"{r['missed_per_client']} messages behind: all synced in "
                    f"{_fs(r, 'seconds', 2)} s ({_f(r.get('synced'))} synced, "
                    f"{_f(r.get('failed'))} failed), {_fs(r, 'replayed_frames')} frames "
                    f"replayed, per client p50 {_fs(r, 'p50_ms', 0)} ms, p99 {_fs(r, 'p99_ms', 0)}"
                    f" ms; {_procs(r)}"
                )
        lines.append("")
    ing = [r for r in agg if r["scenario"] == "ingest"]
    if ing:
        lines += [
            "## Ingest (chat-mesh only)",
            "",
            "| offered msg/s | stored msg/s | store ceiling: conditional PutItem/s "
            "(concurrency) | stored / ceiling | processes |",
            "|---|---|---|---|---|",
        ]
        for r in ing:
            lines.append(
                f"| {_f(r.get('offered_rate'))} | {_fs(r, 'stored_per_s')} | "
                f"{_fs(r, 'ceiling_puts_per_s')} ({_f(r.get('ceiling_concurrency'))}) | "
                f"{_fs(r, 'ratio_to_ceiling', 2)} | {_procs(r)} |"
            )
        lines.append("")
    lines += hops_table(agg)
    return "\n".join(lines) + "\n"


def hops_table(agg: list[Record]) -> list[str]:
    """One row per hop: its round trip one at a time, spaced and back to back."""
    rows: dict[tuple[str, str], dict[str, Record]] = {}
    for r in agg:
        if r["scenario"] == "hops" and "hop" in r:
            rows.setdefault((r["hop"], r["what"]), {})[r["mode"]] = r
    if not rows:
        return []
    lines = [
        "## Hops (chat-mesh: one round trip at a time, from the bench process)",
        "",
        "Spaced: 10 ms of quiet before each (the processes asleep, as at the latency "
        "scenario's rate); back to back: the next as soon as the last is answered.",
        "",
        "| hop | round trip | spaced p50 / p99 ms | back to back p50 / p99 ms |",
        "|---|---|---|---|",
    ]
    for (hop, what), modes in rows.items():
        cells = []
        for mode in ("spaced", "back-to-back"):
            m = modes.get(mode)
            cells.append(f"{_fs(m, 'p50_ms', 2)} / {_fs(m, 'p99_ms', 2)}" if m else "-")
        lines.append(f"| {hop} | {what} | {cells[0]} | {cells[1]} |")
    lines.append("")
    return lines


def linear_table(agg: list[Record], raw: list[Record], meta: dict[str, Any]) -> list[str]:
    """The "Linear cost" table, one row per stack (CPU ratios), then every shape's figures."""
    lin = [r for r in agg if r["scenario"] == "linear"]
    if not lin:
        return []
    cfg = meta["config"]
    c, size, rate = cfg["linear_clients"], cfg["linear_room_size"], cfg["linear_rate"]
    lines = [
        f"## Linear cost (fan-out at {rate} msg/s per client, {cfg['step_seconds']} s per shape)",
        "",
        f"Base: {c:,} clients in {c // size:,} rooms of {size}. Clients x2: {2 * c:,} clients in "
        f"{2 * c // size:,} rooms of {size} (against the base). Rooms x2: {2 * c:,} clients in "
        f"{4 * c // size:,} rooms of {size // 2} (against clients x2: the same clients and "
        "messages/s, twice the rooms, half the frames). CPU = seconds of every server process "
        "over the step and its drain (equal windows); linear = CPU ratio <= 2. A ratio is valid "
        "when both shapes passed (no loss, p99 under the limit) and were not load-bound.",
        "",
        "| stack | base CPU s | clients x2 CPU s | CPU ratio | frames ratio | linear (runs) | "
        "rooms x2 CPU s | CPU ratio | frames ratio | linear (runs) | valid (runs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in ordered_stacks(lin):
        shapes = {r["shape"]: r for r in lin if r["stack"] == s}
        if "ratios" not in shapes:
            continue
        ratio = shapes["ratios"]
        runs = [r for r in raw if r["stack"] == s and r.get("shape") == "ratios"]
        verdict = {
            name: f"{_f(ratio.get(f'{name}_linear'))} "
            f"({sum(1 for r in runs if r.get(f'{name}_linear'))}/{len(runs)})"
            for name in ("clients", "rooms")
        }
        valid = sum(1 for r in runs if r.get("clients_valid") and r.get("rooms_valid"))
        cpu = [_fs(shapes[k], "server_cpu_s", 1) if k in shapes else "-" for k in LINEAR_SHAPES]
        lines.append(
            f"| {s} | {cpu[0]} | {cpu[1]} | {_fs(ratio, 'clients_cpu_ratio', 2)} | "
            f"{_fs(ratio, 'clients_frames_ratio', 2)} | {verdict['clients']} | {cpu[2]} | "
            f"{_fs(ratio, 'rooms_cpu_ratio', 2)} | {_fs(ratio, 'rooms_frames_ratio', 2)} | "
            f"{verdict['rooms']} | {valid}/{len(runs)} |"
        )
    lines += [
        "",
        "Every shape (CPU % of one core; others' CPU % as in the fan-out table):",
        "",
        "| stack | shape | clients | rooms x size | offered msg/s | sent | delivered frames/s | "
        "lost | dup | p50 ms | p99 ms | server CPU s | server CPU % | us/frame | others' CPU % | "
        "loadgen ELU | passed (runs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in lin:
        if r.get("kind") != "shape":
            continue
        bound = " load-bound" if r.get("load_bound") else ""
        lines.append(
            f"| {r['stack']} | {r['shape']} | {_f(r.get('clients'))} | {_f(r.get('rooms'))} x "
            f"{_f(r.get('room_size'))} | {_f(r.get('offered_rate'))} | {_fs(r, 'sent')} | "
            f"{_fs(r, 'delivered_fps')} | {_fs(r, 'lost')} | {_f(r.get('duplicated'))} | "
            f"{_fs(r, 'p50_ms', 1)} | {_fs(r, 'p99_ms', 1)} | {_fs(r, 'server_cpu_s', 1)} | "
            f"{_fs(r, 'server_cpu_pct')} | {_fs(r, 'server_cpu_us_per_frame')} | "
            f"{_fs(r, 'other_cpu_pct')} | {_f(r.get('loadgen_elu'), 2)}{bound} | "
            f"{r.get('passes', 0)}/{r['runs']} |"
        )
    lines.append("")
    return lines


# ---- plots ---------------------------------------------------------------------------------


def plots(agg: list[Record], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fan = [r for r in agg if r["scenario"] == "fanout"]
    if not fan:
        return []
    stacks = ordered_stacks(fan)
    written = []
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=90)
    for s in stacks:
        rs = [r for r in fan if r["stack"] == s]
        ax.plot(
            [r["offered_rate"] for r in rs], [r["delivered_fps"] for r in rs], marker="o", label=s
        )
    ax.set_xlabel("offered rate (messages/s)")
    ax.set_ylabel("delivered frames/s")
    ax.set_title("Fan-out: delivered frames/s (median of runs)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / "fanout_throughput.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=90)
    for i, s in enumerate(stacks):
        rs = [r for r in fan if r["stack"] == s]
        color = f"C{i}"
        x = [r["offered_rate"] for r in rs]
        ax.plot(x, [r["p50_ms"] for r in rs], marker="o", color=color, label=f"{s} p50")
        ax.plot(x, [r["p99_ms"] for r in rs], marker="^", ls="--", color=color, label=f"{s} p99")
    ax.axhline(100, color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (messages/s)")
    ax.set_ylabel("latency, ms (log)")
    ax.set_title("Fan-out: send-to-receive latency (median of runs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "fanout_latency.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
    return written


def write_all(out: Path, raw: list[Record], meta: dict[str, Any]) -> None:
    agg = aggregate(raw)
    with open(out / "results.jsonl", "w") as f:
        f.write(json.dumps({"type": "machine", **meta}) + "\n")
        for r in raw:
            f.write(json.dumps({"type": "run", **r}) + "\n")
        for r in agg:
            f.write(json.dumps({"type": "median", **r}) + "\n")
    errors = [r for r in raw if "error" in r]
    text = table(agg, [r for r in raw if "error" not in r], meta)
    if errors:
        text += (
            "\n## Scenarios that failed\n\n"
            + "\n".join(
                f"- {r['stack']} {r['scenario']} run {r['run'] + 1}: {r['error']}" for r in errors
            )
            + "\n"
        )
    (out / "table.md").write_text(text)
    plots(agg, out)


def main() -> None:
    """Rewrite table.md and the plots from a results.jsonl: python bench/report.py FILE."""
    path = Path(sys.argv[1])
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    meta = next(r for r in lines if r["type"] == "machine")
    raw = [{k: v for k, v in r.items() if k != "type"} for r in lines if r["type"] == "run"]
    write_all(path.parent, raw, {k: v for k, v in meta.items() if k != "type"})


if __name__ == "__main__":
    main()
