#!/usr/bin/env python
"""Step 4, the hyperparameter study on Ray Tune (the original suite's step4_hyperparameter_study.py): one Tune trial per
configuration over alpha, beta, sampling method, num_beams, lr, LoRA r/alpha and batch size; ASHA early stopping.

    python jobs/hyperparam.py --search_type focused --max_configs 15 --output_dir DIR
"""

import sys

from btp_ray.experiments.cli import hyperparam_main

if __name__ == "__main__":
    sys.exit(hyperparam_main())
