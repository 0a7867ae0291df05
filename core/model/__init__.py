"""The model: the SigLIP/CLIP encoder, what a checkpoint is, its image processor's steps and the device.

Inside core: may import core.errors and core.imaging (pixels in); never core.maps, core.sources or core.reports.
"""
