"""The resolved plan as a table (``qsam2 recipe explain``): one row per target layer, then the rules used."""

from __future__ import annotations

from .plan import LayerPlan, Recipe


def _group(p: LayerPlan) -> str:
    if p.skip:
        return "-"
    if p.group_size is not None and p.effective_group_size is None:
        return f"channel ({p.group_size} does not divide {p.in_features})"
    return "channel" if p.effective_group_size is None else str(p.effective_group_size)


def explain(recipe: Recipe, plans: list[LayerPlan]) -> str:
    rows = [("module", "type", "in->out", "method", "W", "A", "group", "VRC", "rule")]
    for p in plans:
        act = "-" if p.act_bits is None else str(p.act_bits)
        quant = ("float", "-", "-") if p.skip else (p.method, str(p.bits), act)
        rows.append((p.fqn, p.module_type, f"{p.in_features}->{p.out_features}", *quant, _group(p),
                     "yes" if p.vrc else "-", "-" if p.rule is None else f"#{p.rule}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))

    weights = {p.fqn: p.in_features * p.out_features for p in plans}
    quantized = [p for p in plans if not p.skip]
    share = sum(weights[p.fqn] for p in quantized) / max(sum(weights.values()), 1)
    lines += ["", f"recipe {recipe.name} ({recipe.path}) on {recipe.spec.model}: {len(quantized)} of {len(plans)} "
              f"target layers quantized ({100 * share:.1f} % of their weights), {sum(p.vrc for p in plans)} with VRC"]
    used = sorted({p.rule for p in plans if p.rule is not None})
    for i in used:
        rule = recipe.spec.rules[i]
        file, line = recipe.source.where(("rules", i))
        what = "float" if rule.skip else "quantized"
        note = f": {rule.note}" if rule.note else ""
        lines.append(f"  #{i} {what} {rule.match} ({file}:{line}){note}")
    unmatched = sum(p.rule is None for p in plans)
    if unmatched:
        lines.append(f"  {unmatched} layers match no rule and stay in float")
    return "\n".join(lines)
