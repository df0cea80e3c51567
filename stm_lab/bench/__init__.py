"""Benchmarks: figures that are measured, not tested (``stm-lab bench``, or ``python -m stm_lab.bench``).

Every protocol times its contenders with the one interleaved timer of :mod:`stm_lab.bench.timing` and records the
same provenance with its results. The protocols, one module each (:data:`stm_lab.parsers.BENCHMARKS` lists them):

- :mod:`~stm_lab.bench.dcnv3`: DCNv3 core and U-InternImage training, compiled CPU kernel vs pure PyTorch;
- :mod:`~stm_lab.bench.train_speed`: training/inference images/s of the micro models and timm's Swin;
- :mod:`~stm_lab.bench.train_profile`: where a training step goes (parts, top operators);
- :mod:`~stm_lab.bench.table8`: inference throughput with the protocol of the paper's Table VIII;
- :mod:`~stm_lab.bench.analyses`: time of the ERF and FGSM analyses against their targets;
- :mod:`~stm_lab.bench.cpu_profile`: training images/s of the trainer's whole pipeline at a profile's settings.

:mod:`~stm_lab.bench.steps` holds the models and step functions the throughput protocols share.
"""
