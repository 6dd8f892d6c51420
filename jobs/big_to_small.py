#!/usr/bin/env python
"""Big-to-small (the original suite's big_to_small_finetune_experiment.py): a big local or API source model samples, a
small local target is fine-tuned on the candidates, and the target is evaluated before and after (with RSR).

    python jobs/big_to_small.py --source-model deepseek-chat --target-model smollm2-135m --max-problems 100
"""

import sys

from btp_ray.experiments.cli import big_to_small_main

if __name__ == "__main__":
    sys.exit(big_to_small_main())
