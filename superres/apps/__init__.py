"""The command line and every command: each module is a thin `add_<cmd>_arguments` / `run_<cmd>` pair
over the library (or, for the file job, video, cluster and serve, the application itself). The only
layer that imports argparse.
"""
