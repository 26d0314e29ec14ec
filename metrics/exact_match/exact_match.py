"""Plain string exact match, kept in the repo so it loads without the Hugging Face Hub."""

import datasets
import evaluate

_DESCRIPTION = """
Share of predictions that equal their reference string, optionally after stripping
surrounding whitespace and ignoring case.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): Predicted strings.
    references (list of str): Expected strings, one per prediction.
    ignore_case (bool, optional): Compare casefolded strings. Defaults to False.
    strip (bool, optional): Strip surrounding whitespace before comparing. Defaults to False.

Returns:
    exact_match (float): Share of exact matches, between 0.0 and 1.0.

Examples:
    >>> metric = evaluate.load("metrics/exact_match")
    >>> metric.compute(predictions=["Refund ", "fix"], references=["refund", "repair"], ignore_case=True, strip=True)
    {'exact_match': 0.5}
"""


def prepare(text, ignore_case, strip):
    """Apply the requested normalization to one string.

    Args:
        text: The string, or None for a missing value (left as is).
        ignore_case: Casefold the string.
        strip: Strip surrounding whitespace.

    Returns:
        The normalized string.
    """
    if text is None:
        return None
    if strip:
        text = text.strip()
    if ignore_case:
        text = text.casefold()
    return text


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    """Share of predictions identical to their reference."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, predictions, references, ignore_case=False, strip=False):
        if len(predictions) == 0:
            raise ValueError("exact_match needs at least one prediction/reference pair; got none.")
        if len(predictions) != len(references):
            raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
        matches = sum(
            prepare(prediction, ignore_case, strip) == prepare(reference, ignore_case, strip)
            for prediction, reference in zip(predictions, references, strict=True)
        )
        return {"exact_match": float(matches / len(predictions))}
