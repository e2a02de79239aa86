"""The iris classifier: a Keras equivalent of TF's classic DNNClassifier example."""
