"""What tests (and bench/) compare facelab against, and the synthetic fixtures they share.

Plain-loop float64 transcriptions of the equations and of other tools' code, and data writers.
Imported as `tests.references.<module>`: the repository root is on sys.path (pytest's `pythonpath`,
`python -m bench`).
"""
