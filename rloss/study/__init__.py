"""The study layer: this paper's experiments on top of the library and the run layer.

    loss_demo.py      notebook 00's demonstration of the loss: its inputs and maps, the lattice against the
                      exact Gaussian, a descent
    data_prep.py      notebook 01's steps: the data set made once, its scribbles measured
    grid.py           training grids (loss x seed), reading finished runs back, the summary over seeds
    training_notebook.py  notebooks 02 and 03's one call: their parameters to a grid, trained and shown
    interpolation.py  the bicubic-vs-bilinear study of notebook 04
    report.py         the mIoU table, its conclusions and figures (notebook 05)
    plots.py          small figure helpers for the notebooks
    parameters.py     the notebooks' parameter checks: one line naming the parameter and its value
    browser.py        the result browser (ipywidgets) of notebook 05
    runner.py         runs the notebooks in order with papermill (``python -m rloss study``)

Nothing in the library (losses, filtering, models, data, metrics) or the run layer (config,
train, infer, runs, ...) imports this package (tests/test_layers.py); it needs the ``study``
extra (matplotlib, ipywidgets, papermill).
"""
