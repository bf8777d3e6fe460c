"""Datasets, loaders and the synthetic-faces generator."""
