#!/usr/bin/env python
"""Step 3, the replay-strategy ablation (the original suite's step3_ablation_study.py): one candidate pool sampled and
tested once, the same training budget per arm (P2Value power/rank, pass rate only, possibility only, uniform, no
replay), >= 3 seeds, mean ± 95% CI per metric.

    python jobs/ablation.py --model_name smollm2-135m --num_problems 30 --seeds 0 1 2 --output_dir DIR
"""

import sys

from btp_ray.experiments.cli import ablation_main

if __name__ == "__main__":
    sys.exit(ablation_main())
