"""ddray: domain-decomposition CNN-DNN training of image classifiers on Ray.

The pure-PyTorch core (config, decomposition, data, models, training,
aggregation, report) imports no Ray; only ``ddray.orchestration`` does.
"""

__version__ = "0.1.0"
