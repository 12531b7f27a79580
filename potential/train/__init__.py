"""Training and evaluation, one idea per module, in the order data flows through a run:

- ``config``         the YAML training config: keys, defaults, overrides, checks
- ``frames``         :class:`Frame` and the readers (extxyz / ASE formats / EFA npz), back to ASE
- ``splits``         train/valid/test splits: random, index files, held-out trajectory ends
- ``neighbor_lists`` neighbour lists of frames, computed once
- ``batch``          frames joined into one disjoint graph (:class:`Batch`), the epoch loader
- ``model_init``     the model a run starts from: new, fine-tuned (``init_from``) or resumed
- ``normalization``  per-element energy shifts and the energy scale, written into the weights
- ``loss``           predictions of a batch, the loss, error statistics
- ``optim``          optimizer, learning-rate schedule, EMA of the weights
- ``time_budget``    ``training.time_budget_s`` on the wall or CPU clock
- ``rng``            seeding and RNG state for ``--resume``
- ``metrics_csv``    ``metrics.csv``, one row per validation
- ``trainer``        the loop (:class:`Trainer`) and ``so3krates train`` (:func:`train_main`)
- ``evaluate``       errors of a model on frames; ``so3krates evaluate``
- ``report``         what a finished run writes: learning curve, test metrics, parity plots
- ``plots``          the PNG figures (matplotlib)
"""
