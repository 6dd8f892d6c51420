"""The experiment suite behind the paper's tables and figures: the sample-and-filter baseline, the replay-strategy
ablation over one shared candidate pool, the Ray Tune hyperparameter study, the big-to-small run, and the main runner
that puts them (and the BTP run) into one directory with one report. The drivers in ``jobs/`` are thin wrappers.

Submodules import Ray, torch and matplotlib only when a study runs, so importing this package is cheap.
"""
