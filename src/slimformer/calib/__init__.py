"""Running calibration data through a model one decoder block at a time."""
