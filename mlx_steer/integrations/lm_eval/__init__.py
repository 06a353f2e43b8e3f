"""lm-eval-harness adapter: a steered mlx_steer model as an lm-eval ``LM``, registered as ``mlx_steer``.

Importing this package imports lm_eval (``pip install "mlx-steer-lab[lmeval]"``) and registers the model;
the rest of mlx_steer never imports it. lm-eval's own CLI only knows the models of its package, so run
it through ``python -m mlx_steer.integrations.lm_eval ...`` (the same arguments as ``lm-eval``).
"""

from .steered_lm import SteeredLM

__all__ = ["SteeredLM"]
