"""A TensorFlow Serving compatible model server (``deployer-model-server``).

It reproduces ``tensorflow_model_server``'s flags, config semantics, gRPC and REST surfaces closely
enough that deployer (and its users) cannot tell the difference on the paths they touch. Where it
differs, README.md in this package says so.
"""
