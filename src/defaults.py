"""The settings several parts of the project share, each defined once here (the command line, the notebooks,
the data loaders and adding landmarks read them from this module)."""

SEED = 42  # seeds the train/validation split, the initial weights and the augmentation
VALID_SIZE = 0.2  # share of train/ held out as the validation split (model choice, calibration)
BATCH_SIZE = 50  # photos an exported model classifies at once when predicting, evaluating and tagging
OUTLIER_WEIGHT = 0.5  # weight of outlier exposure on photos of no known landmark, in training and adding landmarks
