"""The analysis notebooks: stored without outputs, and each runs end to end with plots.

Each notebook is executed with nbclient in a real ipykernel against a small database built
with the project's own writers (``test_report.build_sample``: generated workload, ranking,
warm runs, an incident, a drift event), not the full ``warmer demo`` (too slow here).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell
from test_report import PARAMS, Sample, build_sample, record_drift

from analytics import report

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("usage", "backtest", "operations")


def _read(name: str) -> Any:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)  # type: ignore[no-untyped-call]


def _outputs(nb: Any, kind: str) -> list[Any]:
    return [o for c in nb.cells for o in c.get("outputs", []) if kind in o.get("data", {})]


def _stdout(nb: Any) -> str:
    return "".join(
        o["text"] for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stdout"
    )


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_without_outputs(name: str) -> None:
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [], f"{name}: a cell was saved with outputs"
        assert cell.execution_count is None, f"{name}: a cell was saved with an execution count"
    # Reads the database through analytics.report, never with SQL of its own.
    source = "\n".join(c.source for c in code)
    assert "from analytics import report" in source
    assert "select " not in source.lower() and "sqlalchemy" not in source
    assert 'os.environ.get("WARMER_DB"' in source


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    built = build_sample(tmp_path_factory.mktemp("notebooks"))
    record_drift(built.url)
    return built


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_against_a_database_and_plots(
    name: str, sample: Sample, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = sample
    monkeypatch.setenv("WARMER_DB", built.url)
    monkeypatch.setenv("WARMER_CATALOGUE", str(built.catalogue))
    monkeypatch.setenv("WARMER_CONFIG", str(built.config))
    monkeypatch.setenv("WARMER_BUDGETS", "256MiB,1GiB,4GiB")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the notebooks draw inline
    nb = _read(name)
    # The kernel must be this environment's interpreter (the project is installed here).
    nb.cells.append(new_code_cell("import sys; print('prefix=' + sys.prefix)"))  # type: ignore[no-untyped-call]
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises CellExecutionError with the failing cell and its traceback

    assert _outputs(nb, "image/png"), f"{name}: no figure drawn"
    out = _stdout(nb)
    assert f"prefix={sys.prefix}" in out
    tables = "".join(o["data"]["text/plain"] for o in _outputs(nb, "text/plain"))
    if name == "usage":
        assert f"{len(built.work.pulls)} pulls" in out
        top = (built.work.pulls["image"] + ":" + built.work.pulls["tag"]).value_counts()
        assert top.index[0] in tables  # the top-images table
        assert "named and pulled" in out
        usage, static = report.load_usage(built.url), report.load_static(built.url)
        fell = report.files_stopped_naming(usage, static, n=4)["reference"].nunique()
        assert fell >= 1 and f"{fell} pulled image tags named by fewer files than before" in out
    elif name == "backtest":
        assert f"{7 * PARAMS.weeks - 7} days scored per budget" in out
        assert "of_oracle" in tables and "1.0 GiB" in tables
    else:
        assert "2 runs, 24 items" in out and "'central': 40000000.0" in out
        assert "digest-mismatch" in tables
        assert "docker.io/library/python:3.12" in tables  # the drift table
