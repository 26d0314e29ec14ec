"""Accuracy of label answers against a closed set of labels, kept in the repo so that it
loads without the Hugging Face Hub."""

import datasets
import evaluate

_DESCRIPTION = """
For classification tasks answered in text: each prediction and reference is a label.
Labels are compared after stripping whitespace and surrounding quotes and casefolding.
Predictions outside the label set (all references' labels, or the `labels` given)
count as wrong and are counted separately.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): Predicted labels.
    references (list of str): Expected labels, one per prediction.
    labels (list of str, optional): The closed label set. Defaults to the references' labels.

Returns:
    accuracy (float): Share of predictions equal to their reference label.
    out_of_set_rate (float): Share of predictions that are not a known label.
    macro_f1 (float): Unweighted mean F1 over the reference labels.

Examples:
    >>> metric = evaluate.load("metrics/classification_accuracy")
    >>> metric.compute(predictions=["Spam", "ham", "maybe"], references=["spam", "spam", "ham"])
    {'accuracy': 0.333..., 'out_of_set_rate': 0.333..., 'macro_f1': 0.333...}
"""


def normalize(label):
    """Strip whitespace and quotes, casefold; None stays None.

    Args:
        label: A label string or None.

    Returns:
        The label in comparable form.
    """
    if label is None:
        return None
    return label.strip().strip("\"'`").strip().casefold()


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClassificationAccuracy(evaluate.Metric):
    """Label accuracy, out-of-set rate and macro F1."""

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

    def _compute(self, predictions, references, labels=None):
        if len(predictions) == 0:
            raise ValueError("classification_accuracy needs at least one prediction/reference pair; got none.")
        if len(predictions) != len(references):
            raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
        predicted = [normalize(p) for p in predictions]
        expected = [normalize(r) for r in references]
        known = {normalize(label) for label in labels} if labels else set(expected)
        count = len(predicted)
        correct = sum(p == r for p, r in zip(predicted, expected, strict=True))
        out_of_set = sum(p not in known for p in predicted)
        f1_scores = []
        for label in sorted(set(expected)):
            true_positive = sum(p == label and r == label for p, r in zip(predicted, expected, strict=True))
            predicted_count = sum(p == label for p in predicted)
            expected_count = sum(r == label for r in expected)
            precision = true_positive / predicted_count if predicted_count else 0.0
            recall = true_positive / expected_count
            f1_scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        return {
            "accuracy": float(correct / count),
            "out_of_set_rate": float(out_of_set / count),
            "macro_f1": float(sum(f1_scores) / len(f1_scores)),
        }
