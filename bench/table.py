"""The benchmark table as markdown, as docs/benchmarks.md shows it (shared by the bench scripts)."""

from __future__ import annotations


def markdown(rows: list[dict]) -> str:
    """The rows as the table in docs/benchmarks.md (a benchmark's name once, on its first row)."""
    out = ["| benchmark | variant | value | ratio | target |", "|---|---|---:|---:|---|"]
    last = None
    for r in rows:
        name = "" if r["benchmark"] == last else r["benchmark"]
        last = r["benchmark"]
        value = f"{r['value']:.2f} {r['unit']}".strip()
        ratio = f"{r['ratio']:.3f}" if "ratio" in r else ""
        target = f"{r['target']} {'met' if r['met'] else '**not met**'}" if "target" in r else ""
        note = f" ({r['note']})" if r.get("note") else ""
        out.append(f"| {name} | {r['variant']}{note} | {value} | {ratio} | {target} |")
    return "\n".join(out) + "\n"



def speedup_rows(name: str, medians: dict[str, float], target: float | None = None, *, unit: str = "s") -> list[dict]:
    """Rows for variants timed against the first (a time each): ratio = first's time / this one's; the
    target, if any, is asked of the last variant."""
    one = medians[next(iter(medians))]
    rows = []
    for i, (variant, value) in enumerate(medians.items()):
        row = {"benchmark": name, "variant": variant, "value": value, "unit": unit}
        if i:
            row["ratio"] = one / value
        if i == len(medians) - 1 and target is not None:
            row.update(target=f">= {target:.3f}", met=one / value >= target)
        rows.append(row)
    return rows
