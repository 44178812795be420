"""The artefact stays readable: executed notebooks name no machine's folders, write nothing to stderr,
print tables without raw floats, leave one line per progress bar, and render to offline HTML pages."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
import yaml

from pda.progress import Progress
from pda.records import RunRecord, write_record
from pda.study import NOTEBOOKS_DIR, execute_notebook, notebook_path, run_study
from tests.conftest import ROOT

# A float printed raw: a count with '.0' (22940066.0), NaN, 4+ significant decimals (76.9231, 0.78912) or an
# exponent (3.6e-05);
# three significant digits of a small value (0.0747 Wh) are a format, not a raw float.
RAW_FLOAT = re.compile(r"(?<![\w.])\d{4,}\.0(?![\d])|\b(?:nan|NaN)\b|(?<![\w.])\d+\.0*[1-9]\d{3,}|\d[eE][+-]\d+")


def machine_paths(*extra: Path) -> list[str]:
    """Folders that would tie an executed notebook to this machine."""
    found = {str(ROOT), sys.prefix, str(Path.home()), *map(str, extra)}
    return sorted(p for p in found if len(p) > 1)


def outputs_text(cell: dict) -> list[tuple[str, str]]:
    """(kind, text) of a cell's outputs: streams by name, displays and results by mime type."""
    out = []
    for o in cell.get("outputs", []):
        if o["output_type"] == "stream":
            out.append((f"stream:{o['name']}", "".join(o["text"])))
        elif o["output_type"] in ("display_data", "execute_result"):
            out += [(mime, "".join(v)) for mime, v in o["data"].items() if mime.startswith("text/")]
        elif o["output_type"] == "error":
            out.append(("error", "\n".join(o["traceback"])))
    return out


def readability_problems(path: Path, *extra_paths: Path) -> list[str]:
    """Everything in one executed notebook that the artefact promises a reader will not meet."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    problems = []  # IPython's own errors ("ERROR! Session/line number ...") go to stdout, so look there too
    for i, cell in enumerate(nb["cells"]):
        texts = [("source", "".join(cell["source"]))] + outputs_text(cell)
        for kind, text in texts:
            problems += [f"{path.name} cell {i} {kind}: absolute path {p}" for p in machine_paths(*extra_paths)
                         if p in text]
            if kind == "stream:stderr" or kind == "error" or (kind.startswith("stream") and "ERROR!" in text):
                problems.append(f"{path.name} cell {i}: {kind}: {text[:300]!r}")
            if kind.startswith("text/") and cell["cell_type"] == "code" and (hit := RAW_FLOAT.search(text)):
                problems.append(f"{path.name} cell {i} {kind}: raw float {hit.group(0)!r}")
            if "application/vnd.jupyter.widget-view+json" in kind:
                problems.append(f"{path.name} cell {i}: a widget view is saved instead of its final line")
    if "widgets" in nb.get("metadata", {}):
        problems.append(f"{path.name}: widget state saved in the metadata")
    return problems


# --------------------------------------------------------------------------- progress

def test_progress_outside_a_notebook_is_a_bar_that_clears_and_a_summary(capsys) -> None:
    bar = Progress(3, "demo", notebook=False, mininterval=0)
    for _ in range(3):
        bar.update(1)
    bar.set_postfix(loss="0.123", refresh=False)
    bar.close()
    err = capsys.readouterr().err
    assert "demo" in err and "3/3" in err  # tqdm drew on stderr, not stdout
    assert re.fullmatch(r"demo: 3/3 steps in \d+\.\d s, loss 0\.123", bar.summary())


def test_progress_in_an_executed_notebook_leaves_one_final_line(tmp_path) -> None:
    """Executed headless (papermill, as a study does), a loop's widget becomes its single final line."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from pda.progress import Progress\n"
        "for name in ('first', 'second'):\n"
        "    bar = Progress(4, name, mininterval=0)\n"
        "    for _ in range(4):\n"
        "        bar.update(1)\n"
        "        bar.set_postfix(loss='0.5', refresh=False)\n"
        "    bar.close()\n"
        "print('done')")])
    nb.metadata["kernelspec"] = {"name": "pda", "display_name": "pda", "language": "python"}
    source, executed = tmp_path / "loop.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, source)
    execute_notebook(str(source), executed, {})
    outputs = nbformat.read(executed, as_version=4).cells[-1].outputs
    kinds = [(o.output_type, sorted(o.get("data", {})) or o.get("name")) for o in outputs]
    assert kinds == [("display_data", ["text/plain"]), ("display_data", ["text/plain"]), ("stream", "stdout")], kinds
    for o, name in zip(outputs, ("first", "second")):
        assert re.fullmatch(rf"{name}: 4/4 steps in \d+\.\d s, loss 0\.5", o.data["text/plain"])
    assert not readability_problems(executed, tmp_path)


# --------------------------------------------------------------------------- paths

def test_notebook_paths_are_relative_inside_the_project_absolute_outside(tmp_path) -> None:
    assert notebook_path(ROOT / "parameters" / "default.yaml") == "../parameters/default.yaml"
    assert notebook_path(Path("parameters/smoke.yaml").resolve()) == os.path.relpath(
        Path("parameters/smoke.yaml").resolve(), NOTEBOOKS_DIR)
    assert notebook_path(tmp_path / "mine.yaml") == str(tmp_path / "mine.yaml")  # a user's own file elsewhere


# --------------------------------------------------------------------------- the committed notebooks

@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb")))
def test_committed_notebooks_are_readable(name: str) -> None:
    """What a reader opening notebooks/ in JupyterLab meets: the smoke outputs committed with them."""
    assert readability_problems(NOTEBOOKS_DIR / name) == []


# --------------------------------------------------------------------------- a real (tiny) study

@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory) -> SimpleNamespace:
    """FT and P at 60 % on MRPC, the analysis notebook and the HTML pages, from a parameter file in the
    project's parameters/ (as a user's would be), written to a temporary output folder."""
    out = tmp_path_factory.mktemp("artefact") / "outputs"
    params = yaml.safe_load((ROOT / "parameters" / "smoke.yaml").read_text())
    params.update(tasks=["mrpc"], scenarios=["FT", "P"], data_dir="data/glue", output_dir=str(out), torch_threads=1,
                  max_train_samples=32, max_eval_samples=32,
                  measure={"batch_sizes": [1], "seq_len": 32, "warmup": 0, "rounds": 2, "threads": 1, "energy": False},
                  pruning={"epochs": 1, "finetune_epochs": 1, "sparsity_warmup_ratio": 0.5})
    path = ROOT / "parameters" / f".pytest-artefact-{os.getpid()}.yaml"
    path.write_text(yaml.safe_dump(params))
    foreign = RunRecord(run_id="rte-A-seed0", task="rte", scenario="A", prune=False, distill=False, adapters=True,
                        sparsity=None, seed=0, model="m", main_metric="accuracy", main_metric_value=47.3,
                        metrics={"accuracy": 47.3})
    write_record(foreign, out / "runs" / foreign.run_id)  # another study's run in the same folder
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# another study's run")]),
                   out / "runs" / foreign.run_id / "notebook.ipynb")
    try:
        outcomes = run_study(path)
    finally:
        path.unlink()
    return SimpleNamespace(out=out, outcomes=outcomes, params=path)


def test_executed_study_notebooks_are_readable(tiny_study) -> None:
    assert {o.spec.run_id: o.status for o in tiny_study.outcomes} == {"mrpc-FT-seed0": "done",
                                                                      "mrpc-P-sp60-seed0": "done"}
    executed = [*sorted((tiny_study.out / "runs").glob("mrpc-*/notebook.ipynb")),
                tiny_study.out / "notebooks" / "99_analysis.ipynb"]
    assert len(executed) == 3
    problems = [p for nb in executed for p in readability_problems(nb, tiny_study.out)]
    assert problems == []
    injected = json.loads(executed[1].read_text())["cells"]
    injected = next(c for c in injected if "injected-parameters" in c["metadata"].get("tags", []))
    assert f'params_file = "../parameters/{tiny_study.params.name}"' in "".join(injected["source"])
    pruned = json.loads(executed[1].read_text())
    lines = [t for c in pruned["cells"] for kind, t in outputs_text(c) if kind == "text/plain" and " steps in " in t]
    assert [line.split(":")[0] for line in lines] == ["prune mrpc P 0.6", "fine-tune pruned mrpc P"], lines


def test_the_analysis_leaves_out_another_studys_run_in_its_folder(tiny_study) -> None:
    nb = json.loads((tiny_study.out / "notebooks" / "99_analysis.ipynb").read_text())
    text = "".join(t for c in nb["cells"] for _, t in outputs_text(c))
    assert "2 run records of this study; 1 other(s) in its folder left out" in text
    assert not re.search(r"\brte\b", text) and "47.3" not in text
    report = (tiny_study.out / "report.md").read_text(encoding="utf-8")
    assert "1 other record(s) in that folder belong to other studies" in report and not re.search(r"\brte\b", report)


def test_analysis_tables_have_units_and_dashes(tiny_study) -> None:
    nb = json.loads((tiny_study.out / "notebooks" / "99_analysis.ipynb").read_text())
    html = "".join(t for c in nb["cells"] for kind, t in outputs_text(c) if kind == "text/html")
    headers = set(re.findall(r"<th[^>]*>([^<]*)</th>", html))
    assert {"params (M)", "score (%)", "target sparsity (%)", "speed-up b1 (×)", "mrpc f1 (%)"} <= headers, headers
    assert re.search(r"<td[^>]*>—</td>", html)  # the FT run's target sparsity does not apply
    assert "(n=1)" in html and "± nan" not in html and "± 0.00" not in html


def test_index_html_links_every_run_and_opens_offline(tiny_study) -> None:
    index = (tiny_study.out / "index.html").read_text(encoding="utf-8")
    pages = {rid: tiny_study.out / "runs" / rid / "notebook.html" for rid in ("mrpc-FT-seed0", "mrpc-P-sp60-seed0")}
    assert index.index("Analysis: which recipe") < index.index("Every run")  # the analysis first
    # another study's run in the folder: neither listed nor rendered, but counted
    assert "1 other run(s) in this folder belong to other studies" in index and "rte-A-seed0" not in index
    assert not (tiny_study.out / "runs" / "rte-A-seed0" / "notebook.html").exists()
    for rid, page in pages.items():
        assert f'href="runs/{rid}/notebook.html"' in index
        text = page.read_text(encoding="utf-8")
        assert 'href="../../index.html"' in text and "data:image/png;base64," in text  # back link, inline figures
        assert not re.search(r"""<(?:script|link)[^>]+(?:src|href)=["']https?:""", text)
        assert _alt_texts(text) and "No description" not in text  # every figure described, none by nbconvert
    assert index.count("data:image/png;base64,") >= 6  # the six figures, inline
    assert not re.search(r"""<(?:script|link)[^>]+(?:src|href)=["']https?:""", index)  # nothing fetched
    alts = _alt_texts(index)
    assert len(alts) == index.count("<img") >= 6 and "No description" not in index
    assert any(alt.startswith("Dev-set") or "against" in alt for alt in alts), alts  # the figure's own labels


def _alt_texts(html: str) -> list[str]:
    """The alt text of every <img>, failing on an <img> without one."""
    tags = re.findall(r"<img\b[^>]*>", html)
    alts = [re.search(r'alt="([^"]*)"', tag) for tag in tags]
    assert all(alts), [tag[:80] for tag, alt in zip(tags, alts) if not alt]
    return [alt.group(1) for alt in alts]


def test_a_saved_figure_carries_its_description_and_a_shown_one_its_alt_text(tmp_path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from pda import plots, views

    fig = Figure()
    fig.suptitle("Speed-up  by scenario\nn = 3 seeds")
    left, right = fig.subplots(1, 2)
    left.set(title="batch size 1", xlabel="scenario", ylabel="speed-up (×)")
    right.set(title="batch size 32", ylabel="speed-up (×)")
    fig.colorbar(right.imshow([[0.0, 1.0]]), ax=right, label="fraction kept")
    description = plots.describe_figure(fig)
    assert description == ("Speed-up by scenario. n = 3 seeds. batch size 1; speed-up (×) against scenario | "
                           "batch size 32; speed-up (×) | colour: fraction kept")
    png, svg = plots.save_figure(fig, tmp_path, "fig")
    assert plots.figure_alt_text(png) == description and "Speed-up by scenario" in svg.read_text(encoding="utf-8")
    shown = plt.figure()
    shown.gca().set(xlabel="step", ylabel="training loss")
    image = views.show_figure(shown)
    assert image.alt == "training loss against step" and image.data.startswith(b"\x89PNG")
    assert not plt.fignum_exists(shown.number)  # closed: the notebook shows it once


def test_site_lists_a_parameter_files_runs_or_every_run_of_a_folder(make_params, tmp_path) -> None:
    from pda import site

    params = make_params()  # the smoke grid (MRPC and STS-B), written to tmp_path/outputs
    runs = tmp_path / "outputs" / "runs"
    for rid in ("mrpc-FT-seed0", "rte-A-seed0"):  # a run of that grid and another study's, both failed
        (runs / rid).mkdir(parents=True)
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {rid}")]),
                       runs / rid / "notebook.ipynb")
    assert site.main(["--params", str(params)]) == 0
    index = (tmp_path / "outputs" / "index.html").read_text(encoding="utf-8")
    assert 'href="runs/mrpc-FT-seed0/notebook.html"' in index and "rte-A-seed0" not in index
    assert "1 other run(s) in this folder belong to other studies" in index
    assert site.main([str(tmp_path / "outputs")]) == 0  # the folder alone: every run
    index = (tmp_path / "outputs" / "index.html").read_text(encoding="utf-8")
    assert 'href="runs/rte-A-seed0/notebook.html"' in index and "other studies" not in index
    with pytest.raises(SystemExit):
        site.main([])


def test_site_without_an_analysis_or_runs_still_renders_and_a_failure_is_reported(tmp_path) -> None:
    from pda import site

    (tmp_path / "runs" / "x-FT-seed0").mkdir(parents=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# a run that failed")])
    nbformat.write(nb, tmp_path / "runs" / "x-FT-seed0" / "notebook.ipynb")  # no result.json: failed
    index = site.write_site(tmp_path).read_text(encoding="utf-8")
    assert "has not run yet" in index and 'href="runs/x-FT-seed0/notebook.html"' in index and "failed" in index
    (tmp_path / "runs" / "x-FT-seed0" / "notebook.ipynb").write_text("{not json")
    note = site.site_note(tmp_path)
    assert note.startswith("could not render") and note.endswith(f"(retry: python -m pda.site {tmp_path})")
    params = tmp_path / "study.yaml"
    assert site.site_note(tmp_path, params_file=params).endswith(f"(retry: python -m pda.site --params {params})")
