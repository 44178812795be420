"""A warm kernel runs one notebook after another in one process, each as if in a fresh kernel."""

from __future__ import annotations

from pathlib import Path

import nbformat
import papermill

from pda.kernels import KERNEL_MALLOC, KernelPool, WarmKernel, kernel_environment


def _notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "pda", "language": "python", "display_name": "pda"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [nbformat.v4.new_code_cell("x = 0", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import os\nprint(os.getpid(), x, 'left_over' in globals(), os.getcwd(), "
                                          "get_ipython().history_manager.session_number)"),
                nbformat.v4.new_code_cell("left_over = x")]
    nbformat.write(nb, path)
    return path


def test_notebooks_share_the_process_not_the_variables_or_the_counter(tmp_path):
    source = _notebook(tmp_path / "nb.ipynb")
    printed, extra = [], []
    with WarmKernel("pda", tmp_path) as warm:
        for i in range(3):
            out = tmp_path / f"out{i}.ipynb"
            papermill.execute_notebook(str(source), str(out), parameters={"x": i}, kernel_name="pda",
                                       km=warm.manager(), progress_bar=False)
            executed = nbformat.read(out, 4)
            printed.append(executed.cells[2].outputs[-1]["text"].split())
            assert [c.execution_count for c in executed.cells if c.cell_type == "code"] == [1, 2, 3, 4]
            # only the one printed line: a restarted counter must not collide with IPython's history of the
            # previous notebook ("ERROR! Session/line number was not unique in database", printed into the cell)
            extra += [o for c in executed.cells for o in c.get("outputs", [])][1:]
        manager = warm.manager()
        assert manager.is_alive()
    assert not manager.is_alive()  # closed with its block
    assert printed[0][0] == printed[1][0]  # one process
    assert [p[1:4] for p in printed] == [[str(i), "False", str(tmp_path)] for i in range(3)]
    assert len({p[4] for p in printed}) == 3  # each notebook in its own history session, as in a fresh kernel
    assert extra == []


def test_a_dead_kernel_is_replaced(tmp_path):
    with WarmKernel("pda", tmp_path) as warm:
        first = warm.manager()
        first.shutdown_kernel(now=True)
        assert warm.manager() is not first and warm.manager().is_alive()


def test_each_notebook_starts_an_empty_history_session(tmp_path):
    """The restarted counter writes lines 1, 2, ... again: the session they go to must not hold the previous
    notebook's lines, or IPython prints "Session/line number was not unique" into a cell."""
    source = _notebook(tmp_path / "nb.ipynb")
    probe = ("hm = get_ipython().history_manager\nhm.writeout_cache()\n"
             "print(hm.db.execute('SELECT COUNT(*) FROM history WHERE session = ?', (hm.session_number,)).fetchone()[0])")
    with WarmKernel("pda", tmp_path) as warm:
        papermill.execute_notebook(str(source), str(tmp_path / "out.ipynb"), parameters={"x": 1}, kernel_name="pda",
                                   km=warm.manager(), progress_bar=False)
        kc = warm.manager().client()  # manager() clears the kernel for the next notebook
        kc.start_channels()
        try:
            printed = []
            kc.execute_interactive(probe, store_history=False, timeout=60,
                                   output_hook=lambda m: printed.append(m["content"].get("text", "")))
        finally:
            kc.stop_channels()
    assert "".join(printed).split() == ["0"]


def test_a_kernel_started_from_a_dask_worker_leaves_its_malloc_setting_behind(tmp_path, monkeypatch):
    """Dask workers set MALLOC_TRIM_THRESHOLD_=65536, which made training steps 1.5x slower in a kernel that
    inherited it: the kernel gets the study's own setting instead."""
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.setenv("PDA_TEST_PASSED_ON", "yes")
    with WarmKernel("pda", tmp_path) as warm:
        kc = warm.manager().client()
        kc.start_channels()
        try:
            printed = []
            kc.execute_interactive("import os\nprint(os.environ.get('MALLOC_TRIM_THRESHOLD_'), "
                                   "os.environ.get('PDA_TEST_PASSED_ON'))", timeout=60,
                                   output_hook=lambda m: printed.append(m["content"].get("text", "")))
        finally:
            kc.stop_channels()
    assert "".join(printed).split() == [KERNEL_MALLOC["MALLOC_TRIM_THRESHOLD_"], "yes"]


def test_kernels_keep_freed_memory_unless_the_user_says_otherwise(monkeypatch):
    """The settings that spare each training step its page faults; a variable the user set is left as set."""
    monkeypatch.delenv("MALLOC_MMAP_MAX_", raising=False)
    monkeypatch.setenv("MALLOC_TOP_PAD_", "4096")
    env = kernel_environment()
    assert env["MALLOC_MMAP_MAX_"] == "0"
    assert int(env["MALLOC_TRIM_THRESHOLD_"]) >= 1 << 30
    assert env["MALLOC_TOP_PAD_"] == "4096"


class _FakeKernel:
    def __init__(self, kernel_name: str, cwd: Path) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_pool_lends_one_kernel_per_concurrent_notebook_and_reuses_it(tmp_path):
    pool = KernelPool("pda", tmp_path, factory=_FakeKernel)
    with pool.borrow() as first:
        with pool.borrow() as second:  # two notebooks at once on one worker: two kernels
            assert second is not first
    with pool.borrow() as again:  # one at a time: the same warm kernel, run after run
        assert again in (first, second)
        with pool.borrow() as other:
            assert {again, other} == {first, second}
    pool.close()
    assert first.closed and second.closed
