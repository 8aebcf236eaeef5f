"""The torch floor: an ``Arch`` becomes an ``nn.Module`` and is trained or timed.

The SE block and its fused eval path (``se``, ``fused``), the builder (``build``), data sets
(``data``), the training loop (``train``), the weight-sharing supernet (``supernet``), a design's
score as one of its paths (``pathscore``) and the latency profiler (``profile``).

May import: ``se_nas.design`` and third-party libraries.
"""
