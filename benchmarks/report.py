"""Renders a benchmarks/results/*.json (pytest-benchmark) as Markdown tables, one per group,
medians side by side with the ratio to the fastest medmix kernel in the group.

    python benchmarks/report.py benchmarks/results/cpu-2core-2026-11-22.json
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def render(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    groups = defaultdict(list)
    for b in data["benchmarks"]:
        provider = b["name"].split("[", 1)[1].rstrip("]").split("-")[0]
        groups[b["group"]].append((provider, b["stats"]["median"] * 1e3))
    info = data["machine_info"]
    device = info.get("cuda_device") or f"CPU ({info.get('cpu', {}).get('brand_raw', '?')}, " \
                                          f"{info.get('cpu_threads', '?')} threads)"
    lines = [f"Device: {device}; torch {info.get('torch')}, triton {info.get('triton')}; "
             f"commit {data['commit_info'].get('id', '?')[:10]}; {data['datetime'][:10]}.", ""]
    for group, rows in groups.items():
        ours = [ms for p, ms in rows if p.startswith("medmix_")]
        base = min(ours) if ours else min(ms for _, ms in rows)
        lines += [f"**{group}**", "", "| provider | median ms | vs fastest medmix |",
                  "| --- | ---: | ---: |"]
        for provider, ms in sorted(rows, key=lambda r: r[1]):
            name = f"**{provider}**" if provider.startswith("medmix_") else provider
            lines.append(f"| {name} | {ms:.2f} | {ms / base:.2f}x |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(sys.argv[1]))
