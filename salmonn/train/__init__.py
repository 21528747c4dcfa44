"""Fine-tuning SALMONN: data, loss, schedule, optimizer, checkpoints, data parallelism, the loop.

``salmonn.TrainExample`` and ``salmonn.training_loss`` are the public names; ``salmonn train`` (the
CLI) drives :func:`salmonn.train.loop.train`. See docs/training.md.
"""
