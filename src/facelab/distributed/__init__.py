"""Multi-process training: torchrun launch, DDP for the backbone, class-sharded classifier.

ops:        collectives with gradients (all-reduce, row gather) and the replicated-loss convention.
env:        process-group setup from torchrun's environment (gloo on CPU, nccl on CUDA).
checkpoint: gather the full classifier (and its optimizer rows) for saving; slice it back on load.
batchnorm:  GlobalBatchNorm, BatchNorm over the global batch on CPU/gloo (torch's SyncBatchNorm is
            GPU-only).
spawn:      run a function in N local gloo processes (tests, benchmarks).
The sharded cross-entropy and Partial FC sit beside the classifier they serve (facelab.heads), which
imports this package; in-training verification over ranks is facelab.train.validate.
"""
