"""A warm kernel runs one notebook after another in one process, each as if in a fresh kernel."""

from __future__ import annotations

from pathlib import Path

import nbformat
import papermill

from pda.kernels import WarmKernel


def _notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "pda", "language": "python", "display_name": "pda"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [nbformat.v4.new_code_cell("x = 0", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import os\nprint(os.getpid(), x, 'left_over' in globals(), os.getcwd())"),
                nbformat.v4.new_code_cell("left_over = x")]
    nbformat.write(nb, path)
    return path


def test_notebooks_share_the_process_not_the_variables_or_the_counter(tmp_path):
    source = _notebook(tmp_path / "nb.ipynb")
    printed = []
    with WarmKernel("pda", tmp_path) as warm:
        for i in range(2):
            out = tmp_path / f"out{i}.ipynb"
            papermill.execute_notebook(str(source), str(out), parameters={"x": i}, kernel_name="pda",
                                       km=warm.manager(), progress_bar=False)
            executed = nbformat.read(out, 4)
            printed.append(executed.cells[2].outputs[0]["text"].split())
            assert [c.execution_count for c in executed.cells if c.cell_type == "code"] == [1, 2, 3, 4]
        manager = warm.manager()
        assert manager.is_alive()
    assert not manager.is_alive()  # closed with its block
    assert printed[0][0] == printed[1][0]  # one process
    assert [p[1:4] for p in printed] == [["0", "False", str(tmp_path)], ["1", "False", str(tmp_path)]]


def test_a_dead_kernel_is_replaced(tmp_path):
    with WarmKernel("pda", tmp_path) as warm:
        first = warm.manager()
        first.shutdown_kernel(now=True)
        assert warm.manager() is not first and warm.manager().is_alive()
