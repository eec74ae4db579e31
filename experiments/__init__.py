"""Work that combines algorithms: offline dataset generation and the random-walk TD(lambda) study.

The layer above `rlzoo.algorithms` and below `rlzoo.benchmarks`: it may import the algorithms,
`rlzoo.envs` and the core, and no layer below it imports it.
"""
