"""``organseg compare``: U-Net vs Swin-Unet (or any networks) over seeds and swept settings, as a package.

A study is a grid: every model x seed x value of every swept ``--set key=v1,v2``. Each grid point is an
ordinary run folder (:class:`organseg.run.RunDir`) under ``OUT/runs/`` with a stable name
(``swin_unet__seed1234__base_lr0.05``), trained with :func:`organseg.training.train` and tested with
:func:`organseg.evaluation.tester.run_test` (both metric protocols). Runs trained anywhere (``organseg train
... --out OUT/runs/NAME`` then ``organseg test OUT/runs/NAME --checkpoint last``) are aggregated with
``compare --collect``.

Modules, in the order a study uses them:

- :mod:`~organseg.study.grid`: ``--set``/``--seeds`` parsing, run names, the planned runs and their configs;
- :mod:`~organseg.study.runner`: training and testing the grid here or in child processes, reuse and resume;
- :mod:`~organseg.study.runs`: the tested run folders as the aggregation reads them (``RunResult``);
- :mod:`~organseg.study.crossval`: a cross-validation's fold runs pooled into one result per seed;
- :mod:`~organseg.study.aggregate`: run folders -> the comparison dict (groups over seeds, HD95 change,
  the conditions of :mod:`~organseg.study.conditions`, paired statistics of :mod:`~organseg.study.paired`,
  the ranking of :mod:`~organseg.study.ranking` and cost of :mod:`~organseg.study.cost`);
- :mod:`~organseg.study.outputs`: ``comparison.md/.json/.csv`` and the console table (the paired tables and
  the verdict written by :mod:`~organseg.study.verdict`);
- :mod:`~organseg.study.figures`: ``comparison_organs.png``, ``comparison_sweep_<key>.png``,
  ``comparison_ranks.png``;
- :mod:`~organseg.study.demo`: ``organseg demo``, a whole study on a SYNTHETIC phantom (:func:`run_demo`).
"""

from organseg.study.aggregate import collect, infer_sweep_keys
from organseg.study.demo import run_demo
from organseg.study.grid import PlannedRun, Sweep, parse_seeds, parse_sets, plan_runs, run_name, split_values
from organseg.study.outputs import comparison_markdown, console_table, write_comparison
from organseg.study.runner import run_state, run_study
from organseg.study.runs import find_runs

__all__ = [
    "PlannedRun",
    "Sweep",
    "collect",
    "comparison_markdown",
    "console_table",
    "find_runs",
    "infer_sweep_keys",
    "parse_seeds",
    "parse_sets",
    "plan_runs",
    "run_demo",
    "run_name",
    "run_state",
    "run_study",
    "split_values",
    "write_comparison",
]
