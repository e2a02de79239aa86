"""Diabetes progression regression (scikit-learn load_diabetes), served through TF Serving Regress."""
