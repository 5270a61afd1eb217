"""Landmark classification and tagging: data, models, training, export and prediction.

Modules: ``helpers`` (environment, data location, statistics, plots), ``images`` (robust photo
reading), ``presets`` (transforms), ``data`` (loaders), ``model`` (scratch CNN), ``transfer``
(pretrained backbones), ``factory`` (``create_model``), ``optimization`` (loss, optimizer),
``train`` (training loop), ``checkpoint`` (saving/loading), ``predictor`` (TorchScript export
and prediction), ``evaluation`` (accuracy figures), ``cli`` (command line).
"""

__version__ = "0.1.0"
