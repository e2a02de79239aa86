"""Handwritten digits CNN (scikit-learn load_digits, 8x8), served through TF Serving Predict."""
