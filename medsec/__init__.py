"""medsec: audit the security of medical-imaging AI.

Images are float tensors (N, C, H, W) in [0, 1]; every eps is in [0, 1] pixel units.
"""

__version__ = "0.1.0"
