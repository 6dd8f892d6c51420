"""btp-ray: Beam search → Testing → P2Value-Prioritized replay → fine-tuning, on Ray.

Importing the package has no side effects: no logging configuration, no ``ray.init``.
"""

__version__ = "0.1.0"
