"""Training of MIL aggregators: patient-level splits, the training loop and its loss (statistics live in
:mod:`mambamil.evaluation`). The ``mambamil train``/``train-final``/``splits`` verbs call into these modules."""
