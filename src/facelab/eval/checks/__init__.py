"""Data checks around an evaluation: does the data match the model's preprocessing (metadata.py),
and which identities do two training sets share (overlap.py)."""
