"""The model factory around the SDK: noise calibration, synthetic pairs, training, evaluation.

Run as modules: ``python -m tools.noise_profile``, ``python -m tools.train``, ``python -m tools.evaluate``.
"""
