#!/usr/bin/env python
"""Step 1, the sample-and-filter baseline (the original suite's step1_baseline_experiment.py): n samples per problem,
sandboxed tests, unbiased pass@1/5/10, mean pass rate, sample-filter accuracy and cost.

    python jobs/baseline.py --model_name smollm2-135m --dataset humaneval --num_samples 10 \\
        --max_problems 50 --output_dir DIR
"""

import sys

from btp_ray.experiments.cli import baseline_main

if __name__ == "__main__":
    sys.exit(baseline_main())
