"""Work that combines algorithms: offline dataset generation and the random-walk TD(lambda) study.

The top layer beside `benchmarks/`: it may import `rlzoo.algorithms`, `rlzoo.envs` and the core,
and nothing below it imports it.
"""
