"""The typed result file: the committed JSON Schema is the model's, every committed
result conforms, and a malformed result is named by field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from deconvbench.leaderboard import SubmissionError, validate_result
from deconvbench.results_schema import SCHEMA_PATH, schema_text, validation_problem

REPO = Path(__file__).resolve().parent.parent
RESULTS = sorted((REPO / "results").glob("*.json"))
PRECISION = sorted((REPO / "results" / "precision").glob("*.json"))  # deconvbench bias runs


def test_committed_json_schema_is_the_models():
    assert SCHEMA_PATH.read_text() == schema_text(), "run: python -m deconvbench.results_schema"


def test_every_committed_result_conforms():
    assert len(RESULTS) >= 20
    for path in RESULTS:
        assert validation_problem(json.loads(path.read_text())) is None, path.name


def test_committed_precision_runs_conform_and_match_the_readme():
    """The streaming bias results behind the README's precision table: valid result files of
    ``deconvbench bias`` whose m ± σm are the table's."""
    readme = (REPO / "README.md").read_text()
    assert len(PRECISION) >= 6
    for path in PRECISION:
        data = json.loads(path.read_text())
        assert validation_problem(data) is None, path.name
        assert data["metacal"]["mode"] == "streaming-bias" and data["command"].endswith(
            f"--out results/precision/{path.name}"
        )
        overall = data["metacal"]["overall"]
        assert f"{overall['m']:+.2e} ± {overall['m_err']:.1e}".replace("-", "−") in readme.replace("-", "−"), path.name


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["throughput"].pop("batch_size"), "field 'throughput.batch_size': Field required"),
        (lambda d: d["failures"].update(raised=-1), "field 'failures.raised'"),
        (lambda d: d["dataset"].update(n="many"), "field 'dataset.n'"),
        (lambda d: d["metrics"].pop("overall"), "field 'metrics.overall': Field required"),
        (lambda d: d.update(peak_memory_mb=0), "field 'peak_memory_mb'"),
    ],
)
def test_schema_names_the_field(edit, message):
    data = json.loads(RESULTS[0].read_text())
    bad = copy.deepcopy(data)
    edit(bad)
    assert validation_problem(bad).startswith(message)
    with pytest.raises(SubmissionError, match=message.replace("(", r"\(")):
        validate_result(bad)
