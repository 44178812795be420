"""The study for readers without Jupyter: ``index.html`` (the analysis, then every run) rendered with nbconvert.

``<output_dir>/index.html`` is the executed analysis notebook followed by a table of every run of the study
(headline numbers, a link to the run's notebook); each run's executed notebook becomes
``runs/<run_id>/notebook.html`` beside it, with a link back. Pages are self-contained: figures
are inline images, the CSS is inlined, and no script or font is fetched from the network, so
they open offline from the file system.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterable
from pathlib import Path

import nbformat
import pandas as pd
from jinja2 import DictLoader

from pda.analysis import records_frame, runs_table
from pda.analysis.tables import html_table
from pda.records import RESULT_FILE, atomic_write_text, read_record

INDEX = "index.html"
RUN_PAGE = "notebook.html"
ANALYSIS_NOTEBOOK = Path("notebooks") / "99_analysis.ipynb"
# JupyterLab's look without the scripts it would fetch from a CDN (require.js, MathJax, mermaid, widgets); a
# PNG output's alt text (IPython's ``Image(alt=...)``, which the lab template drops) on its <img>.
OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block data_png scoped -%}
<div class="jp-RenderedImage jp-OutputArea-output {{ extra_class }}">
{%- set alt = output | get_metadata('alt', 'image/png') %}
<img src="data:image/png;base64,{{ output.data['image/png'] | escape_html }}"
{%- if alt %} alt="{{ alt | escape_html }}"{% endif %}>
</div>
{%- endblock data_png -%}
"""


def render_html(nb: nbformat.NotebookNode, title: str, before: str = "", after: str = "") -> str:
    """One executed notebook as a self-contained HTML page, with markdown ``before`` and ``after`` its cells."""
    from nbconvert import HTMLExporter

    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)  # widget views need scripts from the network; their final text stays
    nb.metadata["title"] = title
    if before:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(before))
    if after:
        nb.cells.append(nbformat.v4.new_markdown_cell(after))
    exporter = HTMLExporter(template_name="lab", extra_loaders=[DictLoader({"pda_offline.html.j2": OFFLINE_TEMPLATE})],
                            template_file="pda_offline.html.j2", exclude_input_prompt=True,
                            exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    return body


def run_notebooks(runs_dir: Path, run_ids: Iterable[str] | None = None) -> tuple[list[Path], int]:
    """The run folders with an executed notebook (only ``run_ids``' if given), and how many others were left out."""
    folders = sorted(p.parent for p in Path(runs_dir).glob("*/notebook.ipynb"))
    if run_ids is None:
        return folders, 0
    wanted = set(run_ids)
    kept = [d for d in folders if d.name in wanted]
    return kept, len(folders) - len(kept)


def runs_index(notebooks: list[Path], others: int = 0) -> str:
    """Markdown: the runs ``notebooks`` (their folders, from ``run_notebooks``) with their headline numbers and
    a link to each page; ``others``: the folder's runs of other studies, counted, not listed."""
    done = [d for d in notebooks if (d / RESULT_FILE).is_file()]
    failed = [d for d in notebooks if not (d / RESULT_FILE).is_file()]
    parts = ["## Every run's notebook", ""]
    if others:
        parts += [f"{others} other run(s) in this folder belong to other studies and are not listed "
                  "(`python -m pda.site` with the folder alone lists every run).", ""]
    if not notebooks:
        return "\n".join(parts + ["No run has an executed notebook yet."])
    if done:
        table = runs_table(records_frame([read_record(d) for d in done]), run_ids=True)
        parts += [f"{len(done)} finished run(s); a run's link opens its executed notebook. "
                  "'—': does not apply (unpruned), 'n/a': not measured.", "",
                  html_table(table, links={"run": [f"runs/{rid}/{RUN_PAGE}" for rid in table["run"]]}), ""]
    if failed:
        rows = pd.DataFrame({"run": [d.name for d in failed],
                             "status": ["failed: no result.json; the notebook shows the error"] * len(failed)})
        parts += [f"{len(failed)} run(s) without a result:", "",
                  html_table(rows, links={"run": [f"runs/{d.name}/{RUN_PAGE}" for d in failed]}), ""]
    return "\n".join(parts)


def write_site(output_dir: Path, run_ids: Iterable[str] | None = None) -> Path:
    """Render ``output_dir``'s executed notebooks to HTML (index first) and return the index's path.

    ``run_ids``: the study's runs (``pda.runs.expand_grid``), the only ones rendered and listed, as the
    analysis above them covers only those; None: every run in the folder.
    """
    output_dir = Path(output_dir)
    runs_dir = output_dir / "runs"
    notebooks, others = run_notebooks(runs_dir, run_ids)
    for folder in notebooks:
        notebook = folder / "notebook.ipynb"
        page = render_html(nbformat.read(notebook, as_version=4), folder.name,
                           before=f"[← all results of the study](../../{INDEX})")
        atomic_write_text(notebook.with_name(RUN_PAGE), page)
    analysis = output_dir / ANALYSIS_NOTEBOOK
    if analysis.is_file():
        nb = nbformat.read(analysis, as_version=4)
    else:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
            f"# Study results\n\nThe analysis notebook (`{ANALYSIS_NOTEBOOK.as_posix()}`) has not run yet.")])
    index = output_dir / INDEX
    atomic_write_text(index, render_html(nb, "PDA study: results", after=runs_index(notebooks, others)))
    return index


def site_note(output_dir: Path, run_ids: Iterable[str] | None = None, params_file: Path | None = None) -> str:
    """Write the pages and say where they are; a rendering error is reported, never raised, so that
    the study that just ran still reports its runs, with the command that renders them again."""
    try:
        return f"results for reading without Jupyter: {write_site(output_dir, run_ids)}"
    except Exception as exc:  # noqa: BLE001 - the study's outcomes matter more than its HTML
        retry = f"--params {params_file}" if params_file is not None else str(output_dir)
        return (f"could not render {Path(output_dir) / INDEX}: {type(exc).__name__}: {exc} "
                f"(retry: python -m pda.site {retry})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pda.site", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, nargs="?",
                        help="an output folder (holds runs/ and notebooks/): every run in it is listed")
    parser.add_argument("--params", type=Path, help="a parameter file: its output folder, listing its runs only")
    args = parser.parse_args(argv)
    run_ids = None
    if args.params is not None:
        from pda.config import ConfigError, load_params
        from pda.runs import expand_grid

        try:
            cfg = load_params(args.params)
        except ConfigError as err:
            parser.error(str(err))
        run_ids = [spec.run_id for spec in expand_grid(cfg)]
        if args.output_dir is None:
            args.output_dir = Path(cfg.output_dir)
    if args.output_dir is None:
        parser.error("give an output folder (e.g. outputs) or --params FILE")
    if not (args.output_dir / "runs").is_dir():
        parser.error(f"{str(args.output_dir)!r} has no runs/ folder; give a study's output_dir (e.g. outputs)")
    print(write_site(args.output_dir, run_ids))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
