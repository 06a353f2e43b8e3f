"""Steering vectors as values (:class:`~mlx_steer.vectors.steering_vector.SteeringVector`), their
files (safetensors, GGUF control vectors) and the math that compares them (numpy only)."""
