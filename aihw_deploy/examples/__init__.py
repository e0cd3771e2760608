"""Built-in examples (scikit-learn's digits data set, shipped with scikit-learn)."""
