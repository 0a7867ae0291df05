"""Images as a viewer shows them: DICOM and Pillow decoding, rendering, metadata and the pixel pipeline.

Inside core: may import core.errors and core.memory; never core.model, core.maps or any other package of ours.
"""
