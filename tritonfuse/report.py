"""The report: per family, the sites matched, replaced and left to Inductor (with each reason)."""

from __future__ import annotations

from collections import Counter

from . import inline, registry


def report() -> str:
    """A printable table of what tritonfuse did in every compile since the last ``tritonfuse.reset()``.

    Example::

        >>> model = torch.compile(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU()), backend="tritonfuse")
        >>> _ = model(torch.randn(8, 64))
        >>> print(tritonfuse.report())
    """
    counts = registry.counters()
    sites = registry.sites()
    lines = ["tritonfuse report", f"{'family':<15}{'matched':>8}{'replaced':>9}{'fallback':>9}"]
    for fam, c in counts.items():
        lines.append(f"{fam:<15}{c['matched']:>8}{c['replaced']:>9}{c['fallback']:>9}")
    served = Counter((s.family, s.kernel, tuple(s.measured or ())) for s in sites if s.status == "replaced")
    if served:
        timed_any = any(timed for _, _, timed in served)
        lines.append("replaced sites, by kernel" + (" (measured: ours vs what it replaces, per call)" if timed_any else "")
                     + ":")
        for (fam, kernel, timed), n in sorted(served.items()):
            why = f"  measured {timed[0]:.3f} vs {timed[1]:.3f} ms" if timed else ""
            lines.append(f"  {fam:<15}{kernel:<40} x{n}{why}")
    stacks = Counter(registry.stacked())
    if stacks:  # (recorded when a graph is compiled, as the inlined op calls are)
        lines.append("sibling Linears on one x as one GEMM over their weights stacked:")
        for (n, timed), k in sorted(stacks.items()):
            why = f"  measured {timed[0]:.3f} vs {timed[1]:.3f} ms apart" if timed else ""
            lines.append(f"  {n} GEMMs as one x{k}{why}")
    inl = inline.counts()
    if inl["inlined"] or inl["kept"]:
        # counted when a graph is compiled (one served whole from Inductor's cache is not)
        lines.append(f"op calls inlined into Inductor's code: {inl['inlined']}; left as op calls: {inl['kept']}")
        for reason, n in sorted(inl["reasons"].items()):
            lines.append(f"  {reason} (x{n})")
    left: dict[tuple, list] = {}
    for s in sites:
        if s.status == "fallback":
            left.setdefault((s.family, s.reason), []).append(s.module)
    if left:
        lines.append("left to Inductor, by reason (and where):")
        for (fam, reason), modules in sorted(left.items()):
            named = [m for m in dict.fromkeys(modules) if m]
            where = (": " + ", ".join(named[:3]) + (f", +{len(named) - 3} more" if len(named) > 3 else "")) \
                if named else ""
            lines.append(f"  {fam:<15}{reason} (x{len(modules)}{where})")
    lines.extend(_compile_time_lines())
    errs = registry.errors()
    if errs:
        lines.append("errors (the sites involved were left to Inductor):")
        lines.extend(f"  {e}" for e in errs)
    return "\n".join(lines)


def _compile_time_lines() -> list[str]:
    """What tritonfuse added to the compiles: its passes' time, and how much of it timed sites (on a GPU,
    each site's kernel against what it replaces, once per shape: later compiles read the records)."""
    t = registry.compile_time()
    if not t["graphs"]:
        return []
    graphs = f"{t['graphs']} graph" + ("s" if t["graphs"] != 1 else "")
    lines = [f"compile time in tritonfuse's passes: {t['passes_s']:.1f} s over {graphs}"]
    if t["timed"] or t["recalled"] or t["deferred"]:
        parts = [f"{t['timed']} timed now ({t['timing_s']:.1f} s)", f"{t['recalled']} read from kept records (a shape "
                 "timed before)"]
        if t["deferred"]:
            parts.append(f"{t['deferred']} put off past TRITONFUSE_MEASURE_BUDGET_S")
        lines.append("  sites' measured choices: " + ", ".join(parts))
    if registry.surveyed():
        lines.append(f"  {registry.surveyed()} choices' kernels sent to compile before the first timing (the survey)")
    return lines


def site_table() -> str:
    """One line per site, in compile order, with the module it came from (``TRITONFUSE_LOG=debug`` and
    ``tritonfuse explain`` print it)."""
    sites = registry.sites()
    width = min(48, max((len(s.module) for s in sites), default=0))
    rows = []
    for s in sites:
        what = s.kernel if s.status == "replaced" else f"inductor ({s.reason})"
        module = (s.module or "?")[-width:] if width else ""
        rows.append(f"  graph {s.graph} {s.family:<14} {module:<{width}} {s.detail:<44} -> {what}")
    return "\n".join(rows)
