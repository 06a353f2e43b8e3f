"""The backend-neutral engine, written once: site paths, positions, interventions and their ops,
plans, recording, hooks, continuous batching and the model class that holds a backend
(:mod:`mlx_steer.engine.protocols` is what a backend implements)."""
