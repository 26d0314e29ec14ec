"""Step: where the finetuned model got better and where it got worse, example by example."""

from typing import Annotated, Tuple

import pandas as pd
from zenml import ArtifactConfig, log_metadata, step
from zenml.types import HTMLString

from llm_lora.comparison import (
    ComparisonSummary, compare_examples, comparison_summary, render_comparison_html, score_meaning,
)


@step
def compare_models(
    base_predictions: pd.DataFrame, finetuned_predictions: pd.DataFrame, metric: str = "auto"
) -> Tuple[
    Annotated[HTMLString, ArtifactConfig(name="model_comparison")],
    Annotated[ComparisonSummary, ArtifactConfig(name="comparison_summary")],
    Annotated[pd.DataFrame, ArtifactConfig(name="per_example_results")],
]:
    """Pair the two evaluations row by row.

    Args:
        base_predictions: evaluate_base's per-example records.
        finetuned_predictions: evaluate_finetuned's records, same rows.
        metric: promotion.metric; a ROUGE score compares rows on their ROUGE, else on the usual score.

    Returns:
        An HTML page (regressions first), the better/worse/same counts, and one
        row per test example: input, expected, both outputs, per-field
        correctness of each, both latencies.
    """
    finetuned_records = finetuned_predictions.to_dict("records")
    rows = compare_examples(base_predictions.to_dict("records"), finetuned_records, metric)
    summary = comparison_summary(rows)
    log_metadata(metadata={"comparison": summary.as_metadata()}, infer_model=True)
    score = score_meaning(finetuned_records[0], metric) if finetuned_records else None
    return HTMLString(render_comparison_html(rows, score)), summary, pd.DataFrame(rows)
