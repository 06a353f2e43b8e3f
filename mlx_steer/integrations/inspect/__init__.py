"""An Inspect AI model provider: ``inspect eval TASK --model mlx_steer/PATH -M vector=FILE -M scale=4``.

Registered through the ``inspect_ai`` entry point group (:mod:`.registration`), so Inspect finds it
once mlx-steer-lab is installed. Modules: :mod:`.options` (the ``-M`` model args), :mod:`.requests`
(an Inspect call -> the server's chat request), :mod:`.provider` (the ``ModelAPI`` over the server's
engine: concurrent samples share one continuous batch). Only this package imports ``inspect_ai``.
"""
