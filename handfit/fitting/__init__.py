"""Per-image fitting: initialisation, the keypoint stage and the dense stage."""
