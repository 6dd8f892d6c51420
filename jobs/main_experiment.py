#!/usr/bin/env python
"""The main runner (the original suite's main_experiment.py): the suite's steps into one directory with one report.

python jobs/main_experiment.py --experiment all --mode quick
python jobs/main_experiment.py --experiment big_to_small --source-model deepseek-chat --target-model smollm2-135m
"""

import sys

from btp_ray.experiments.cli import main_experiment_main

if __name__ == "__main__":
    sys.exit(main_experiment_main())
