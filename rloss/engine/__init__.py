"""The run layer: a config, a run folder, training, inference and the weight sweep, on the library below.

Nothing here imports the study (rloss.study) or the developer tools (tools/).
"""
