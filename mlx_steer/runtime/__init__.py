"""What the process runs on: MLX's BLAS on Linux (:mod:`.blas`) and ``mlx-steer doctor`` (:mod:`.doctor`).

Import-free of MLX, so ``import mlx_steer`` can prepare MLX's BLAS before MLX is loaded.
"""
