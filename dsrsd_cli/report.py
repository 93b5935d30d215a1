"""Output helpers shared by the commands: rich tables on stderr, JSON on stdout, PNG plots.

Plots are drawn with matplotlib's Agg backend (no display needed) and written atomically.
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from rich.table import Table

from dsrsd_cli.engine.metrics import to_jsonable
from dsrsd_cli.io import atomic_write_bytes

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
