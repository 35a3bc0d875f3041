"""DreamBench's metrics in the layout of DreamBooth's Table 1 (Ruiz et al. 2023): one row per configuration
(DINO, CLIP-I, CLIP-T: means over concepts, 95% t-intervals over concepts, or over seeds with one concept),
the real images of these concepts, and the published figures quoted beside them as reference rows (named as
published, never as reproduced). Reads the registered metrics dino, clip_i and clip_t and metrics.json's
`dreambench` block (sweeper/evaluation/dreambench.py) through load_runs' columns.
"""

from __future__ import annotations

import html
import math

import pandas as pd

from analysis.load import completed, natural_key
from analysis.stats import t_interval

METRICS = {"dino": "DINO", "clip_i": "CLIP-I", "clip_t": "CLIP-T"}
PUBLISHED = [  # DreamBooth (Ruiz et al. 2023), Table 1: quoted, not reproduced here
    ("Real Images (published, DreamBooth Table 1)", {"dino": 0.774, "clip_i": 0.885, "clip_t": None}),
    (
        "Textual Inversion, Stable Diffusion (published, DreamBooth Table 1)",
        {"dino": 0.569, "clip_i": 0.780, "clip_t": 0.255},
    ),
]
COLUMNS = ["method", "source", "concepts", "runs"] + [
    f"{m}{suffix}" for m in METRICS for suffix in ("", "_ci_low", "_ci_high")
]


def _estimate(sub: pd.DataFrame, col: str) -> tuple[float, float, float]:
    """Mean over concepts of each concept's mean over runs, interval over concepts (one concept: over runs)."""
    values = pd.to_numeric(sub[col], errors="coerce")
    per_concept = values.groupby(sub["concept"]).mean().dropna()
    est = t_interval(per_concept if len(per_concept) > 1 else values.dropna())
    return est.value, est.low, est.high


def dreambench_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """The table, or None when no completed run recorded DreamBench metrics (evaluation=dreambench)."""
    done = completed(df)
    if "dino" not in done or not pd.to_numeric(done["dino"], errors="coerce").notna().any():
        return None
    done = done[pd.to_numeric(done["dino"], errors="coerce").notna()]
    rows = []
    for cfg in sorted(done["configuration"].unique(), key=natural_key):
        sub = done[done["configuration"] == cfg]
        row = {"method": cfg, "source": "this sweep", "concepts": sub["concept"].nunique(), "runs": len(sub)}
        for m in METRICS:
            row[m], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = _estimate(sub, m)
        rows.append(row)
    real = {"method": "Real Images (these concepts)", "source": "measured here", "runs": len(done)}
    per_concept = done.drop_duplicates("concept")
    real["concepts"] = len(per_concept)
    for m in ("dino", "clip_i"):
        col = f"dreambench.real_images.{m}"
        if col in done:
            real[m], real[f"{m}_ci_low"], real[f"{m}_ci_high"] = _estimate(per_concept, col)
    rows.append(real)
    for name, values in PUBLISHED:
        rows.append({"method": name, "source": "published", **values})
    return pd.DataFrame(rows, columns=COLUMNS)


def _cell(row: pd.Series, m: str) -> str:
    v = row.get(m)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    low, high = row.get(f"{m}_ci_low"), row.get(f"{m}_ci_high")
    ci = "" if low is None or pd.isna(low) else f' <span class="ci">[{low:.3f}, {high:.3f}]</span>'
    return f"{float(v):.3f}{ci}"


def table_html(table: pd.DataFrame | None, df: pd.DataFrame) -> str:
    """The report's DreamBench section ("" without DreamBench metrics)."""
    if table is None:
        return ""
    body = "".join(
        f'<tr class="{html.escape(r["source"].replace(" ", "-"))}"><td>{html.escape(str(r["method"]))}</td>'
        + "".join(f'<td class="num">{_cell(r, m)}</td>' for m in METRICS)
        + f"<td>{html.escape(str(r['source']))}</td></tr>"
        for _, r in table.iterrows()
    )
    encoders = sorted(
        {
            f"{n} ({k})"
            for n, k in zip(
                df.get("dreambench.dino_encoder.name", []), df.get("dreambench.dino_encoder.kind", [])
            )
            if isinstance(n, str)
        }
    )
    judges = sorted({str(j) for j in df.get("dreambench.clip", []) if isinstance(j, str)})
    return (
        '<h2 id="dreambench">DreamBench (laid out like DreamBooth\'s Table 1)</h2>'
        "<p>DINO and CLIP-I: mean pairwise cosine between generated and real images' embeddings; CLIP-T: cosine "
        "between the prompt (learned token removed, class word kept) and the generated images; raw cosines. Rows "
        "of this sweep: means over concepts with 95% intervals over concepts (one concept: over its runs). "
        f"DINO slot: {html.escape(', '.join(encoders) or 'unknown')}; CLIP: {html.escape(', '.join(judges) or 'unknown')}. "
        "The <i>published</i> rows are quoted from Ruiz et al. 2023 (DreamBooth), Table 1 (30 subjects, 25 prompts, "
        "4 images each, on Stable Diffusion): reference figures, not reproduced by these runs.</p>"
        '<table id="dreambench-table"><thead><tr><th>Method</th><th>DINO</th><th>CLIP-I</th><th>CLIP-T</th>'
        f"<th>source</th></tr></thead><tbody>{body}</tbody></table>"
    )
