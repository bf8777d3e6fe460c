"""Evaluation of face recognition models: protocols, reports, data checks, commands.

embed.py embeds aligned crops (flip-fused, L2-normalised) for every protocol; protocols/ holds the
protocols (pair sets 10-fold, LFW pairs.txt, IJB, 1:N search, quality) and their registry
PROTOCOLS; reports/ the tables, plots, index.html and report folders; checks/ the data checks
(preprocessing metadata, identity overlap); run.py the commands end to end.
"""
