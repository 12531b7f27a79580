"""Export of models to one self-describing TorchScript file, and loading of such files."""
