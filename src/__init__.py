"""Landmark classification and tagging: data, models, training, export and prediction.

Modules: ``helpers`` (the run's environment), ``location`` (finding and downloading the dataset),
``statistics`` (channel mean/std), ``files`` (safe writes, the cache folder), ``images`` (robust
photo reading), ``preprocessing`` (the sizes and normalisation of one run, the one
resize-and-crop), ``presets`` (transforms), ``decoding`` (photo folders decoded in parallel),
``cache`` (decode once), ``data`` (loaders), ``model`` (scratch CNN), ``transfer`` (pretrained
backbones), ``factory`` (``create_model``), ``recipes`` (the training recipes), ``optimization``
(loss, optimizer), ``train`` (training loop), ``finetune`` (the transfer stages), ``checkpoint``
(saving/loading), ``predictor`` (TorchScript export and prediction), ``finish`` (export, test and
record a run), ``evaluation`` (accuracy figures), ``analysis`` (the notebooks' figures),
``tagging`` (batch tagging), ``cli`` (command line).
"""

__version__ = "0.1.0"
