"""Multi-process training: torchrun launch, DDP for the backbone, class-sharded classifier.

ops:        collectives with gradients (all-reduce, row gather) and the replicated-loss convention.
loss:       the sharded head forward: gathered batch, sharded cross-entropy, global accuracy.
partial_fc: Partial FC column sampling and rank-independent centre initialisation.
env:        process-group setup from torchrun's environment (gloo on CPU, nccl on CUDA).
checkpoint: gather the full classifier (and its optimizer rows) for saving; slice it back on load.
batchnorm:  GlobalBatchNorm, BatchNorm over the global batch on CPU/gloo (torch's SyncBatchNorm is
            GPU-only).
evaluate:   in-training verification with the embedding split over ranks.
spawn:      run a function in N local gloo processes (tests, benchmarks).
This package imports nothing of facelab.heads at import time (the classifier imports it).
"""
