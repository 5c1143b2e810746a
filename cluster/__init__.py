"""Distributed mode (Ray Train + DDP) and the deployment files of the DCGAN service."""
