"""Medical volumes as files: reading and writing them, DICOM series, patient orientation.

``formats``      the file suffixes organseg reads beside DICOM; ITK's error text
``volumes``      ``read_image``, ``write_image`` (NIfTI with its transforms, what SimpleITK reads),
                 ``Geometry``
``dicom``        finding and checking DICOM series (DICOMDIR exports, several series, gantry tilt)
``orientation``  patient orientation codes, turning arrays between them, the radiological display
"""
