"""Weights that trtopt trains itself and ships in its wheel (package data, loaded by `trtopt.models.zoo`).

``digits_cnn.pt``  state dict of `trtopt.models.nets.DigitsCNN` trained on the scikit-learn digits train split
                   by ``benchmarks/train_digits_cnn.py`` (recipe and accuracy in
                   ``benchmarks/results/digits_cnn_training.json``).
"""
