"""Field-level scoring of JSON objects extracted from customer-support emails.

`evaluate` copies this file into its own module cache and imports it there, so it
imports nothing from the project; `llm_lora.metrics` imports this file's rules for
per-example scoring, so both use one copy.
"""

import json
import re

import datasets
import evaluate

_DESCRIPTION = """
Scores model outputs that should be one JSON object against reference JSON objects.
A prediction counts as valid JSON when, after stripping whitespace and unwrapping one
Markdown code fence (```json ... ``` or ``` ... ```), it parses to a JSON object.
Values are compared after normalization: strings are stripped and casefolded, numbers
are compared by value, null only equals null, and a missing key is always wrong.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): Raw model outputs.
    references (list of str): Expected JSON objects, one per prediction.
    fields (list of str, optional): Fields to score. Defaults to the union of the
        references' keys in first-seen order.

Returns:
    valid_json_rate (float): Share of predictions that parse to a JSON object.
    exact_match (float): Share of predictions with exactly the reference's keys and
        every value equal after normalization.
    field_accuracy/<field> (float): Share of predictions with that field's value
        equal to the reference's after normalization.
    mean_field_accuracy (float): Mean of the per-field accuracies.

Examples:
    >>> metric = evaluate.load("metrics/json_fields")
    >>> metric.compute(predictions=['{"a": "X "}'], references=['{"a": "x"}'])
    {'valid_json_rate': 1.0, 'exact_match': 1.0, 'field_accuracy/a': 1.0, 'mean_field_accuracy': 1.0}
"""

# Matches a whole answer wrapped in one code fence, optionally tagged "json".
_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL | re.IGNORECASE)

# Stands in for a key the object does not have; it equals nothing, not even null.
_MISSING = object()


def parse_json_object(text):
    """Parse a model answer into a JSON object, or None when it is not one.

    Args:
        text: Raw model output.

    Returns:
        The parsed dict, or None when the text is not exactly one JSON object
        (optionally inside a Markdown code fence).
    """
    if not isinstance(text, str):
        return None
    text = text.strip()
    fenced = _FENCE.fullmatch(text)
    if fenced is not None:
        text = fenced.group(1)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def normalize_value(value):
    """Bring a JSON value into the form used for comparison.

    Args:
        value: A value decoded from JSON, or the missing-key marker.

    Returns:
        A comparable value: stripped casefolded strings; numbers tagged so that
        booleans never equal 0 or 1; anything else unchanged.
    """
    if isinstance(value, str):
        return value.strip().casefold()
    # bool is an int subclass in Python, and true must not equal 1.
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    return value


def field_matches(prediction, reference, field):
    """Whether a parsed prediction has the reference's value for one field.

    Args:
        prediction: Parsed prediction, or None when it did not parse.
        reference: Parsed reference.
        field: The key to compare.

    Returns:
        True when the prediction parsed and both sides hold equal normalized values,
        or both lack the key.
    """
    if prediction is None:
        return False
    predicted = prediction.get(field, _MISSING)
    expected = reference.get(field, _MISSING)
    if predicted is _MISSING or expected is _MISSING:
        return predicted is expected
    return normalize_value(predicted) == normalize_value(expected)


def object_matches(prediction, reference):
    """Whether a parsed prediction equals the reference on every key, with no extra keys.

    Args:
        prediction: Parsed prediction, or None when it did not parse.
        reference: Parsed reference.

    Returns:
        True for an exact match after normalization.
    """
    if prediction is None or set(prediction) != set(reference):
        return False
    return all(field_matches(prediction, reference, field) for field in reference)


def parse_references(references):
    """Parse the references, which must all be JSON objects.

    Args:
        references: Expected JSON strings.

    Returns:
        The parsed dicts.

    Raises:
        ValueError: When a reference is not a JSON object, since it could not be scored.
    """
    parsed = []
    for index, reference in enumerate(references):
        value = parse_json_object(reference)
        if value is None:
            raise ValueError(f"Reference {index} is not a JSON object: {reference!r}")
        parsed.append(value)
    return parsed


def reference_fields(references):
    """The union of the references' keys, in first-seen order.

    Args:
        references: Parsed references.

    Returns:
        Field names.
    """
    fields = {}
    for reference in references:
        for key in reference:
            fields.setdefault(key, None)
    return list(fields)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class JsonFields(evaluate.Metric):
    """Valid-JSON rate, exact match and per-field accuracy of extracted JSON objects."""

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

    def _compute(self, predictions, references, fields=None):
        if len(predictions) == 0:
            raise ValueError("json_fields needs at least one prediction/reference pair; got none.")
        if len(predictions) != len(references):
            raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
        expected = parse_references(references)
        fields = list(fields) if fields is not None else reference_fields(expected)
        if not fields:
            raise ValueError(
                "json_fields has no fields to score: the references are empty objects and no fields were given."
            )
        parsed = [parse_json_object(prediction) for prediction in predictions]
        count = len(parsed)

        results = {
            "valid_json_rate": sum(p is not None for p in parsed) / count,
            "exact_match": sum(object_matches(p, r) for p, r in zip(parsed, expected, strict=True)) / count,
        }
        accuracies = []
        for field in fields:
            accuracy = sum(field_matches(p, r, field) for p, r in zip(parsed, expected, strict=True)) / count
            results[f"field_accuracy/{field}"] = accuracy
            accuracies.append(accuracy)
        results["mean_field_accuracy"] = sum(accuracies) / len(accuracies)
        return {key: float(value) for key, value in results.items()}
