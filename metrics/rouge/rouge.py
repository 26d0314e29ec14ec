"""ROUGE-1, ROUGE-2 and ROUGE-L F-measures on the `rouge_score` package, kept in the repo
so that it loads without the Hugging Face Hub."""

import functools

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = """
Mean ROUGE F-measures between predictions and references: unigram (rouge1) and
bigram (rouge2) overlap and longest common subsequence (rougeL), computed with
Google's `rouge_score` package.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): Predicted strings.
    references (list of str): Expected strings, one per prediction.
    use_stemmer (bool, optional): Porter-stem words before matching. Defaults to False.

Returns:
    rouge1 (float), rouge2 (float), rougeL (float): mean F-measures, between 0.0 and 1.0.

Examples:
    >>> metric = evaluate.load("metrics/rouge")
    >>> metric.compute(predictions=["the cat sat"], references=["the cat sat"])
    {'rouge1': 1.0, 'rouge2': 1.0, 'rougeL': 1.0}
"""

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@functools.lru_cache(maxsize=2)
def _scorer(use_stemmer):
    # One scorer per setting: building one per row also logs "Using default tokenizer." once per row.
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)


def score_pair(prediction, reference, use_stemmer=False):
    """One answer's ROUGE-1/2/L F-measures against its reference (the per-row scores `_compute` averages)."""
    scores = _scorer(use_stemmer).score(reference or "", prediction or "")
    return {name: float(scores[name].fmeasure) for name in ROUGE_TYPES}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
    """Mean ROUGE-1/2/L F-measure."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin, Chin-Yew. ROUGE: a package for automatic evaluation of summaries. 2004.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, predictions, references, use_stemmer=False):
        if len(predictions) == 0:
            raise ValueError("rouge needs at least one prediction/reference pair; got none.")
        if len(predictions) != len(references):
            raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
        totals = dict.fromkeys(ROUGE_TYPES, 0.0)
        for prediction, reference in zip(predictions, references, strict=True):
            scores = score_pair(prediction, reference, use_stemmer)
            for name in ROUGE_TYPES:
                totals[name] += scores[name]
        return {name: float(total / len(predictions)) for name, total in totals.items()}
