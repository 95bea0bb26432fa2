"""``comparison.json``, field by field: the typed records of the comparison dict.

:func:`organseg.study.aggregate.collect` builds the dict (with :mod:`~organseg.study.conditions`,
:mod:`~organseg.study.paired`, :mod:`~organseg.study.cost` and :mod:`~organseg.study.efficiency`) and
:func:`organseg.study.outputs.write_comparison` writes it, with ``comparison.md`` and ``comparison.csv`` from
the same dict. Several modules build its parts, so its records live here, below all of them. At run time they
are plain dicts, written in the order they are built (the order of the fields below).

Conventions of every record: DSC is a fraction (the tables print it in %), HD95 and ASSD are in the
``hd95_unit`` of their protocol block, a value that was not measured is None (``null``), and ``sweep`` is
``{swept key: value}`` over ``comparison["sweep_keys"]``. The cost records (``cost``) are
:func:`organseg.study.cost.group_cost`'s.
"""

from __future__ import annotations

from typing import Any, TypedDict


class DatasetRecord(TypedDict):
    """``dataset``: what the runs were tested on."""

    kind: str | None  #: ``"synapse"`` or ``"acdc"`` when the class names are that dataset's (published rows)
    class_names: list[str]  #: background first
    columns: list[str]  #: the organ column titles, in the papers' order for Synapse and ACDC
    synthetic: bool  #: any run's data folder is marked SYNTHETIC (organseg's phantom)
    data: list[str]  #: the runs' data folders, sorted, each once


class ColumnValues(TypedDict):
    """One organ column of one run."""

    dice: float | None
    hd95: float | None


class RunReference(TypedDict):
    """A run's values under the reference protocol: its ``summary.json`` block's means, and its organs."""

    mean_dice: float | None
    mean_hd95: float | None
    hd95_unit: str | None
    columns: dict[str, ColumnValues]  #: by column title


class RunCorrected(RunReference):
    """A run's values under the corrected protocol: the reference fields plus its surface metrics."""

    mean_nsd: float | None
    mean_assd: float | None
    nsd_tolerance: list[float] | None  #: per foreground class, in the HD95 unit


class RunRecord(TypedDict):
    """``runs[k]``: one tested run (for a cross-validation, each fold run itself)."""

    name: str  #: the run folder's name
    run_dir: str
    model: str
    seed: int
    sweep: dict[str, Any]
    iterations: int | None  #: from the training summary; None while it has none
    train_seconds: float | None
    stopped: str | None  #: ``"completed"`` or ``"time_budget"``
    results_dir: str  #: the results folder collected
    cases: int | None  #: volumes tested
    reference: RunReference
    corrected: RunCorrected


class SkippedRun(TypedDict):
    """``skipped[k]``: a run folder that is not in the tables (runs that diverged in this study first, then
    untested ones)."""

    run_dir: str
    reason: str  #: ``diverged: ...``, or what is missing and the command that tests the run


class Stat(TypedDict):
    """Mean and sample standard deviation (ddof 1) over the defined values (seeds, or folds)."""

    mean: float | None  #: None when no value is defined
    std: float | None  #: None for fewer than two values
    n: int  #: the number of defined values


class ColumnStats(TypedDict):
    """One organ column of a group, over its seeds."""

    dice: Stat
    hd95: Stat


class GroupReference(TypedDict):
    """A group's block under the reference protocol (fields of ``PROTOCOL_FIELDS``): the means over seeds,
    and the unit taken from its first run."""

    mean_dice: Stat
    mean_hd95: Stat
    hd95_unit: str | None
    columns: dict[str, ColumnStats]  #: by column title


class GroupCorrected(GroupReference):
    """A group's block under the corrected protocol: the reference fields plus the surface metrics, and the
    NSD tolerance of its first run."""

    mean_nsd: Stat
    mean_assd: Stat
    nsd_tolerance: list[float] | None


class GroupRecord(TypedDict):
    """``groups[k]``: the runs of one network at the same swept values (one per seed), in model order, then
    the order the values first appear."""

    model: str
    sweep: dict[str, Any]
    label: str  #: ``unet`` or ``unet, base_lr=0.05``: the row name of the tables
    n: int  #: seeds
    seeds: list[int]  #: sorted
    runs: list[str]  #: run names, by seed (a cross-validation's: the pooled result's name)
    reference: GroupReference
    corrected: GroupCorrected


class Change(TypedDict):
    """A network against the baseline under one protocol, from the groups' means over seeds."""

    hd95_change: float | None  #: ``(HD95 - HD95_baseline) / HD95_baseline``; None without both or at 0
    dice_points: float | None  #: ``100 (DSC - DSC_baseline)``


class RelativeRecord(TypedDict):
    """``relative[k]``: a network's group against the baseline's group at the same swept values."""

    model: str
    baseline: str
    sweep: dict[str, Any]
    reference: Change
    corrected: Change


class PairedRecord(TypedDict):
    """``paired[k]``: network B (``model_b``) against network A (``model_a``: the baseline, or with
    ``--pairs all`` the earlier of the two in ``models``) at the same swept values, for one protocol, metric
    and organ (or ``"mean"``: the per-volume mean over the organs every run of both has). The statistics are
    defined in :mod:`organseg.study.paired`."""

    protocol: str  #: ``"reference"`` or ``"corrected"``
    metric: str  #: ``"dice"`` or ``"hd95"``
    organ: str  #: a column title, or ``"mean"``
    model_a: str
    model_b: str
    sweep: dict[str, Any]
    seeds_a: int
    seeds_b: int
    resampled: str  #: what the bootstrap draws: ``"subjects"`` (or ``"volumes"``), ``"... and seeds"``
    unit: str  #: ``"fraction"`` for DSC, else the HD95 unit
    a: float | None  #: A's mean over the paired subjects
    b: float | None
    diff: float | None  #: ``b - a``
    ci_low: float | None  #: 95 % percentile bootstrap interval of ``diff``
    ci_high: float | None
    p: float | None  #: two-sided Wilcoxon signed-rank p
    wins: int  #: subjects where B is better (higher DSC, lower HD95)
    losses: int
    n: int  #: paired subjects
    n_subjects: int
    n_volumes: int  #: the volumes they hold
    unit_of_analysis: str  #: ``"subject"``, or ``"volume"`` for results that predate subjects
    #: Holm-adjusted over its family: the organs x the comparisons of one (swept values, protocol, metric);
    #: the mean rows: over the comparisons (with two networks: ``p``)
    p_holm: float | None
    significant: bool  #: ``p_holm < alpha``
    comparisons: int  #: the comparisons (network pairs) of its Holm family
    family_size: int  #: the p-values adjusted together (records without a p not counted)


class _PairedMethod(TypedDict):
    resamples: int
    seed: int
    alpha: float
    ci: str
    test: str
    correction: str
    difference: str
    baseline: str  #: the network every other one is compared with
    pairs: str  #: ``"baseline"`` (each network against it) or ``"all"`` (every pair)


class PairedSettings(_PairedMethod, total=False):
    """``paired_settings``: the method (``resamples``, ``seed``, ``alpha`` and the sentences ``ci``,
    ``test``, ``correction``, ``difference``), which comparisons (``baseline``, ``pairs``) and, once a
    pair was tested, what it paired over: ``cases`` (volumes), ``subjects`` and ``unit_of_analysis``."""

    cases: int
    subjects: int
    unit_of_analysis: str


class RankEntry(TypedDict):
    """One network of a ranking (:mod:`organseg.study.ranking`)."""

    model: str
    mean: float | None  #: its mean DSC over the ranked subjects (a fraction)
    rank: int  #: on the full data, 1 the best; equal means share the better rank
    rank_counts: list[int]  #: ``[k]``: the bootstrap resamples where it ranked ``k + 1``
    rank_frequency: list[float]  #: ``rank_counts`` as fractions of the resamples
    mean_rank: float | None  #: its mean rank over the resamples


class KendallSummary(TypedDict):
    """Kendall's tau-b between the bootstrap rankings and the full-data ranking."""

    median: float | None
    mean: float | None
    q25: float | None
    q75: float | None
    n: int  #: resamples where tau is defined (not every network tied)


class RankingRecord(TypedDict):
    """``ranking[k]``: the networks ranked at one set of swept values under one protocol, and how stable the
    ranking is under a bootstrap of the subjects (:mod:`organseg.study.ranking` defines it)."""

    protocol: str
    metric: str  #: ``"dice"``: what ranks (higher first)
    sweep: dict[str, Any]
    statistic: str  #: in words
    ties: str  #: ``"min"``: equal means share the better rank (1, 1, 3)
    n_subjects: int  #: subjects ranked over (every network has a value)
    n_volumes: int
    unit_of_analysis: str  #: ``"subject"``, or ``"volume"`` for results that predate subjects
    resamples: int
    seed: int
    networks: list[RankEntry]  #: in the order of ``models``
    kendall_tau: KendallSummary


class PublishedRecord(TypedDict):
    """``published``: the paper's rows for this dataset (None for another dataset)."""

    source: str  #: which paper and table
    rows: dict[str, dict[str, float | None]]  #: by method: DSC (%), HD95 and each organ column
    model_row: dict[str, str]  #: which published row each of our networks is compared with
    relative_hd95: dict[str, float]  #: per network, its published row's HD95 change against the baseline's


class FoldMeans(TypedDict):
    mean_dice: float | None
    mean_hd95: float | None


class FoldRow(TypedDict):
    """``folds[k]`` (cross-validation): one fold run's own means on its held-out subjects, in model order."""

    model: str
    seed: int
    sweep: dict[str, Any]
    fold: int
    run: str  #: the fold run's name
    subjects: int | None
    volumes: int | None
    reference: FoldMeans
    corrected: FoldMeans


class FoldSpread(TypedDict):
    """How one pooled group's mean DSC (reference protocol) spreads over its folds."""

    model: str
    seed: int
    sweep: dict[str, Any]
    mean_dice_across_folds: Stat  #: over the folds
    min: float | None
    max: float | None


class CrossValidationRecord(TypedDict):
    """``cross_validation`` (cross-validation studies only)."""

    folds: int  #: k
    fold_seed: int | None  #: ``data.fold_seed`` of the runs
    subjects: int | None  #: subjects pooled (each held out once)
    volumes: int | None
    splits_file: str | None  #: ``OUT/splits.json`` when it exists
    spread: list[FoldSpread]


class ModelConditions(TypedDict):
    """How one network's runs were trained (means over its runs; each fold run counts)."""

    runs: int
    train_minutes: float | None
    iterations: float | None
    epochs: float | None
    images_seen: float | None  #: iterations x ``train.batch_size``
    time_budget_min: list[float]  #: the distinct budgets set
    init: list[str]  #: ``"scratch"`` or the pretrained weights named
    train_fraction: list[float]
    device: list[str]
    threads: list[int]
    precision: list[str]
    still_improving: list[str]  #: the runs still improving at their end (``conditions.still_improving``)
    improving_by: list[str]  #: the records that told: ``validation DSC``, ``training loss``, ``no record``


class ConditionsRecord(TypedDict):
    """``conditions``: under which conditions the verdict holds (:mod:`organseg.study.conditions`)."""

    split: str
    checkpoint: str
    selection: str  #: what chose the checkpoint, in words
    folds: list[int] | None  #: the fold counts of a cross-validation, else None
    models: dict[str, ModelConditions]


class EfficiencySettings(TypedDict):
    resamples: int
    seed: int
    ci: str
    images: str  #: how images seen are counted


class FractionPoint(TypedDict):
    """One (group, protocol) of a study sweeping ``data.train_fraction``: its mean DSC over organs with a
    95 % bootstrap interval over cases (and seeds) (:func:`organseg.study.efficiency.fraction_curves`)."""

    model: str
    line: str  #: the legend entry: the network and the other swept values
    sweep: dict[str, Any]
    fraction: float
    protocol: str
    seeds: int
    mean: float | None
    ci_low: float | None  #: None for results without ``per_case.json``
    ci_high: float | None
    cases: int


class LearningPoint(TypedDict):
    """One validation of a run (:func:`organseg.study.efficiency.learning_curve`)."""

    iter: int
    images: int | None  #: iterations x ``train.batch_size``
    seconds: float | None  #: the training wall clock at that iteration
    dice: float  #: validation mean DSC


class LearningCurve(TypedDict):
    name: str
    model: str
    seed: int
    sweep: dict[str, Any]
    line: str
    points: list[LearningPoint]


class EfficiencyRecord(TypedDict):
    """``efficiency``: the numbers behind the data-efficiency figures (:mod:`organseg.study.efficiency`)."""

    settings: EfficiencySettings
    fraction: list[FractionPoint]  #: empty unless ``data.train_fraction`` is swept
    learning: list[LearningCurve]


class _ComparisonCore(TypedDict):
    organseg: str  #: the version that wrote the file
    created: str  #: local time, ``%Y-%m-%dT%H:%M:%S%z``
    split: str  #: ``test``, or ``val`` (each fold's held-out subjects) for a cross-validation
    checkpoint: str  #: ``best``, ``last`` or ``epoch_N``
    dataset: DatasetRecord
    models: list[str]  #: the networks in table order (the U-Net first unless ``--models`` orders them)
    baseline: str  #: ``--baseline``; default ``unet`` when present, else the first network
    sweep_keys: list[str]
    runs: list[RunRecord]
    skipped: list[SkippedRun]
    groups: list[GroupRecord]
    relative: list[RelativeRecord]
    paired: list[PairedRecord]
    paired_settings: PairedSettings
    ranking: list[RankingRecord]  #: empty with one network
    cost: list[dict[str, Any]]  #: per group, :func:`organseg.study.cost.group_cost`
    published: PublishedRecord | None
    notes: list[str]  #: printed under the title of ``comparison.md``
    conditions: ConditionsRecord
    figures: dict[str, str]  #: {title: PNG file name beside the comparison}
    efficiency: EfficiencyRecord


class Comparison(_ComparisonCore, total=False):
    """``comparison.json``. Keys in the order written: ``organseg`` to ``notes`` as above, then, for a
    cross-validation study only, ``folds`` and ``cross_validation``, then ``conditions``, ``figures`` and
    ``efficiency``."""

    folds: list[FoldRow]
    cross_validation: CrossValidationRecord
