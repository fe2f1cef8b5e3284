"""Training: typed config (config), losses, checkpoints, the training loop (loop) and the export of a
run as a model file (export). Imports only the layers below it; never argparse.
"""
