"""Pictures and pages: what people would rather look at than numbers.

``palette``  one colour per class for every figure, viewer page and DICOM-SEG segment
``tables``   the papers' per-organ tables with organseg's row beside the published ones
``report``   ``organseg report``: training curves, per-organ bars, overlays, ``report.md``
``viewer``   the self-contained HTML viewer of one case's slices and predictions
"""
