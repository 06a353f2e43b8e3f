"""Compatibility facades: other libraries' APIs on top of :class:`mlx_steer.SteerableModel`.

Code written for those libraries runs with only its import changed:

    from mlx_steer.compat.mlxterp import InterpretableModel, interventions as iv

Each facade is a thin adapter: it translates names, keys and call styles, and leaves recording,
steering and generation to the engine. Nothing is imported here, so importing the package costs
nothing until a facade is used.
"""
