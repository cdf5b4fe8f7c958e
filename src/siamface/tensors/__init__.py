"""Face crops -> model input tensors: the preprocessing contract, augmentation, domain
conditions, and the batches and datasets training reads.

Sits above ``faces`` (aligned crops) and below ``model`` and ``embed``.
"""
