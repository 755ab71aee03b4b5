"""The benchmark's PNG: each life-cycle event's p95 latency, kxds CPU per event and cold
translate, by number of Ingresses, one line per mode, with the targets at 10,000 drawn in.

    .venv/bin/python -m bench.plot bench/results/<stamp>.json [out.png]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# (title, how to read a result, target at 10,000 Ingresses)
PANELS: tuple[tuple[str, str, float], ...] = (
    ("Create a Knative Service → answers, p95 (ms)", "create.p95_ms", 100),
    ("Roll out a revision → traffic on it, p95 (ms)", "rollout.p95_ms", 100),
    ("Delete a Knative Service → 404, p95 (ms)", "delete.p95_ms", 100),
    ("Edit in place → visible, p95 (ms)", "ingress_change.p95_ms", 50),
    ("Endpoint flip → traffic on the new endpoint, p95 (ms)", "endpoint_flip.p95_ms", 50),
    ("kxds CPU per life-cycle event (ms)", "cpu_per_life_cycle_event_ms", 10),
    ("Cold translate + first snapshot (s)", "first_translate_s", 2),
    ("kxds RSS (MiB)", "kxds_rss_mib", 350),
)


def _value(result: dict[str, Any], path: str) -> float:
    value: Any = result
    for part in path.split("."):
        value = value[part]
    return float(value)


def plot(results: list[dict[str, Any]], out: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(2, 4, figsize=(22, 8))
    modes = list(dict.fromkeys(r["mode"] for r in results))
    for axis, (label, path, target) in zip(axes.flat, PANELS):
        for mode in modes:
            points = sorted((r["ingresses"], _value(r, path)) for r in results if r["mode"] == mode)
            axis.plot([n for n, _ in points], [v for _, v in points], marker="o", label=mode)
        axis.axhline(target, color="grey", linestyle="--", linewidth=1, label="target at 10,000")
        axis.set_title(label, fontsize=10)
        axis.set_xlabel("Ingresses")
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    pyplot.close(figure)


def main() -> int:
    source = Path(sys.argv[1])
    report = json.loads(source.read_text())
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else source.with_suffix(".png")
    plot(report["results"], out, report.get("command", ""))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
