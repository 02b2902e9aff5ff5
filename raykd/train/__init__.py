"""The Ray Train side of a run: the worker loop (``loop``), its training step (``optim_wrapper``,
``divergence``, ``checkpoint``, ``hooks``), launching runs (``launch``), the cluster (``cluster``) and
teachers (``teachers``)."""
