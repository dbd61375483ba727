"""The performance targets checked against one run's results, and the tables `make bench` prints."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench import compression

FLOOD_CPU_RATIO = 1.4
STEADY_CPU_RATIO = 1.3
STEADY_CORE_SHARE = 0.10
PEAK_RSS_MIB = 80.0
LAG_P99_MS = 5.0
SYMBOL_SCALING = 3.3


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    measured: str
    limit: str
    ok: bool | None  # None: not measurable in this run (shown as n/a)

    @property
    def verdict(self) -> str:
        return "n/a" if self.ok is None else "PASS" if self.ok else "MISS"


def _num(value: float, fmt: str = ".2f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def targets(results: dict[str, Any]) -> list[Target]:
    out: list[Target] = []
    ceiling = {r["compression"]: r for r in results["ceiling"]}
    for run in results["collector_flood"]:
        bare = ceiling[run["compression"]]
        ratio = run["cpu_us_per_msg"] / bare["cpu_us_per_msg"]
        out.append(Target(f"flood, {run['compression']}: collector CPU/msg vs bare",
                          f"{ratio:.2f}x ({run['cpu_us_per_msg']:.2f} vs {bare['cpu_us_per_msg']:.2f} us)",
                          f"<= {FLOOD_CPU_RATIO}x", ratio <= FLOOD_CPU_RATIO))
        intact = (not run["verify_problems"] and not run["spool_left"] and run["exit_status"] == 0
                  and run["written"] == run["received"] > 0)
        out.append(Target(f"flood, {run['compression']}: every file uploaded and verified",
                          f"{run['written']} of {run['received']} records, {run['objects']} objects, "
                          f"{len(run['verify_problems'])} problems", "all, 0 problems", intact))
    steady = {len(r["symbols"]): r for r in results["steady"]}
    for n, run in sorted(steady.items()):
        col, bare = run["collector"], run["bare"]
        label = f"{n} x {run['rate_per_symbol']:.0f}/s"
        ratio = col["cpu_share"] / bare["cpu_share"]
        out.append(Target(f"{label}: collector CPU vs bare", f"{ratio:.2f}x ({col['cpu_share']:.1%} vs "
                          f"{bare['cpu_share']:.1%})", f"<= {STEADY_CPU_RATIO}x", ratio <= STEADY_CPU_RATIO))
        if n == 1:
            out.append(Target(f"{label}: collector CPU, share of one core", f"{col['cpu_share']:.1%}",
                              f"<= {STEADY_CORE_SHARE:.0%}", col["cpu_share"] <= STEADY_CORE_SHARE))
        out.append(Target(f"{label}: collector peak RSS (VmHWM)", f"{col['peak_rss_mib']:.1f} MiB",
                          f"<= {PEAK_RSS_MIB:.0f} MiB", col["peak_rss_mib"] <= PEAK_RSS_MIB))
        lag = col["loop_lag"]
        out.append(Target(f"{label}: event-loop lag p99",
                          "n/a (collector writes no lag report)" if lag is None else
                          f"{lag['p99_ms']:.1f} ms (p50 {lag['p50_ms']:.1f}, max {lag['max_ms']:.1f})",
                          f"<= {LAG_P99_MS:.0f} ms", None if lag is None else lag["p99_ms"] <= LAG_P99_MS))
        lat = col["manifest_latency"]
        out.append(Target(f"{label}: trade E to manifest in S3, p99",
                          f"{_num(lat['p99_ms'] / 1000)} s (p50 {_num(lat['p50_ms'] / 1000)})",
                          f"<= {lat['budget_ms'] / 1000:.1f} s",
                          None if math.isnan(lat["p99_ms"]) else lat["p99_ms"] <= lat["budget_ms"]))
        intact = not col["verify_problems"] and col["exit_status"] == 0 and col["written"] > 0
        out.append(Target(f"{label}: every file uploaded and verified",
                          f"{col['written']} records, {col['objects']} objects, {len(col['verify_problems'])} "
                          "problems", "0 problems", intact))
    if 1 in steady and 3 in steady:
        scale = steady[3]["collector"]["cpu_share"] / steady[1]["collector"]["cpu_share"]
        out.append(Target("3 symbols vs 1 symbol: collector CPU", f"{scale:.2f}x", f"<= {SYMBOL_SCALING}x",
                          scale <= SYMBOL_SCALING))
    gz = results["compression"]
    default = next(r for r in gz["levels"] if [r["codec"], r["level"]] == gz["default"])
    bare_none = ceiling.get("none")
    chosen = compression.choose(gz["levels"], bare_none["cpu_us_per_msg"]) if bare_none else default
    out.append(Target(f"gzip: default {default['codec']} {default['level']} chosen by measurement",
                      f"measurement picks {chosen['codec']} {chosen['level']} ({gz['rule']}); default "
                      f"{default['ms_per_file']:.1f} ms/file, ratio {default['ratio']:.2f}",
                      "default = measured choice", chosen is default))
    return out


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def render(results: dict[str, Any], checked: list[Target]) -> str:
    m = results["machine"]
    parts = [f"Machine: {m['nproc']} CPU ({m['cpu_model']}), Python {m['python']}, websockets {m['websockets']}, "
             f"Linux {m['kernel']}, {m['date']}; total run {results['run_seconds']:.0f} s"]
    ceiling = {r["compression"]: r for r in results["ceiling"]}
    rows = []
    for run in results["collector_flood"]:
        bare = ceiling[run["compression"]]
        rows.append([run["compression"], run["extensions"], f"{bare['msgs_per_s']:,.0f}",
                     f"{bare['cpu_us_per_msg']:.2f}", f"{run['msgs_per_s']:,.0f}", f"{run['cpu_us_per_msg']:.2f}",
                     f"{run['msgs_per_s'] / bare['msgs_per_s']:.2f}", f"{run['peak_rss_mib']:.0f}"])
    parts += ["", "Flood (feed writes pre-built frames as fast as the client reads; collector CPU includes sealing "
              "and uploading every file):",
              _table(["ws compression", "negotiated", "bare msg/s", "bare us/msg", "collector msg/s",
                      "collector us/msg", "throughput ratio", "collector peak RSS MiB"], rows)]
    rows = []
    for run in results["steady"]:
        col, bare = run["collector"], run["bare"]
        lag, lat = col["loop_lag"], col["manifest_latency"]
        rows.append([f"{len(run['symbols'])} x {run['rate_per_symbol']:.0f}", f"{bare['cpu_share']:.1%}",
                     f"{col['cpu_share']:.1%}", f"{bare['peak_rss_mib']:.1f}", f"{col['peak_rss_mib']:.1f}",
                     "n/a" if lag is None else f"{lag['p50_ms']:.1f} / {lag['p99_ms']:.1f} / {lag['max_ms']:.1f}",
                     f"{_num(lat['p50_ms'] / 1000)} / {_num(lat['p99_ms'] / 1000)}"])
    window = results["steady"][0]["window_seconds"] if results["steady"] else 0
    parts += ["", f"Steady load (bursts every 50 ms, {window:g} s window, bare client and collector on the same "
              "feed at the same time):",
              _table(["symbols x msg/s", "bare CPU", "collector CPU", "bare RSS MiB", "collector RSS MiB",
                      "loop lag p50/p99/max ms", "E->manifest p50/p99 s"], rows)]
    gz = results["compression"]
    rows = [[f"{r['codec']} {r['level']}", f"{r['ms_per_file']:.1f}", f"{r['us_per_msg']:.2f}", f"{r['ratio']:.2f}",
             f"{r['compressed_bytes']:,}", f"{r['core_share_at_rate']:.2%}"] for r in gz["levels"]]
    parts += ["", f"gzip of one {gz['file_bytes']:,}-byte JSONL file ({gz['records']:,} feed trades), as the spool "
              "seals it:",
              _table(["codec level", "ms/file", "us/msg", "ratio", "bytes", f"core at {gz['rate']:.0f} msg/s"], rows)]
    parts += ["", "Targets:", _table(["target", "measured", "limit", "result"],
                                     [[t.name, t.measured, t.limit, t.verdict] for t in checked])]
    return "\n".join(parts)
