"""Landmark classification and tagging: data, models, training, export and prediction.

Modules, from the bottom of the import graph up:

- photos and files: ``images`` (robust photo reading), ``files`` (safe writes, the cache folder), ``location``
  (finding and downloading the dataset, negatives folders), ``places`` (landmark names and places), ``geotag``
  (EXIF GPS copies), ``heif_reader`` (a HEIF or AVIF file's boxes and items read; HEIC photos for Pillow, the
  files that crash its decoder refused), ``heif_exif`` (their EXIF replaced or added), ``defaults`` (shared
  settings), ``progress`` (progress bars that open a loader once), ``allocator`` (a CPU process's C allocator, told
  to keep freed memory), ``helpers`` (device, seeds, the run's environment);
- preprocessing and data: ``preprocessing`` (the config of one run, the one resize-and-crop), ``data_config``
  (resolving it from the photos), ``statistics`` (channel mean/std), ``presets`` (transforms), ``decoding``
  (photo folders decoded in parallel), ``cache`` (decode once), ``data`` (loaders), ``distributed``;
- models and training: ``model`` (scratch CNN), ``transfer`` (pretrained backbones), ``factory``
  (``create_model``), ``imagenet_features`` (plain ImageNet features), ``recipes``, ``optimization`` (loss,
  optimizer), ``train`` (training loop), ``finetune`` (the transfer stages), ``checkpoint`` (saving/loading);
- the exported model: ``export`` (the TorchScript format and its one reader), ``model_files`` (an export and a
  checkpoint told apart unloaded, torch's loading errors said briefly), ``onnx_runtime`` and ``onnx_export``
  (an export as an ONNX file: running it, making it), ``openset`` (unknown detection),
  ``memory`` (the feature memory an export keeps), ``shared_trunk`` (one pass through a transfer model's ImageNet
  first stages for its own and plain ImageNet features), ``answer`` (one photo's answer, shared with the app),
  ``predictor`` (answers for photos on disk), ``new_landmarks``, ``added_fit`` and ``embedded_base`` (adding landmarks);
- runs and commands: ``finish`` (export, test and record a run), ``run`` (one training run), ``evaluation``
  (accuracy figures), ``analysis`` (the notebooks' figures), ``tagging``, ``tag_output`` and ``ray_tagging``
  (batch tagging), ``batching``, ``service`` and ``ray_serving`` (the HTTP
  service, in this process or on Ray Serve), ``commands`` and ``photo_commands`` (what each command
  does: training side, and on an export), ``cli`` (command line).
"""

__version__ = "0.1.0"
