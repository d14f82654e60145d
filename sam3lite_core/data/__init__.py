"""Datasets: staging and validation (`scan`), content signature (`signature`), cached COCO conversion (`convert`),
the synthetic dataset (`synth`), and the data path that training and evaluation read (`dataset`, `sampler`,
`collator`). Scanning, signing and converting import no torch, so the CLI and the Dagster sensors stay quick.
"""
