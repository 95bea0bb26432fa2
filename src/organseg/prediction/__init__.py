"""The ``organseg predict`` verb: label maps for new scans in the input's own geometry.

``predict``   scans (NIfTI, DICOM series, folders of either) -> NIfTI label maps, sidecars, overlays
``dicomseg``  the DICOM-SEG writer for DICOM inputs
"""
