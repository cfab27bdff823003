"""docs/tutorial.ipynb: kept without outputs, and it runs from start to end in a kernel of
this interpreter, on the photographs and on the embedded data, leaving the repository as it
was."""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from tests.support import ROOT

pytestmark = pytest.mark.slow

DOCS = ROOT / "docs"
NOTEBOOK = DOCS / "tutorial.ipynb"


def untracked_and_ignored() -> set[str]:
    """Every file git does not track, new or ignored (outputs/, mlruns/, mlflow.db,
    data/..., each file listed, also inside folders that already exist), bytecode left out."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=ROOT, capture_output=True, text=True, check=False)
    if status.returncode != 0:
        pytest.skip(f"not a git checkout ({status.stderr.strip()})")
    return {line for line in status.stdout.splitlines()
            if line[:2] in ("??", "!!") and "__pycache__" not in line}


def text_of(nb: nbformat.NotebookNode, cell_id: str) -> str:
    """What the cell with this id printed."""
    (cell,) = [c for c in nb.cells if c.get("id") == cell_id]
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_the_notebook_is_kept_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.id


@pytest.mark.parametrize("data", ["photo", "embedded"])
def test_the_notebook_runs_and_writes_nothing_into_the_repository(data, tmp_path, monkeypatch):
    if data == "photo" and not (ROOT.parent / "shared" / "data" / "sign-language-digits").is_dir():
        pytest.skip("../shared/data/sign-language-digits not found: the photograph path")
    monkeypatch.setenv("TUTORIAL_DATA", data)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's tempfile: its run goes here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline figures
    before = untracked_and_ignored()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # No kernel folders: only ipykernel's own spec, which starts this interpreter
    kernels = KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)
    km = KernelManager(kernel_name="python3", kernel_spec_manager=kernels)
    try:
        NotebookClient(nb, km=km, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(DOCS)}}).execute()
    finally:  # nbclient shuts down only the kernels of managers it made itself
        if km.has_kernel:
            km.shutdown_kernel(now=True)

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert errors == []
    assert f"python:     {sys.executable}\n" in text_of(nb, "setup")
    assert ("data: photograph" if data == "photo" else "data: embedded") in text_of(nb, "photo")
    equal = text_of(nb, "equal")
    assert equal.count("max |fast - reference| =") == 8, equal
    found = text_of(nb, "search")
    assert f"1 run in sqlite:///{tmp_path}" in found and "FINISHED" in found, found
    artifacts = text_of(nb, "artifacts")
    assert {"feature_maps/", "filters/", "misclassified.png", "saliency.png"} <= set(
        artifacts.split()), artifacts
    (picture,) = [c for c in nb.cells if c.get("id") == "picture"]
    assert any(o.output_type == "display_data" and "image/png" in o.data
               for o in picture.outputs)  # a feature maps PNG, shown inline
    assert f"ui --backend-store-uri sqlite:///{tmp_path}" in text_of(nb, "ui")
    assert untracked_and_ignored() == before
