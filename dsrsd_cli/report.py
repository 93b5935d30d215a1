"""Output helpers shared by the commands: rich tables on stderr, JSON on stdout, PNG plots.

Plots are drawn with matplotlib's Agg backend (no display needed) and written atomically.
Takes nothing from engine/: the commands hand it plain dicts.

Over 500 lines on purpose: every command's tables, markdown and plots sit in one module, one
section per command (train/evaluate, explain, mechanisms, compare, learning curves, tune), so
numbers are formatted one way everywhere; each section is small and reads on its own.
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from rich.markup import escape
from rich.table import Table

from dsrsd_cli.io import atomic_write_bytes, to_jsonable

# The metric columns shown in tables, in this order, where present.
METRIC_COLUMNS = ("auc", "accuracy", "f1", "log_loss", "brier", "rmse", "ece", "n")


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def print_json(obj: Any, stream=None) -> None:
    """Machine-readable output: one JSON document on stdout (NaN written as null)."""
    stream = stream or sys.stdout
    stream.write(json.dumps(to_jsonable(obj), indent=2) + "\n")
    stream.flush()


def metrics_table(title: str, rows: Mapping[str, Mapping[str, Any]], columns: Iterable[str] = METRIC_COLUMNS) -> Table:
    """One row per named metrics dict (e.g. valid, test, "without behavior")."""
    columns = [c for c in columns if any(c in r for r in rows.values())]
    table = Table(title=title, title_justify="left")
    table.add_column("", style="bold", no_wrap=True)
    for c in columns:
        table.add_column(c, justify="right")
    for name, metrics in rows.items():
        table.add_row(name, *(fmt(metrics.get(c)) for c in columns))
    return table


def robustness_table(robustness: Mapping[str, Any]) -> Table:
    """Per modality: AUC without it, AUC at each noise level, and the area under that curve."""
    levels = robustness["levels"]
    table = Table(title=f"Robustness (AUC; full {fmt(robustness['base_auc'])})", title_justify="left")
    table.add_column("modality", style="bold", no_wrap=True)
    table.add_column("absent", justify="right")
    for level in levels:
        table.add_column(f"noise {level:g}", justify="right")
    table.add_column("area", justify="right")
    for modality, r in robustness["modalities"].items():
        table.add_row(modality, fmt(r["absent_auc"]), *(fmt(a) for a in r["noise_auc"]), fmt(r["noise_area"]))
    return table


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_robustness(robustness: Mapping[str, Any], path: str | Path, title: str = "") -> None:
    """AUC against noise level per modality (solid), AUC with the modality absent (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    levels = robustness["levels"]
    for i, (modality, r) in enumerate(robustness["modalities"].items()):
        color = f"C{i}"
        auc = [math.nan if a is None else a for a in r["noise_auc"]]
        ax.plot(levels, auc, marker="o", color=color, label=f"{modality} ({r['noise_kind']}; area {fmt(r['noise_area'], 3)})")
        if r["absent_auc"] is not None:
            ax.axhline(r["absent_auc"], color=color, linestyle="--", linewidth=1, label=f"{modality} absent")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("noise level (Gaussian std / token drop probability)")
    ax.set_ylabel("AUC")
    ax.set_title(title or "Robustness")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save_figure(fig, Path(path))


# ---------------------------------------------------------------- explain (engine/explain.py)

def _gap(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def explain_table(result: Mapping[str, Any]) -> Table:
    """Per modality: Shapley values (AUC, |logit|), leave-one-out, gate weight, shared share."""
    gates = result.get("gates") or {}
    streams = result.get("streams") or {}
    eff = result["efficiency"]
    table = Table(
        title=f"Attribution: {result['model']} on {result['split']} ({result['n']:,} rows; AUC all {fmt(result['full']['auc'])}, none {fmt(result['none']['auc'])})",
        title_justify="left",
        caption=(f"Shapley values sum to all - none (gap: AUC {_gap(eff['auc']['gap'])}, |logit| {_gap(eff['logit']['gap'])})."
                 + (" Gates are weights, not attribution." if gates else "")),
        caption_justify="left",
    )
    table.add_column("modality", style="bold")
    for name in ("Shapley AUC", "Shapley |logit|", "drop AUC w/o", "|logit| w/o"):
        table.add_column(name, justify="right")
    if gates:
        table.add_column("mean gate", justify="right")
    if streams:
        table.add_column("shared share", justify="right")
    for m in result["ranking"]:
        row = [m, fmt(result["shapley"]["auc"][m]), fmt(result["shapley"]["logit"][m]),
               fmt(result["leave_one_out"][m]["auc_drop"]), fmt(result["leave_one_out"][m]["logit_change"])]
        if gates:
            row.append(fmt(gates.get(m)))
        if streams:
            row.append(fmt(streams.get(m, {}).get("shared_share")))
        table.add_row(*row)
    if gates and "consensus" in gates:
        table.add_row("(consensus)", "", "", "", "", fmt(gates["consensus"]), *([""] if streams else []))
    return table


def explain_groups_table(result: Mapping[str, Any]) -> Table:
    """Per group of --by: rows, positive rate, AUC, and each modality's Shapley AUC."""
    by = result["by"]
    mods = result["modalities"]
    table = Table(title=f"Shapley AUC by {by['name']} ({by['description']})", title_justify="left")
    table.add_column(by["name"], style="bold")
    for name in ("rows", "positive rate", "AUC all", *mods):
        table.add_column(name, justify="right")
    for g in by["groups"]:
        table.add_row(g["group"], f"{g['n']:,}", fmt(g["positive_rate"]), fmt(g["full"]["auc"]),
                      *(fmt(g["shapley"]["auc"][m]) for m in mods))
    return table


def plot_explain(result: Mapping[str, Any], path: str | Path) -> None:
    """Shapley values per modality for both value functions, leave-one-out as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mods = list(result["modalities"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, (value, loo, label) in zip(axes, (("auc", "auc_drop", "AUC"), ("logit", "logit_change", "mean |logit change|"))):
        phi = [math.nan if result["shapley"][value][m] is None else result["shapley"][value][m] for m in mods]
        drop = [math.nan if result["leave_one_out"][m][loo] is None else result["leave_one_out"][m][loo] for m in mods]
        ax.bar(mods, phi, color=[f"C{i}" for i in range(len(mods))], label="Shapley value")
        ax.plot(mods, drop, "kD", label="leave one out")
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_title(f"{label}: all {fmt(result['full'][value], 3)}, none {fmt(result['none'][value], 3)}")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{result['model']} on {result['split']}: what each modality contributes", y=1.03)
    _save_figure(fig, Path(path))


def plot_explain_groups(result: Mapping[str, Any], path: str | Path) -> None:
    """Shapley AUC per modality, one group of bars per --by group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by, mods = result["by"], list(result["modalities"])
    groups = by["groups"]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(groups) + 2), 3.8))
    width = 0.8 / max(len(mods), 1)
    for i, m in enumerate(mods):
        values = [math.nan if g["shapley"]["auc"][m] is None else g["shapley"]["auc"][m] for g in groups]
        ax.bar([j + i * width for j in range(len(groups))], values, width=width, label=m, color=f"C{i}")
    ax.set_xticks([j + width * (len(mods) - 1) / 2 for j in range(len(groups))], [g["group"] for g in groups], rotation=30, ha="right")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_ylabel("Shapley value (AUC)")
    ax.set_title(f"{result['model']} on {result['split']}: Shapley AUC by {by['name']}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    _save_figure(fig, Path(path))


# ---------------------------------------------------------------- mechanisms (model/diagnostics.py, in explain)

def _num(value: Any) -> float:
    return math.nan if value is None or isinstance(value, str) else float(value)


def _ratio(value: Any, reference: Any, unit: str = "") -> str:
    v, r = _num(value), _num(reference)
    if math.isnan(v) or math.isnan(r) or r == 0:
        return "-"
    return f"{v / r:.2f}{unit}"


def _mechanism_rows(mech: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measure, value, reference, value / reference) for the keys that are present."""
    rows = []
    if "align_infonce" in mech:
        shuffled = mech.get("align_infonce_shuffled")
        rows.append(("alignment: InfoNCE (lower = aligned)", fmt(_num(mech["align_infonce"]), 3),
                     f"ln N {fmt(_num(mech['align_infonce_chance']), 3)}" + (f", shuffled {fmt(_num(shuffled), 3)}" if shuffled is not None else ""),
                     _ratio(mech["align_infonce"], mech["align_infonce_chance"], " × ln N")))
        rows.append(("alignment: top-1 retrieval", fmt(_num(mech["align_top1"]), 3), f"1/N {fmt(_num(mech['align_top1_chance']), 4)}",
                     _ratio(mech["align_top1"], mech["align_top1_chance"], " × chance")))
    if "shared_effective_rank" in mech:
        rows.append(("shared: effective rank", fmt(_num(mech["shared_effective_rank"]), 2), f"k {fmt(_num(mech['shared_rank_max']), 0)}",
                     _ratio(mech["shared_effective_rank"], mech["shared_rank_max"], " × k")))
        rows.append(("shared: mean |off-diagonal corr|", fmt(_num(mech["shared_mean_abs_offdiag_corr"]), 3), "0 = decorrelated", ""))
        rows.append(("shared: per-dim std mean / min", f"{fmt(_num(mech['shared_std_mean']), 3)} / {fmt(_num(mech['shared_std_min']), 3)}",
                     "1 = LayerNorm bound; 0 = collapsed", ""))
    if "sp_cosine" in mech:
        rows.append(("shared vs private: cos / |cos|", f"{fmt(_num(mech['sp_cosine']), 3)} / {fmt(_num(mech['sp_abs_cosine']), 3)}",
                     f"|cos| random {fmt(_num(mech['sp_abs_cosine_chance']), 3)}; 1 = duplicate",
                     _ratio(mech["sp_abs_cosine"], mech["sp_abs_cosine_chance"], " × random")))
    if "gate_entropy" in mech:
        rows.append(("gate: entropy (nats)", fmt(_num(mech["gate_entropy"]), 3), f"ln G {fmt(_num(mech['gate_entropy_max']), 3)} = uniform",
                     _ratio(mech["gate_entropy"], mech["gate_entropy_max"], " × ln G")))
        streams = [k[len("gate_mean_"):] for k in mech if k.startswith("gate_mean_")]
        uniform = 1 / len(streams) if streams else math.nan
        rows.append(("gate: dominant stream", f"{mech.get('gate_dominant') or '-'} {fmt(_num(mech['gate_dominant_share']), 3)}",
                     f"1/G {fmt(uniform, 3)}", _ratio(mech["gate_dominant_share"], uniform, " × 1/G")))
    return rows


def mechanisms_table(result: Mapping[str, Any]) -> Table:
    """Does DSRSD-Net's machinery work: each diagnostic against its reference value."""
    mech = result["mechanisms"]
    n = mech.get("align_rows")
    detail = [f"N {fmt(_num(n), 0)} rows per modality pair" if n is not None else "",
              f"tau {mech['align_tau']:g}" if mech.get("align_tau") is not None else "",
              f"gates over {mech['gate_units']:,} units" if mech.get("gate_units") is not None else ""]
    table = Table(
        title=f"Mechanisms: {result['model']} on {result['split']} ({'; '.join(d for d in detail if d)})",
        title_justify="left",
        caption="Reference: chance / no-mechanism value (or the ideal). Meanings: \"mechanisms_meaning\" in the JSON.",
        caption_justify="left",
    )
    table.add_column("measure", style="bold")
    table.add_column("value", justify="right")
    table.add_column("reference", justify="right")
    table.add_column("value / reference", justify="right")
    for row in _mechanism_rows(mech):
        table.add_row(*row)
    return table


def plot_mechanisms(result: Mapping[str, Any], path: str | Path) -> None:
    """Left: each diagnostic scaled to its reference (bars) with chance / ideal marked.
    Right: mean gate weight per stream against 1/G."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mech = result["mechanisms"]
    bars: list[tuple[str, float, list[tuple[float, str]]]] = []     # label, value, [(marker, its label)]
    if "align_infonce" in mech:
        chance = _num(mech["align_infonce_chance"])
        shuffled = _num(mech.get("align_infonce_shuffled"))
        bars.append(("InfoNCE / ln N", _num(mech["align_infonce"]) / chance, [(1.0, "chance"), (shuffled / chance, "shuffled")]))
        bars.append(("top-1 retrieval", _num(mech["align_top1"]), [(_num(mech["align_top1_chance"]), "chance"), (1.0, "ideal")]))
    if "shared_effective_rank" in mech:
        bars.append(("effective rank / k", _num(mech["shared_effective_rank"]) / _num(mech["shared_rank_max"]), [(1.0, "ideal")]))
        bars.append(("|off-diag corr|", _num(mech["shared_mean_abs_offdiag_corr"]), [(0.0, "ideal")]))
        bars.append(("per-dim std (mean)", _num(mech["shared_std_mean"]), [(1.0, "ideal")]))
        bars.append(("per-dim std (min)", _num(mech["shared_std_min"]), [(1.0, "ideal")]))
    if "sp_abs_cosine" in mech:
        bars.append(("|cos(shared, private)|", _num(mech["sp_abs_cosine"]), [(_num(mech["sp_abs_cosine_chance"]), "chance")]))
    if "gate_entropy" in mech:
        bars.append(("gate entropy / ln G", _num(mech["gate_entropy"]) / _num(mech["gate_entropy_max"]) if _num(mech["gate_entropy_max"]) else math.nan,
                     [(1.0, "uniform")]))
    streams = [k[len("gate_mean_"):] for k in mech if k.startswith("gate_mean_")]
    fig, axes = plt.subplots(1, 2 if streams else 1, figsize=(10 if streams else 6, max(3.2, 0.45 * len(bars) + 1.2)),
                             gridspec_kw={"width_ratios": [2, 1]} if streams else None, squeeze=False)
    ax = axes[0][0]
    y = list(range(len(bars)))[::-1]
    ax.barh(y, [v for _, v, _ in bars], color="C0", alpha=0.6)
    for yi, (_, value, _) in zip(y, bars):
        if math.isfinite(value):
            ax.annotate(f"{value:.3g}", (value, yi), xytext=(3, -9), textcoords="offset points", fontsize=7)
    styles = {"chance": ("k", "|", 16), "shuffled": ("C3", "x", 9), "ideal": ("C2", "D", 6), "uniform": ("C1", "|", 16)}
    seen = set()
    for yi, (_, _, marks) in zip(y, bars):
        for x, name in marks:
            if math.isfinite(x):
                color, marker, size = styles[name]
                ax.plot([x], [yi], marker=marker, color=color, markersize=size, markeredgewidth=2.5, linestyle="none",
                        label=None if name in seen else name, zorder=3, clip_on=False)
                seen.add(name)
    ax.set_xlim(left=-0.05)
    ax.set_yticks(y, [label for label, _, _ in bars])
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("value (bar) vs reference (marks)")
    if streams:
        right = axes[0][1]
        right.bar(streams, [_num(mech[f"gate_mean_{s}"]) for s in streams], color=[f"C{i}" for i in range(len(streams))])
        right.axhline(1 / len(streams), color="k", linestyle=":", linewidth=1, label="1/G")
        right.set_ylim(0, 1)
        right.set_title("mean gate weight")
        right.tick_params(axis="x", rotation=30)
        right.legend(fontsize=7)
        right.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{result['model']} on {result['split']}: do the mechanisms work?", y=1.02)
    _save_figure(fig, Path(path))


# ---------------------------------------------------------------- compare (engine/compare.py)

COMPARE_LABELS = {"auc": "AUC", "accuracy": "accuracy", "f1": "F1", "log_loss": "log-loss", "brier": "Brier", "ece": "ECE"}


def fmt_mean_std(stat: Mapping[str, Any], digits: int = 4) -> str:
    """"0.7123 ± 0.0040" (just the mean with one seed)."""
    if stat.get("mean") is None:
        return "-"
    return f"{stat['mean']:.{digits}f}" + ("" if stat.get("std") is None else f" ± {stat['std']:.{digits}f}")


def fmt_diff(value: Any, digits: int = 4) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.{digits}f}"


def fmt_p(value: Any) -> str:
    if value is None:
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _comparison_columns(result: Mapping[str, Any], *, wide: bool, robustness: bool = True) -> list[tuple[str, Any]]:
    """(header, model entry -> cell) for the comparison table; `wide` adds every metric."""
    ref = result["reference"]

    def vs(metric: str, key: str):
        def cell(m):
            combined = (m.get("vs_reference") or {}).get("combined", {}).get(metric)
            if m["label"] == ref or combined is None:
                return "ref" if m["label"] == ref and key == "diff" else ""
            return fmt_diff(combined["diff"]) if key == "diff" else fmt_p(combined["p"])
        return cell

    columns: list[tuple[str, Any]] = [("model", lambda m: m["label"])]
    if wide:
        columns.append(("seeds", lambda m: str(len(m["seeds"]))))
    for metric in result["metrics"] if wide else ("auc", "log_loss"):
        name = COMPARE_LABELS.get(metric, metric)
        columns.append((name, lambda m, k=metric: fmt_mean_std(m["metrics"][k])))
        if metric in ("auc", "log_loss") or (wide and metric in ("accuracy", "brier")):
            columns += [(f"Δ {name}", vs(metric, "diff")), (f"p {name}", vs(metric, "p"))]
    if robustness:
        for modality in result["modalities"]:
            columns.append((f"AUC w/o {modality}", lambda m, k=modality: fmt_mean_std(m["absent_auc"][k])))
    return columns


def comparison_table(result: Mapping[str, Any]) -> Table:
    """Mean ± std over seeds per model, difference to the reference and combined p-values."""
    seeds = sorted({len(m["seeds"]) for m in result["models"]})
    table = Table(
        title=f"Comparison on {result['dataset']} test ({result['test_rows']:,} rows, {result['learners']:,} learners; "
              f"{'/'.join(map(str, seeds))} seed{'s' if seeds != [1] else ''} per model); reference {result['reference']}",
        title_justify="left",
        caption="Δ = model - reference, mean over seed pairs; p combined over seeds (AUC: clustered DeLong; others: learner bootstrap)",
        caption_justify="left",
    )
    columns = _comparison_columns(result, wide=False, robustness=False)
    for i, (name, _) in enumerate(columns):
        table.add_column(name, style="bold" if i == 0 else None, justify="left" if i == 0 else "right")
    for m in result["models"]:
        table.add_row(*(cell(m) for _, cell in columns))
    return table


def comparison_robustness_table(result: Mapping[str, Any]) -> Table:
    """Per model: test AUC, and test AUC with each modality absent (mean ± std over seeds)."""
    table = Table(title="Missing-modality robustness (test AUC)", title_justify="left")
    table.add_column("model", style="bold")
    table.add_column("all present", justify="right")
    for modality in result["modalities"]:
        table.add_column(f"without {modality}", justify="right")
    for m in result["models"]:
        table.add_row(m["label"], fmt_mean_std(m["metrics"]["auc"]), *(fmt_mean_std(m["absent_auc"][k]) for k in result["modalities"]))
    return table


def comparison_markdown(result: Mapping[str, Any]) -> str:
    """comparison.md: the full table, the per-seed tests and how they were made."""
    columns = _comparison_columns(result, wide=True)
    lines = [
        f"# Comparison: {result['dataset']}, target {result['target']}",
        "",
        f"Test rows: {result['test_rows']:,} ({result['learners']:,} learners), identical for every run. "
        f"Prepared data: manifest {result['data']['manifest_hash'][:12]}. Reference: **{result['reference']}**. "
        "Values: mean ± std (ddof 1) over seeds.",
        "",
        "| " + " | ".join(name for name, _ in columns) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|",
    ]
    lines += ["| " + " | ".join(cell(m) for _, cell in columns) + " |" for m in result["models"]]
    lines += ["", "## Per seed pair", "", "| model | seed (ref seed) | Δ AUC | p AUC | Δ log-loss | p log-loss | Δ accuracy | p accuracy |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in result["models"]:
        for pair in (m.get("vs_reference") or {}).get("pairs", []):
            lines.append(
                f"| {m['label']} | {pair['seed']} ({pair['reference_seed']}) | {fmt_diff(pair['auc']['diff'])} | {fmt_p(pair['auc']['p'])} "
                f"| {fmt_diff(pair['log_loss']['diff'])} | {fmt_p(pair['log_loss']['p'])} | {fmt_diff(pair['accuracy']['diff'])} | {fmt_p(pair['accuracy']['p'])} |"
            )
    lines += ["", "## Tests", ""]
    lines += [f"- {name}: {text}" for name, text in result["tests"].items()]
    lines += ["- Δ = model - reference (for log-loss and Brier, negative is better).",
              "- AUC w/o m: test AUC with modality m marked absent (the model's learned absent token)."]
    lines += ["", "## Budget", ""]
    lines += [f"- {m['label']}: epochs {m['budget']['epochs']}, max steps/epoch {m['budget']['max_steps_per_epoch'] or 'all'}, "
              f"batch {m['budget']['batch_size']}, seeds {', '.join(str(s) for s in m['seeds'])}" for m in result["models"]]
    if not result["same_budget"]:
        lines += ["", "**Warning:** the models were not trained with the same budget."]
    return "\n".join(lines) + "\n"


def plot_comparison(result: Mapping[str, Any], path: str | Path) -> None:
    """Left: test AUC per model (mean ± std, one dot per seed). Right: AUC with each modality absent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["models"]
    names = [m["label"] for m in models]
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(9, 1.5 * len(models) + 4), 4))
    means = [math.nan if m["metrics"]["auc"]["mean"] is None else m["metrics"]["auc"]["mean"] for m in models]
    stds = [m["metrics"]["auc"]["std"] or 0.0 for m in models]
    left.bar(range(len(models)), means, yerr=stds, capsize=4, color=["C3" if n == result["reference"] else "C0" for n in names])
    for i, m in enumerate(models):
        seeds = [r["metrics"].get("auc") for r in m["runs"]]
        left.plot([i] * len(seeds), [math.nan if a is None else a for a in seeds], "k.", markersize=4)
    finite = [v for m in models for v in [r["metrics"].get("auc") for r in m["runs"]] if v is not None]
    if finite:
        left.set_ylim(max(0.0, min(finite) - 0.05), min(1.0, max(finite) + 0.03))
    left.set_xticks(range(len(models)), names, rotation=30, ha="right")
    left.set_ylabel("test AUC")
    left.set_title("test AUC (mean ± std over seeds)")
    left.grid(axis="y", alpha=0.3)
    mods = result["modalities"]
    width = 0.8 / max(len(mods), 1)
    for j, modality in enumerate(mods):
        values = [math.nan if m["absent_auc"][modality]["mean"] is None else m["absent_auc"][modality]["mean"] for m in models]
        right.bar([i + j * width for i in range(len(models))], values, width=width, label=f"without {modality}", color=f"C{j + 4}")
    right.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    right.set_ylim(0.0, 1.08)
    right.set_xticks([i + width * (len(mods) - 1) / 2 for i in range(len(models))], names, rotation=30, ha="right")
    right.set_ylabel("test AUC")
    right.set_title("missing-modality robustness")
    right.legend(fontsize=7, loc="upper center", ncol=len(mods))
    right.grid(axis="y", alpha=0.3)
    _save_figure(fig, Path(path))


# ---------------------------------------------------------------- learning curves (compare --train-fraction)

def _curve_models(curve: Mapping[str, Any]) -> list[str]:
    return list(dict.fromkeys(p["model"] for p in curve["points"]))


def learning_curve_table(curve: Mapping[str, Any]) -> Table:
    """Rows: models; columns: training learners (fraction); cells: test AUC mean ± std (Δ vs reference, p)."""
    fractions = curve["fractions"]
    learners = {p["fraction"]: p["train_learners"] for p in curve["points"]}
    table = Table(title=f"Learning curve: test AUC by training learners (reference {curve['reference']})", title_justify="left",
                  caption="cells: mean ± std over seeds; [Δ vs reference, combined DeLong p]", caption_justify="left")
    table.add_column("model", style="bold")
    for f in fractions:
        table.add_column(f"{learners.get(f, '?'):,} ({f:g})" if isinstance(learners.get(f), int) else f"{f:g}", justify="right")
    for model in _curve_models(curve):
        cells = []
        for f in fractions:
            p = next((q for q in curve["points"] if q["model"] == model and q["fraction"] == f), None)
            if p is None:
                cells.append("-")
                continue
            cell = fmt_mean_std({"mean": p["auc_mean"], "std": p["auc_std"]})
            if p["auc_diff"] is not None:
                cell += f" [{fmt_diff(p['auc_diff'])}, p {fmt_p(p['auc_p'])}]"
            cells.append(cell)
        table.add_row(model, *cells)
    return table


def learning_curve_markdown(curve: Mapping[str, Any]) -> str:
    fractions = curve["fractions"]
    learners = {p["fraction"]: p["train_learners"] for p in curve["points"]}
    lines = [f"# Learning curve ({curve['preset']})", "",
             "Test AUC (mean ± std over seeds) against the number of training learners: each model trained on the same "
             "nested, seeded subsample of the training learners; validation and test learners unchanged. "
             f"[Δ vs {curve['reference']}, combined clustered-DeLong p]", "",
             "| model | " + " | ".join(f"{learners[f]:,} learners ({f:g})" for f in fractions) + " |",
             "|---|" + "---:|" * len(fractions)]
    for model in _curve_models(curve):
        cells = []
        for f in fractions:
            p = next((q for q in curve["points"] if q["model"] == model and q["fraction"] == f), None)
            cell = "-" if p is None else fmt_mean_std({"mean": p["auc_mean"], "std": p["auc_std"]})
            if p is not None and p["auc_diff"] is not None:
                cell += f" [{fmt_diff(p['auc_diff'])}, p {fmt_p(p['auc_p'])}]"
            cells.append(cell)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_learning_curve(curve: Mapping[str, Any], path: str | Path) -> None:
    """Test AUC (mean ± std) against training learners (log x), one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, model in enumerate(_curve_models(curve)):
        points = sorted((p for p in curve["points"] if p["model"] == model), key=lambda p: p["train_learners"])
        x = [p["train_learners"] for p in points]
        y = [math.nan if p["auc_mean"] is None else p["auc_mean"] for p in points]
        err = [p["auc_std"] or 0.0 for p in points]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=model,
                    linewidth=2.2 if model == curve["reference"] else 1.2, color=f"C{i}")
    ax.set_xscale("log")
    ax.set_xlabel("training learners")
    ax.set_ylabel("test AUC")
    ax.set_title("learning curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save_figure(fig, Path(path))


# ---------------------------------------------------------------- tune (engine/tune.py)

def _fmt_param(value: Any) -> str:
    """A hyperparameter value: 3 significant digits for very small or large ones, else 4."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.4g}"
    return str(value)


def trials_table(summary: dict[str, Any]) -> Table:
    best = summary["best"]["number"] if summary["best"] else None
    table = Table(title=f"{escape(summary['out'])}: {summary['finished']} finished trials of {summary['model']} "
                        f"({summary['complete']} complete, {summary['pruned']} pruned, {summary['failed']} failed)")
    for name in ("trial", "state", "valid AUC", "epochs", "seconds", "params"):
        table.add_column(name, justify="right" if name not in ("state", "params") else "left")
    for t in summary["trials"]:
        params = " ".join(f"{k.partition('.')[2]}={_fmt_param(v)}" for k, v in t.items()
                          if k in summary["space"] and v is not None)
        style = "bold green" if t["number"] == best else ("dim" if t["state"] == "FAIL" else None)
        table.add_row(str(t["number"]), t["state"], "-" if t["value"] is None else f"{t['value']:.4f}",
                      str(t["epochs"]), _fmt_param(t["seconds"]), params, style=style)
    return table


def best_table(summary: dict[str, Any]) -> Table:
    best = summary["best"]
    table = Table(title=f"best: trial {best['number']}, valid AUC {best['valid_auc']:.4f}")
    table.add_column("key")
    table.add_column("value", justify="right")
    table.add_column("searched", justify="left")
    for key, value in best["params"].items():
        table.add_row(key, _fmt_param(value), summary["space"].get(key, ""))
    return table
