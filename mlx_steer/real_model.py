"""Moved to :mod:`mlx_steer.demo.real_model` (the demo's model preparation is not part of the core
package); ``mlx_steer.real_model`` stays importable as that same module object, so imports and
monkeypatches of its names keep working."""

import sys

from .demo import real_model

sys.modules[__name__] = real_model
