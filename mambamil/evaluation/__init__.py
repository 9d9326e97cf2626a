"""Study statistics, below training and inference: metric registry, point estimates (scikit-learn, lifelines,
scikit-survival), the vectorised patient bootstrap, survival curves, fold summaries, model comparison, plots.
The ``evaluate``/``compare``/``summary``/``report`` stages, external validation and ``predict --metrics-dir``
read these modules; training uses them for its validation metric and loss curves."""
