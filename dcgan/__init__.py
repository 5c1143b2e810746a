"""DCGAN training service: the seed's MNIST DCGAN as a library, a CLI and a trainer."""

__version__ = "0.1.0"
