"""deployer: from a TensorFlow trainer to a smoke-tested TensorFlow Serving deployment."""

__version__ = "0.1.0"
