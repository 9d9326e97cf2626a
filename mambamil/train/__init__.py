"""Training and evaluation of MIL aggregators: cohort assembly, patient-level splits, the training loop,
metrics and prediction. The ``mambamil train``/``evaluate``/``predict`` verbs call into these modules."""
