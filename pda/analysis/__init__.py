"""Turn run records into the tables, recommendations, claim checks, figure data and report of a study.

One module per job: ``frame`` (records -> one row per run, aggregates), ``tables`` (formatted for
readers), ``recommendations``, ``claims``, ``collapse`` (runs at the majority class), ``carbon``, ``timing`` (where a study's time went), ``structure`` (what pruning kept), ``figures``
(the numbers each figure draws) and ``report`` (markdown). Nothing here draws: ``pda.plots`` draws
what ``figure_data`` computed.
"""

from pda.analysis.carbon import carbon_statement, energy_is_estimated
from pda.analysis.collapse import collapse_table, collapsed_recipes
from pda.analysis.claims import ADAPTER_PAIRS, NOT_TESTED, claims, verdict_kind
from pda.analysis.figures import FigureData, figure_data, pareto_front
from pda.analysis.frame import (
    GROUP_KEYS, RECIPE_KEYS, SCENARIO_ORDER, TASK_GROUPS, aggregate, batch_sizes, recipe_label, recipe_sort_key,
    records_frame, task_sort_key,
)
from pda.analysis.quantized import quantized_rows, with_quantized
from pda.analysis.recommendations import Priority, priorities, recommendations
from pda.analysis.report import write_report
from pda.analysis.structure import SURVIVAL_COLUMNS, structure_summary, survival_matrix
from pda.analysis.tables import (
    NOT_APPLICABLE, NOT_MEASURED, accuracy_table, efficiency_table, markdown_table, mean_std, recommendation_table,
    runs_table,
)
from pda.analysis.values import is_missing

__all__ = [
    "ADAPTER_PAIRS", "GROUP_KEYS", "NOT_APPLICABLE", "NOT_MEASURED", "NOT_TESTED", "RECIPE_KEYS", "SCENARIO_ORDER",
    "SURVIVAL_COLUMNS", "TASK_GROUPS", "FigureData", "Priority", "accuracy_table", "aggregate", "batch_sizes",
    "carbon_statement", "claims", "collapse_table", "collapsed_recipes", "efficiency_table", "energy_is_estimated", "figure_data", "is_missing",
    "markdown_table", "mean_std", "pareto_front", "priorities", "recipe_label", "recipe_sort_key",
    "recommendation_table", "recommendations", "records_frame", "runs_table", "structure_summary",
    "survival_matrix", "task_sort_key", "verdict_kind", "with_quantized", "quantized_rows", "write_report",
]
