"""The classifier's classes, the size of its feature space, and the fewest samples FID can use
over it.

Plain numbers without torch: the classifier (``dcgan.classifier``) and FID
(``dcgan.quality``) are built on them, and the config's checks (``dcgan.config``), which must
import no torch, bound ``eval_samples`` and ``rescore_samples`` with them.
"""

CLASSES = 10  # MNIST's digits: the classifier's outputs, what class coverage counts
FEATURE_DIM = 128  # the classifier's penultimate layer: the space FID's statistics are over
MIN_SAMPLES = FEATURE_DIM + 1  # a full-rank covariance of the features needs more samples
